"""Driving any stream pipeline (image or video) over a finite sequence of frames.

A live stream never ends, but a file does, and a pipeline may still hold
frames when it does: stream batch returns the frame of n − 1 calls ago, a
video pipeline buffers frames into chunks. :class:`StreamRunner` speaks only
the :class:`~streamgen.pipeline.contract.StreamPipeline` protocol:

- it groups input frames into calls of ``frames_per_call`` and tags each frame
  with its pts, so every output frame can be matched to the input it depicts;
- a step may return 0, 1 or several frames; each goes to ``emit`` with its
  input's pts (frames tagged None, i.e. padding, are not emitted);
- at the end it completes a partial call with copies of the last frame and
  calls the pipeline's ``flush(state)`` (the one end-of-stream drain, which the
  server's local sessions use too): what is still inside comes out.

A stream without input (``takes_frames`` is False and a step makes frames:
txt2vid) is driven by :meth:`StreamRunner.generate` instead: it steps with
no frames until the requested number of frames has come out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..frames import cover_resize
from ..pipeline.contract import StreamPipeline
from ..pipeline.output import StepOutput
from .frame_sources import SourceFrame

Emit = Callable[[np.ndarray, int], Any]


@dataclass
class RunCounts:
    """What happened to the input frames."""

    frames_in: int = 0
    frames_emitted: int = 0  # output frames handed to ``emit`` (it may still refuse repeats)
    frames_skipped: int = 0  # inputs the similarity filter answered with the previous output
    frames_lost: int = 0  # inputs whose output never came back, even after draining
    frames_cut: int = 0  # generated frames past the count asked for (the rest of the last chunk)
    calls: int = 0


class StreamRunner:
    """Feed frames in order, then :meth:`finish`; outputs go to ``emit(image, pts)``."""

    def __init__(self, pipeline: StreamPipeline, state: Any, emit: Emit, *, frames_per_call: int = 1, txt2img: bool = False) -> None:
        self.pipeline = pipeline
        self.state = state
        self.emit = emit
        self.frames_per_call = frames_per_call
        self.txt2img = txt2img
        self.counts = RunCounts()
        self._call: list[SourceFrame] = []
        self._waiting: set[int] = set()
        self._last_image: np.ndarray | None = None

    def feed(self, frame: SourceFrame) -> int:
        """Queue one input frame; returns how many output frames this produced."""
        self.counts.frames_in += 1
        self._last_image = frame.image
        self._call.append(frame)
        if len(self._call) < self.frames_per_call:
            return 0
        images, tags = [f.image for f in self._call], tuple(f.pts for f in self._call)
        self._call = []
        return self._step(images, tags)

    def finish(self) -> int:
        """Push out everything still inside the pipeline (its ``flush``); returns the frames it produced."""
        if self._last_image is None:
            return 0
        produced = 0
        if self._call:
            missing = self.frames_per_call - len(self._call)
            images = [f.image for f in self._call] + [self._last_image] * missing
            produced += self._step(images, tuple(f.pts for f in self._call) + (None,) * missing)
            self._call = []
        if self._waiting:
            produced += self._take(self.pipeline.flush(self.state))
        self.counts.frames_lost = len(self._waiting)
        return produced

    def generate(self, count: int, progress: Callable[[int], Any] | None = None) -> int:
        """Step a stream that takes no frames (txt2vid) until ``count`` frames came out; returns the frames emitted.

        Each step makes one chunk of at most ``frames_per_unit`` frames (the
        stream's shape), which may come out some steps later (stream batch):
        it takes just enough steps for ``count`` frames, drains them with the
        pipeline's ``flush``, and goes on if the chunks were shorter (a
        stream's first chunk is). Frames past ``count`` are left out
        (``counts.frames_cut``); ``progress(n)`` hears of every n emitted.
        Output frames carry the pipeline's tags (their index in the stream)
        as pts.
        """
        per_step = max(1, self.pipeline.stream_shape(self.state).frames_per_unit)
        start = self.counts.frames_emitted
        while self.counts.frames_emitted - start < count:
            left = count - (self.counts.frames_emitted - start)
            for _ in range(-(-left // per_step)):
                output = self.pipeline.step([self.state], [None], [None])[0]
                self.counts.calls += 1
                self._take_generated(output, start + count, progress)
            self._take_generated(self.pipeline.flush(self.state), start + count, progress)
        return self.counts.frames_emitted - start

    def _take_generated(self, output: StepOutput, limit: int, progress: Callable[[int], Any] | None) -> None:
        images = output.frames.cpu().numpy() if output.tags else ()
        emitted = 0
        for image, tag in zip(images, output.tags):
            if self.counts.frames_emitted >= limit:
                self.counts.frames_cut += 1
                continue
            self.emit(image, tag)
            self.counts.frames_emitted += 1
            emitted += 1
        if emitted and progress is not None:
            progress(emitted)

    # ------------------------------------------------------------------ steps
    def _step(self, images: list[np.ndarray], tags: tuple[int | None, ...]) -> int:
        self._waiting.update(t for t in tags if t is not None)
        frames = None if self.txt2img else stack_frames(images)
        output = self.pipeline.step([self.state], [frames], [tags])[0]
        self.counts.calls += 1
        if output.skipped:
            self.counts.frames_skipped += sum(t is not None for t in tags)
        return self._take(output)

    def _take(self, outputs: StepOutput | Iterable[StepOutput] | None) -> int:
        if outputs is None:
            return 0
        if isinstance(outputs, StepOutput):
            outputs = [outputs]
        produced = 0
        for output in outputs:
            if not output.tags:
                continue
            images = output.frames.cpu().numpy()
            for image, tag in zip(images, output.tags):
                if tag is None:
                    continue
                self._waiting.discard(tag)
                self.emit(image, tag)
                produced += 1
        self.counts.frames_emitted += produced
        return produced


def stack_frames(images: list[np.ndarray]) -> torch.Tensor:
    """(k, H, W, 3) uint8 from k pictures; pictures of another size are scaled to the first's."""
    height, width = images[0].shape[:2]
    if all(image.shape == images[0].shape for image in images):
        return torch.from_numpy(np.stack(images))
    resized = []
    for image in images:
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
        resized.append(cover_resize(tensor, width, height).round().clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0))
    return torch.stack(resized)
