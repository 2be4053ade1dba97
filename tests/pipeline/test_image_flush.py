"""An image stream's end-of-stream drain: the frames still in the stream batch come out, nothing else."""

from __future__ import annotations

import torch

from streamgen.config import StreamConfig


def _frame(i: int) -> torch.Tensor:
    return torch.randint(0, 256, (1, 64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(i))


def test_flush_returns_the_buffered_frames_in_order_even_with_the_similarity_filter_on(tiny_pipeline):
    state = tiny_pipeline.create_state(
        StreamConfig(width=64, height=64), {"num_inference_steps": 3, "similarity_filter": True, "similarity_threshold": 0.5}
    )
    tags = []
    for i in range(5):
        out = tiny_pipeline.step([state], [_frame(i)], [(i,)])[0]
        tags += [t for t in out.tags if t is not None and t not in tags]  # the first input is shown while the batch fills
    assert tags == [0, 1, 2]  # three slots: the output trails the input by two calls
    drained = tiny_pipeline.flush(state)
    assert drained.tags == (3, 4) and drained.frames.shape == (2, 64, 64, 3)


def test_flush_of_a_sequential_stream_returns_nothing(tiny_pipeline):
    state = tiny_pipeline.create_state(StreamConfig(width=64, height=64, use_denoising_batch=False), {"num_inference_steps": 2})
    tiny_pipeline.step([state], [_frame(0)], [(0,)])
    assert tiny_pipeline.flush(state).frames.shape[0] == 0
