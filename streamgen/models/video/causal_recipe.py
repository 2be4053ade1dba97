"""``CausalRecipe``: what one autoregressive Wan student was trained with, so a stream runs it the way it was taught.

The causal students of Wan2.1 (StreamDiffusionV2, CausVid, Self-Forcing,
LongLive, Krea Realtime) share the DiT architecture and differ in a few
facts, which their authors' configs state:

- the **denoising list**: the few timesteps the student was distilled to
  take (``denoising_step_list``), and whether those are points of the
  unshifted grid put through the flow shift (``warp_denoising_step: true``,
  Self-Forcing and its descendants) or already the model's timesteps
  (CausVid);
- the **flow shift** of the schedule (8 for Wan's base and StreamDiffusionV2,
  5 for the Self-Forcing family);
- the **chunk** (``num_frame_per_block``: 1 latent frame for
  StreamDiffusionV2, 3 for the others) and the **attention window** (sink
  frames kept from the stream's start, recent frames in a ring);
- what it was **trained for** (restyling input video, or text to video; every
  student runs both, the other one at a quality its authors do not vouch for),
  its native size and frame rate.

A stream built on a model takes the recipe's chunk and window unless it
names its own (:meth:`VideoConfig.resolved`), and a txt2vid stream walks the
recipe's denoising list (:meth:`CausalRecipe.txt2vid_timesteps`). A
vid2vid stream keeps StreamDiffusionV2's motion-scaled schedule, which
starts below t = 1000 by design (the input is what it starts from).

streamgen's schedules are points ``t`` of the unshifted grid (0..1000; the
model sees ``1000 · σ(t)`` with ``σ`` the shifted level, :mod:`streamgen.pipeline.noise`),
so a list given as model timesteps (no warp) is mapped back through the
inverse shift.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

TRAIN_STEPS = 1000


@dataclass(frozen=True)
class CausalRecipe:
    """One student's training facts (see module docstring)."""

    name: str
    flow_shift: float
    chunk_frames: int  # latent frames per chunk (num_frame_per_block)
    sink_frames: int  # first latent frames kept in the attention window for the whole stream
    ring_frames: int  # most recent latent frames kept beside them (the current chunk attends to all, plus itself)
    trained_for: Literal["vid2vid", "txt2vid"]
    native_size: tuple[int, int]  # (width, height)
    native_fps: float
    denoising_steps: tuple[int, ...] | None = None  # the authors' list; None: streamgen's equal strides from t = 1000
    warp: bool = True  # the list is on the unshifted grid (True) or is the model's timesteps (False)

    def __post_init__(self) -> None:
        steps = self.denoising_steps
        if steps is not None and (not steps or any(b >= a for a, b in zip(steps, steps[1:])) or not 0 < steps[-1] <= steps[0] <= TRAIN_STEPS):
            raise ValueError(f"{self.name}: a denoising list is strictly decreasing within (0, 1000], got {steps}")

    @property
    def window(self) -> dict[str, int]:
        """The chunk and window a stream takes unless it names its own."""
        return {"chunk_frames": self.chunk_frames, "sink_frames": self.sink_frames, "ring_frames": self.ring_frames}

    @property
    def default_steps(self) -> int | None:
        return len(self.denoising_steps) if self.denoising_steps is not None else None

    def txt2vid_timesteps(self, steps: int) -> tuple[float, ...] | None:
        """The unshifted-grid schedule of a txt2vid stream of ``steps`` steps (None: streamgen's default).

        The whole list when ``steps`` is its length; otherwise entries spread
        over it, first (t = 1000) included: [1000, 750, 500, 250] gives
        [1000, 500] for 2 steps.
        """
        if self.denoising_steps is None:
            return None
        chosen = _spread(self.denoising_steps, steps)
        return tuple(float(t) if self.warp else unshift(t, self.flow_shift) for t in chosen)

    def describe(self) -> dict[str, Any]:
        return {
            "recipe": self.name,
            "denoising_steps": list(self.denoising_steps) if self.denoising_steps else None,
            "warp_denoising_steps": self.warp,
            "flow_shift": self.flow_shift,
            **self.window,
            "trained_for": self.trained_for,
            "native_size": list(self.native_size),
            "native_fps": self.native_fps,
        }


def _spread(values: tuple[int, ...], count: int) -> tuple[int, ...]:
    if count >= len(values):
        return values
    return tuple(values[round(i * len(values) / count)] for i in range(count))


def unshift(timestep: float, shift: float) -> float:
    """The unshifted-grid point whose shifted level is ``timestep / 1000`` (the inverse of ``σ = s·u / (1 + (s − 1)·u)``)."""
    sigma = timestep / TRAIN_STEPS
    return round(TRAIN_STEPS * sigma / (shift - (shift - 1) * sigma), 3)


# The students. Sizes are (width, height); windows are latent frames, the current chunk not counted.
STREAMDIFFUSION_V2 = CausalRecipe(
    "StreamDiffusionV2", flow_shift=8.0, chunk_frames=1, sink_frames=3, ring_frames=3,
    trained_for="vid2vid", native_size=(832, 480), native_fps=16.0,
)
CAUSVID = CausalRecipe(
    # configs/wan_causal_dmd.yaml: denoising_step_list [1000, 757, 522] as model timesteps, num_frame_per_block 3;
    # trained with full causal attention over 21 latent frames, kept here as 3 sinks + 15 recent + the chunk
    "CausVid", flow_shift=8.0, chunk_frames=3, sink_frames=3, ring_frames=15,
    trained_for="txt2vid", native_size=(832, 480), native_fps=16.0, denoising_steps=(1000, 757, 522), warp=False,
)
SELF_FORCING = CausalRecipe(
    # configs/self_forcing_dmd.yaml: [1000, 750, 500, 250] warped, timestep_shift 5, num_frame_per_block 3, 21 latent frames
    "Self-Forcing", flow_shift=5.0, chunk_frames=3, sink_frames=3, ring_frames=15,
    trained_for="txt2vid", native_size=(832, 480), native_fps=16.0, denoising_steps=(1000, 750, 500, 250),
)
LONGLIVE = CausalRecipe(
    # LongLive's inference config: Self-Forcing's list and shift, local_attn_size 12 with sink_size 3
    "LongLive", flow_shift=5.0, chunk_frames=3, sink_frames=3, ring_frames=9,
    trained_for="txt2vid", native_size=(832, 480), native_fps=16.0, denoising_steps=(1000, 750, 500, 250),
)
KREA_REALTIME = CausalRecipe(
    # Self-Forcing on Wan2.1-14B: timestep_shift 5, num_frame_per_block 3, local_attn_size 6; 576x320 is what fits 32 GB
    "Krea Realtime Video", flow_shift=5.0, chunk_frames=3, sink_frames=3, ring_frames=3,
    trained_for="txt2vid", native_size=(832, 480), native_fps=16.0, denoising_steps=(1000, 750, 500, 250),
)
