"""Motion-aware noise and the flow-matching timesteps of the causal video stream.

Motion-aware noise (StreamDiffusionV2)
--------------------------------------
A video-to-video stream adds noise to each input chunk and denoises it. Much
noise lets the prompt restyle freely but loses fast motion (the output
smears); little noise follows the input closely. The controller measures the
chunk's motion and lowers the noise when the input moves:

    d   = max over the chunk's frames of the RMS difference to the previous
          frame (pixels in [-1, 1])
    d̂   = clip(d / motion_scale, 0, 1)                 (motion_scale = 0.2)
    s_t = 0.9 · (s0 − 0.1 · d̂) + 0.1 · s_{t−1}         (s0 = noise_scale = 0.8)
    t0  = 1000 · s_t − 100

The input latent enters as ``noise · s_t + latent · (1 − s_t)`` and the first
denoising step runs at ``t0``. With the controller off ``s_t = s0``, so the
default ``s0 = 0.8`` gives ``t0 = 700``: the reference's first V2V timestep.

Later steps: the reference schedules (1 step [700], 2 [700, 500], ...) are
scaled by ``t0 / 700``, so they stay strictly decreasing for any ``s0`` and
are exactly the reference's at the default.

Everything here runs on device tensors (no ``.item()``): the controller's
state is a 0-d tensor, so a step never waits for the GPU.

Flow matching
-------------
Wan is trained with shift 8 on 1000 steps. A schedule entry ``t`` (0..1000)
is a point on the unshifted grid, ``u = t / 1000``; its noise level is the
shifted ``σ = 8u / (1 + 7u)`` and the model is given the timestep
``1000 · σ``. A step turns the flow prediction ``v`` into
``x0 = x_t − σ · v`` and re-noises it to the next step's level:
``x = (1 − σ') · x0 + σ' · ε``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


FLOW_SHIFT = 8.0
TRAIN_STEPS = 1000
# The V2V timesteps of StreamDiffusionV2 for 1..4 denoising steps (unshifted grid).
V2V_TIMESTEPS: dict[int, tuple[int, ...]] = {
    1: (700,),
    2: (700, 500),
    3: (700, 500, 400),
    4: (700, 500, 400, 200),
}
REFERENCE_T0 = 700.0
MAX_STEPS = len(V2V_TIMESTEPS)


@dataclass(frozen=True)
class MotionNoiseSettings:
    """The controller's knobs (all live parameters of a video stream)."""

    motion_aware: bool = True
    noise_scale: float = 0.8  # s0: noise level of a still input
    motion_scale: float = 0.2  # RMS frame difference that counts as full motion
    motion_weight: float = 0.1  # how far full motion lowers the noise level
    smoothing: float = 0.1  # weight of the previous level in the EMA


def shifted_sigma(t: torch.Tensor | float, shift: float = FLOW_SHIFT) -> torch.Tensor | float:
    """Noise level σ of unshifted-grid timestep ``t`` (0..1000) after Wan's timestep shift."""
    u = t / TRAIN_STEPS
    return shift * u / (1 + (shift - 1) * u)


def base_timesteps(num_steps: int) -> tuple[int, ...]:
    """The reference V2V schedule for ``num_steps`` (1..4)."""
    return V2V_TIMESTEPS[num_steps]


def first_timestep(level: torch.Tensor) -> torch.Tensor:
    """``t0 = 1000 · s − 100`` for noise level ``s``."""
    return TRAIN_STEPS * level - 100.0


def step_sigmas(base: torch.Tensor, level: torch.Tensor, shift: float = FLOW_SHIFT) -> torch.Tensor:
    """σ of every step for a chunk that entered at noise level ``level`` (0-d tensor).

    ``base`` (n,) is the reference schedule (:func:`base_timesteps`) on the
    device, preallocated so this is device arithmetic only.
    """
    return shifted_sigma(base * (first_timestep(level.float()) / REFERENCE_T0), shift)


def model_timesteps(sigmas: torch.Tensor) -> torch.Tensor:
    """The timestep the DiT is given for noise level σ."""
    return sigmas * TRAIN_STEPS


def frame_motion(frames: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor:
    """Max RMS difference between consecutive frames ``(B, 3, t, H, W)`` in [-1, 1] (0-d tensor, on device).

    ``previous`` is the last frame of the chunk before ``(B, 3, 1, H, W)``;
    without it the first frame has no predecessor and only the chunk's own
    pairs count (a single-frame chunk measures 0).
    """
    clip = frames if previous is None else torch.cat([previous.to(frames.dtype), frames], dim=2)
    if clip.shape[2] < 2:
        return frames.new_zeros((), dtype=torch.float32)
    diff = (clip[:, :, 1:].float() - clip[:, :, :-1].float()).pow(2).mean(dim=(0, 1, 3, 4)).sqrt()
    return diff.amax()


@dataclass(frozen=True)
class MotionNoiseSnapshot:
    """Everything a :class:`MotionNoiseController` changes, to put it back after a failed step."""

    settings: MotionNoiseSettings
    level: torch.Tensor
    previous_frame: torch.Tensor | None


class MotionNoiseController:
    """Per-stream motion-aware noise level (see module docstring); its state is one 0-d device tensor."""

    def __init__(self, settings: MotionNoiseSettings, device: torch.device | str = "cpu") -> None:
        self.settings = settings
        self.device = torch.device(device)
        self.level = torch.tensor(settings.noise_scale, device=self.device, dtype=torch.float32)
        self._previous_frame: torch.Tensor | None = None

    def reset(self) -> None:
        self.level = torch.tensor(self.settings.noise_scale, device=self.device, dtype=torch.float32)
        self._previous_frame = None

    def configure(self, settings: MotionNoiseSettings) -> None:
        """New knobs; the EMA carries on from its current level (reset if noise_scale jumps while off)."""
        self.settings = settings
        if not settings.motion_aware:
            self.level = torch.tensor(settings.noise_scale, device=self.device, dtype=torch.float32)

    def snapshot(self) -> MotionNoiseSnapshot:
        """The controller's state; cheap: the controller replaces its tensors, it never writes into them."""
        return MotionNoiseSnapshot(self.settings, self.level, self._previous_frame)

    def restore(self, snapshot: MotionNoiseSnapshot) -> None:
        self.settings, self.level, self._previous_frame = snapshot.settings, snapshot.level, snapshot.previous_frame

    def update(self, frames: torch.Tensor) -> torch.Tensor:
        """Measure a chunk ``(B, 3, t, H, W)`` and return its noise level ``s_t`` (0-d tensor)."""
        s = self.settings
        if s.motion_aware:
            motion = frame_motion(frames, self._previous_frame)
            normalised = (motion / s.motion_scale).clamp(0.0, 1.0)
            target = s.noise_scale - s.motion_weight * normalised
            self.level = (1 - s.smoothing) * target + s.smoothing * self.level
        self._previous_frame = frames[:, :, -1:].detach().clone()
        return self.level.clone()
