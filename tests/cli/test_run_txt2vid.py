"""``streamgen run --mode txt2vid``: a video model generates N frames from the prompt, no input."""

from __future__ import annotations

import re

import numpy as np
import pytest

from .conftest import SMALL
from .media import decode

VIDEO = ["--model", "tiny-video", "--mode", "txt2vid", "--prompt", "a paper boat"]


@pytest.mark.parametrize(("frames", "extra", "steps"), [(10, [], 4), (9, ["--no-denoising-batch"], 3), (1, [], 1)])
def test_generates_exactly_the_frames_asked_for(cli, tmp_path, frames, extra, steps):
    output = tmp_path / "out.mp4"
    code, out, err = cli("run", *VIDEO, "--frames", str(frames), "--fps", "20", "--output", str(output), *SMALL, *extra)
    assert code == 0, err
    images, times = decode(output)
    assert len(images) == frames and images[0].shape == (64, 64, 3)
    assert times == pytest.approx([i / 20 for i in range(frames)], abs=1e-3)  # one frame every 1/fps
    assert "txt2vid" in out and f"{frames} generated in {steps} model steps" in out
    assert f"64x64, {frames} frames" in out
    if frames == 10:
        assert "3 more of the last chunk left out" in out  # chunks of 1, 4, 4, 4 frames
        assert np.abs(images[0].astype(int) - images[5].astype(int)).mean() > 1  # frames of a video, not one picture


def test_the_seed_decides_the_video(cli, tmp_path):
    paths = [tmp_path / name for name in ("a.mkv", "b.mkv", "c.mkv")]
    for path, seed in zip(paths, (1, 1, 2)):
        code, _, err = cli("run", *VIDEO, "--frames", "5", "--seed", str(seed), "--codec", "ffv1", "-o", str(path), *SMALL)
        assert code == 0, err
    a, b, c = (np.stack(decode(path)[0]) for path in paths)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_progress_bar_counts_generated_frames(cli, tmp_path):
    code, _, err = cli("run", *VIDEO, "--frames", "6", "-o", str(tmp_path / "out.mp4"), "--width", "64", "--height", "64")
    assert code == 0, err
    assert "6/6" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([*VIDEO, "--frames", "4", "-i", "synthetic:4"], "--input does not apply to --mode txt2vid"),
        ([*VIDEO], "--mode txt2vid needs --frames N"),
        ([*VIDEO, "--frames", "0"], "--frames must be at least 1"),
        ([*VIDEO, "--frames", "4", "--max-frames", "2"], "--max-frames cuts an input"),
        ([*VIDEO, "--frames", "4", "--params", '{"noise_scale": 0.5}'], "noise_scale applies to vid2vid streams"),
        (["--model", "tiny-video", "--frames", "4", "-i", "synthetic:4"], "--frames is the length of a generated video"),
        (["--model", "tiny-video"], "--input is required"),
        (["--model", "tiny", "--mode", "txt2vid", "--frames", "4"], "mode txt2vid is for video models"),
        (["--model", "tiny-video", "--mode", "txt2img", "-i", "synthetic:2"], "mode must be one of vid2vid, txt2vid"),
    ],
)
def test_mistakes_are_one_clear_line(cli, tmp_path, args, message):
    output = tmp_path / "out.mp4"
    code, out, err = cli("run", *args, "-o", str(output), "--quiet")
    assert code == 2, (out, err)
    assert message in err and "Traceback" not in err
    assert re.match(r"streamgen: error: ", err) and err.count("\n") == 1
    assert not output.exists()
