"""``VideoStream(..., devices=[...])``: the Python API runs pipeline stages, with the settings it was given in force."""

from __future__ import annotations

import numpy as np
import pytest

from streamgen import VideoStream
from streamgen.errors import ConfigError

SETTINGS = {"width": 64, "height": 64, "prompt": "a lighthouse", "seed": 7, "num_inference_steps": 2}


def _frames(count: int = 21) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(count)]


def _run(stream: VideoStream) -> np.ndarray:
    outputs = [out for frame in _frames() for out in stream.stream(frame)] + stream.flush()
    return np.stack(outputs)


def test_a_stream_over_two_cpu_ranks_equals_the_one_process_stream():
    expected = _run(VideoStream("tiny-video", device="cpu", model_seed=1, **SETTINGS))
    staged = VideoStream("tiny-video", devices=["cpu", "cpu"], model_seed=1, **SETTINGS)
    try:
        assert staged.params.seed == 7 and staged.config.width == 64  # the stream's settings, not the model's
        assert staged.pipeline.model.stages.describe()["split"] == [0, 1, 2]
        got = _run(staged)
    finally:
        staged.pipeline.model.stages.close()
    assert got.shape == expected.shape and np.array_equal(got, expected)


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"devices": ["cpu", "cpu"], "device": "cpu"}, "either device or devices"),
        ({"devices": ["cpu", "cpu"], "acceleration": "onnxruntime"}, "does not run with pipeline stages"),
        ({"devices": ["cpu", "gpu:0"]}, "not a device name"),
        ({"devices": ["cpu"] * 3}, "at most 2 stages"),
    ],
)
def test_bad_device_lists_are_refused_before_any_rank_starts(options, words):
    with pytest.raises(ConfigError, match=words):
        VideoStream("tiny-video", **options, **SETTINGS)
