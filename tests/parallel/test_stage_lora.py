"""LoRAs over pipeline stages (2 CPU ranks): each stage fuses them into the layers it holds; the frames are one process's."""

from __future__ import annotations

import numpy as np

from streamgen import VideoStream
from tests.video.test_video_lora import LAYERS, _write

SETTINGS = {"width": 64, "height": 64, "prompt": "a lighthouse", "seed": 7, "num_inference_steps": 2}


def _frames(count: int = 13) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(count)]


def _run(stream: VideoStream) -> np.ndarray:
    return np.stack([out for frame in _frames() for out in stream.stream(frame)] + stream.flush())


def test_a_lora_over_two_ranks_equals_the_one_process_fused_lora(tmp_path):
    # layers of both blocks (one on each rank) plus the kohya-named and Wan-named files together
    first, second = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    _write(first, "kohya", LAYERS[::2], 4, 2.0, seed=5)
    _write(second, "wan", LAYERS[1::3], 2, 2.0, seed=6)
    loras = {str(first): 0.8, str(second): 0.5}
    expected = _run(VideoStream("tiny-video", device="cpu", model_seed=1, lora=loras, **SETTINGS))
    plain = _run(VideoStream("tiny-video", device="cpu", model_seed=1, **SETTINGS))
    staged = VideoStream("tiny-video", devices=["cpu", "cpu"], model_seed=1, lora=loras, **SETTINGS)
    try:
        got = _run(staged)
    finally:
        staged.pipeline.model.stages.close()
    assert got.shape == expected.shape and np.array_equal(got, expected)
    assert not np.array_equal(expected, plain), "the LoRAs change the frames"
