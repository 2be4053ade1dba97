"""The run loop speaks only the StreamPipeline protocol, so chunked (video) pipelines work too."""

from __future__ import annotations

import numpy as np
import torch

from streamgen.commands.frame_sources import SourceFrame
from streamgen.commands.stream_runner import StreamRunner, stack_frames
from streamgen.outputs.video_writer import VideoWriter
from streamgen.pipeline.output import StepOutput


class ChunkedPipeline:
    """A stand-in for a video pipeline: buffers frames into chunks of 3, returns 0 or 3 at a time.

    Output frames are the input frames plus one, so the test can see which input each depicts.
    Its ``flush`` hands back a partial chunk at the end, as a video pipeline's does.
    """

    chunk = 3

    def __init__(self) -> None:
        self.buffer: list[tuple[torch.Tensor, object]] = []
        self.calls = 0

    def create_state(self, config=None, params=None):
        return object()

    def update(self, state, changes=None, **kwargs):
        return None

    def reset(self, state):
        self.buffer.clear()

    def step(self, states, frames, tags=None):
        self.calls += 1
        self.buffer.extend(zip(frames[0], tags[0]))
        if len(self.buffer) < self.chunk:
            return [StepOutput(frames[0][:0], ())]
        chunk, self.buffer = self.buffer[: self.chunk], self.buffer[self.chunk :]
        return [StepOutput(torch.stack([f + 1 for f, _ in chunk]), tuple(t for _, t in chunk))]

    def flush(self, state):
        chunk, self.buffer = self.buffer, []
        if not chunk:
            return []
        return [StepOutput(torch.stack([f + 1 for f, _ in chunk]), tuple(t for _, t in chunk))]


def _frames(count: int) -> list[SourceFrame]:
    return [SourceFrame(np.full((8, 8, 3), i, np.uint8), pts=10 * i) for i in range(count)]


def _run(pipeline, count: int, frames_per_call: int = 1):
    emitted: list[tuple[int, int]] = []
    runner = StreamRunner(pipeline, pipeline.create_state(), lambda image, pts: emitted.append((int(image[0, 0, 0]), pts)), frames_per_call=frames_per_call)
    for frame in _frames(count):
        runner.feed(frame)
    runner.finish()
    return emitted, runner.counts


def test_steps_returning_no_or_several_frames_are_all_emitted_in_order_and_flush_drains_the_rest():
    pipeline = ChunkedPipeline()
    emitted, counts = _run(pipeline, 7)
    assert emitted == [(i + 1, 10 * i) for i in range(7)]  # the last partial chunk comes out of flush
    assert counts.frames_in == 7 and counts.frames_lost == 0
    assert pipeline.calls == 7  # flush, no padding calls


def test_partial_last_call_is_padded_and_padding_never_emitted():
    emitted, _ = _run(ChunkedPipeline(), 5, frames_per_call=2)
    assert [pts for _, pts in emitted] == [0, 10, 20, 30, 40]


def test_writer_keeps_times_and_drops_repeats(tmp_path):
    from fractions import Fraction

    from .media import decode

    writer = VideoWriter(tmp_path / "out.mp4", "mpeg4", rate=Fraction(30), time_base=Fraction(1, 90000))
    image = np.zeros((16, 16, 3), np.uint8)
    assert writer.write(image, 0) and not writer.write(image, 0) and writer.write(image, 3000)
    writer.close()
    _, times = decode(tmp_path / "out.mp4")
    assert times == [0.0, 3000 / 90000]
    assert writer.frames_repeated == 1


def test_stack_frames_scales_odd_sizes_to_the_first():
    batch = stack_frames([np.zeros((8, 8, 3), np.uint8), np.zeros((16, 12, 3), np.uint8)])
    assert batch.shape == (2, 8, 8, 3) and batch.dtype == torch.uint8
