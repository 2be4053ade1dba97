"""Motion-aware noise controller and flow-matching timestep helpers."""

from __future__ import annotations

import pytest
import torch

from streamgen.models.video.flow import flow_renoise, flow_x0
from streamgen.pipeline.noise import (
    MotionNoiseController,
    MotionNoiseSettings,
    V2V_TIMESTEPS,
    base_timesteps,
    first_timestep,
    frame_motion,
    shifted_sigma,
    step_sigmas,
)


def _chunk(motion: float, frames: int = 4, seed: int = 0) -> torch.Tensor:
    """A chunk whose consecutive frames differ by about ``motion`` RMS (pixels in [-1, 1])."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, 1, 16, 16, generator=g) * 0.5
    steps = [base + motion * (i % 2) for i in range(frames)]
    return torch.cat(steps, dim=2)


def test_frame_motion_is_max_rms_difference():
    still = _chunk(0.0)
    assert frame_motion(still, None).item() == 0.0
    assert frame_motion(_chunk(0.1), None).item() == pytest.approx(0.1, abs=1e-6)
    # the previous chunk's last frame counts as the first frame's predecessor
    previous = still[:, :, -1:] + 0.3
    assert frame_motion(still, previous).item() == pytest.approx(0.3, abs=1e-6)


def test_more_motion_gives_less_noise():
    levels = []
    for motion in (0.0, 0.05, 0.1, 0.4):
        controller = MotionNoiseController(MotionNoiseSettings())
        for _ in range(5):
            level = controller.update(_chunk(motion))
        levels.append(level.item())
    assert levels[0] == pytest.approx(0.8)  # still input: s0
    assert levels == sorted(levels, reverse=True) and levels[0] > levels[-1]
    assert levels[-1] == pytest.approx(0.7, abs=1e-3)  # d̂ clipped at 1 → s0 − 0.1


def test_reference_update_rule():
    controller = MotionNoiseController(MotionNoiseSettings())
    level = controller.update(_chunk(0.1))  # d̂ = 0.5
    assert level.item() == pytest.approx(0.9 * (0.8 - 0.1 * 0.5) + 0.1 * 0.8, abs=1e-6)
    assert first_timestep(level).item() == pytest.approx(1000 * level.item() - 100, abs=1e-3)


def test_motion_unaware_keeps_s0():
    controller = MotionNoiseController(MotionNoiseSettings(motion_aware=False, noise_scale=0.6))
    assert controller.update(_chunk(0.5)).item() == pytest.approx(0.6)


def test_timesteps_follow_the_reference_at_the_default_level():
    for steps, expected in V2V_TIMESTEPS.items():
        assert base_timesteps(steps) == expected
        sigmas = step_sigmas(torch.tensor(expected, dtype=torch.float32), torch.tensor(0.8))
        torch.testing.assert_close(sigmas, torch.tensor([shifted_sigma(t) for t in expected]))
        assert torch.all(sigmas[1:] < sigmas[:-1])
    assert shifted_sigma(700.0) == pytest.approx(8 * 0.7 / (1 + 7 * 0.7))
    assert shifted_sigma(0.0) == 0.0 and shifted_sigma(1000.0) == pytest.approx(1.0)


def test_flow_step_round_trip():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 4, generator=g), torch.randn(2, 4, generator=g)
    sigma = torch.tensor(0.7)
    x_t = flow_renoise(x0, noise, sigma)
    torch.testing.assert_close(x_t, 0.3 * x0 + 0.7 * noise)
    # with the exact velocity v = ε − x0 the step recovers x0
    torch.testing.assert_close(flow_x0(x_t, noise - x0, sigma), x0)
