"""``streamgen run`` end to end on small files: frames in = frames out, size and timing kept."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from .conftest import SMALL
from .media import decode, moving_pattern, write_clip, write_png


def test_video_file_in_video_file_out(cli, tmp_path):
    source, output = tmp_path / "in.mp4", tmp_path / "out.mp4"
    write_clip(source, 9, width=96, height=80, fps=25)
    code, out, err = cli("run", "--input", str(source), "--output", str(output), "--prompt", "a watercolor", *SMALL)
    assert code == 0, err
    frames, times = decode(output)
    assert len(frames) == 9
    assert frames[0].shape == (64, 64, 3)
    assert times == pytest.approx([i / 25 for i in range(9)], abs=1e-3)  # each output keeps its input's time
    assert "9 in, 9 out" in out and "0 skipped" in out


@pytest.mark.parametrize("extra", [["--frame-buffer-size", "2"], ["--no-denoising-batch"], ["--num-inference-steps", "3", "--cfg-type", "full"]])
def test_every_input_frame_comes_out(cli, tmp_path, extra):
    """Stream batch lags by n−1 calls and f>1 leaves a partial last call: both are drained."""
    source, output = tmp_path / "in.mp4", tmp_path / "out.mkv"
    write_clip(source, 7)
    code, _, err = cli("run", "-i", str(source), "-o", str(output), *SMALL, *extra)
    assert code == 0, err
    frames, times = decode(output)
    assert len(frames) == 7
    assert times == sorted(times) and len(set(times)) == 7


def test_similarity_filter_skips_a_static_clip_and_still_drains(cli, tmp_path):
    source, output = tmp_path / "static.mp4", tmp_path / "out.mp4"
    write_clip(source, 12, static=True)
    code, out, err = cli("run", "-i", str(source), "-o", str(output), *SMALL, "--similarity-filter", "--num-inference-steps", "2")
    assert code == 0, err
    assert len(decode(output)[0]) == 12
    skipped = int(out.split(" skipped")[0].rsplit(", ", 1)[1])
    assert skipped > 0


def test_image_folder_in_natural_order(cli, tmp_path):
    folder, output = tmp_path / "frames", tmp_path / "out.mp4"
    folder.mkdir()
    for i in (1, 2, 10):  # frame10 sorts after frame2
        write_png(folder / f"frame{i}.png", moving_pattern(i, 72, 56))
    (folder / "notes.txt").write_text("not an image")
    code, out, err = cli("run", "--input", str(folder), "--output", str(output), "--fps", "10", *SMALL)
    assert code == 0, err
    frames, times = decode(output)
    assert len(frames) == 3 and frames[0].shape == (64, 64, 3)
    assert times == pytest.approx([0.0, 0.1, 0.2], abs=1e-3)


def test_synthetic_input_needs_no_file(cli, tmp_path):
    output = tmp_path / "out.mp4"
    code, out, err = cli("run", "--input", "synthetic:5", "--output", str(output), "--width", "64", "--height", "96", "--quiet")
    assert code == 0, err
    frames, _ = decode(output)
    assert len(frames) == 5 and frames[0].shape == (96, 64, 3)
    assert "synthetic clip" in out


def test_max_frames_and_mpeg4(cli, tmp_path):
    output = tmp_path / "out.mp4"
    code, out, err = cli("run", "-i", "synthetic:20", "-o", str(output), "--max-frames", "4", "--codec", "mpeg4", *SMALL)
    assert code == 0, err
    assert len(decode(output)[0]) == 4
    assert "mpeg4" in out


def test_params_json_file_with_a_prompt_blend(cli, tmp_path):
    params = tmp_path / "params.json"
    params.write_text('{"prompt": [["a cat", 0.7], ["a dog", 0.3]], "seed": 7, "strength": 0.6}')
    output = tmp_path / "out.mp4"
    code, _, err = cli("run", "-i", "synthetic:3", "-o", str(output), "--params", f"@{params}", *SMALL)
    assert code == 0, err
    assert len(decode(output)[0]) == 3


def test_progress_bar_goes_to_stderr(cli, tmp_path):
    code, _, err = cli("run", "-i", "synthetic:3", "-o", str(tmp_path / "out.mp4"), "--width", "64", "--height", "64")
    assert code == 0
    assert "3/3" in err


@pytest.mark.parametrize("extra", [[], ["--frame-buffer-size", "2"], ["--num-inference-steps", "3"]])
def test_progress_bar_ends_with_every_output_frame(cli, tmp_path, extra):
    """Stream batch holds frames back until the end; the bar's last out= must count them too."""
    code, out, err = cli("run", "-i", "synthetic:5", "-o", str(tmp_path / "out.mp4"), "--width", "64", "--height", "64", *extra)
    assert code == 0, err
    assert "5 in, 5 out" in out
    assert re.findall(r"out=(\d+)", err)[-1] == "5", err


def test_entry_point_as_a_subprocess(tmp_path):
    output = tmp_path / "out.mp4"
    result = subprocess.run(
        [sys.executable, "-m", "streamgen", "run", "-i", "synthetic:3", "-o", str(output), *SMALL, "--prompt", "a city"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "3 in, 3 out" in result.stdout
    assert len(decode(output)[0]) == 3
