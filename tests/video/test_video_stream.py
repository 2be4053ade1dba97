"""VideoStream (numpy and av.VideoFrame) and `streamgen run --model tiny-video`."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import av
import numpy as np
import pytest

import streamgen

SIZE = 64


def _clip(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)
    return [np.roll(base, i, axis=1) for i in range(count)]


def test_numpy_frames_in_numpy_frames_out():
    stream = streamgen.VideoStream("tiny-video", width=SIZE, height=SIZE, prompt="a fox", use_denoising_batch=False)
    outputs = [stream(frame) for frame in _clip(5)]
    assert [len(o) for o in outputs] == [1, 0, 0, 0, 4]
    assert all(isinstance(f, np.ndarray) and f.shape == (SIZE, SIZE, 3) and f.dtype == np.uint8 for o in outputs for f in o)
    assert stream.stats["frames_in"] == 5 and stream.stats["frames_processed"] == 5
    params = stream.update(prompt="an owl", noise_scale=0.7)
    assert params.noise_scale == 0.7 and stream.params.prompt[0].text == "an owl"
    with pytest.raises(streamgen.ConfigError, match="unknown video parameter"):
        stream.update(guidance_scale=2.0)


def test_av_frames_keep_their_pts_and_flush_returns_the_rest():
    stream = streamgen.VideoStream("tiny-video", width=SIZE, height=SIZE, num_inference_steps=2)
    out = []
    for i, image in enumerate(_clip(7)):
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = 1000 + i
        out += stream(frame)
    out += stream.flush()
    assert [f.pts for f in out] == [1000 + i for i in range(7)]  # padding never shows
    assert all(isinstance(f, av.VideoFrame) and (f.width, f.height) == (SIZE, SIZE) for f in out)


def test_astream_yields_every_frame():
    stream = streamgen.VideoStream("tiny-video", width=SIZE, height=SIZE, num_inference_steps=1)

    async def frames():
        for image in _clip(6):
            yield image

    async def collect():
        return [f async for f in stream.astream(frames())]

    assert len(asyncio.run(collect())) == 6


def test_streamgen_run_tiny_video_writes_a_video(tmp_path):
    output = tmp_path / "out.mp4"
    command = [sys.executable, "-m", "streamgen", "run", "--model", "tiny-video", "--input", "synthetic:10", "--output", str(output),
               "--width", str(SIZE), "--height", str(SIZE), "--prompt", "a fox", "--num-inference-steps", "2", "-q"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "10 in, 10 out" in result.stdout
    with av.open(str(output)) as container:
        frames = list(container.decode(video=0))
    assert len(frames) == 10 and (frames[0].width, frames[0].height) == (SIZE, SIZE)


def test_streamgen_run_rejects_image_parameters_for_video(tmp_path):
    command = [sys.executable, "-m", "streamgen", "run", "--model", "tiny-video", "--input", "synthetic:4", "--output", str(tmp_path / "o.mp4"), "--strength", "0.3"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "unknown video parameter 'strength'" in result.stderr
