"""User mistakes: one clear line on stderr, exit status 2, no traceback, no output file."""

from __future__ import annotations

from pathlib import Path

import pytest

from .media import write_clip


def _fails_clearly(cli, *args: str) -> str:
    code, out, err = cli(*args)
    assert code == 2, (out, err)
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--params", "{not json"], "--params is not valid JSON"),
        (["--params", "[1, 2]"], "must be a JSON object"),
        (["--params", '{"colour": "red"}'], "unknown parameter 'colour'"),
        (["--params", '{"prompt": []}'], "prompt must not be an empty list"),
        (["--params", "@/nonexistent/params.json"], "cannot read"),
        (["--strength", "2"], "strength must be between 0 and 1"),
        (["--strength", "high"], "strength must be a finite number"),
        (["--guidance-scale", "nan"], "guidance_scale must be a finite number"),
        (["--seed", "-1"], "seed must be between 0 and"),
        (["--t-index-list", "30,10"], "strictly increasing"),
        (["--width", "65"], "width must be a multiple of 8"),
        (["--frame-buffer-size", "0"], "frame_buffer_size must be between 1"),
        (["--fps", "0"], "--fps must be positive"),
        (["--model", "no-such-model-anywhere", "--device", "cpu"], "no-such-model-anywhere"),
    ],
)
def test_bad_settings(cli, tmp_path, args, message):
    err = _fails_clearly(cli, "run", "-i", "synthetic:2", "-o", str(tmp_path / "out.mp4"), "--quiet", *args)
    assert message in err
    assert err.startswith("streamgen: error:") and err.count("\n") == 1
    assert not (tmp_path / "out.mp4").exists()


def test_missing_input(cli, tmp_path):
    err = _fails_clearly(cli, "run", "-i", str(tmp_path / "nope.mp4"), "-o", str(tmp_path / "out.mp4"))
    assert "does not exist" in err


def test_unreadable_input(cli, tmp_path):
    bogus = tmp_path / "broken.mp4"
    bogus.write_bytes(b"this is not a video")
    err = _fails_clearly(cli, "run", "-i", str(bogus), "-o", str(tmp_path / "out.mp4"))
    assert "cannot read input" in err and "broken.mp4" in err


def test_folder_without_images(cli, tmp_path):
    (tmp_path / "empty").mkdir()
    err = _fails_clearly(cli, "run", "-i", str(tmp_path / "empty"), "-o", str(tmp_path / "out.mp4"))
    assert "holds no images" in err


def test_bad_synthetic_length(cli, tmp_path):
    err = _fails_clearly(cli, "run", "-i", "synthetic:lots", "-o", str(tmp_path / "out.mp4"))
    assert "positive number of frames" in err


@pytest.mark.parametrize(
    ("output", "message"),
    [("missing-folder/out.mp4", "does not exist"), ("noextension", "file extension"), (".", "is a folder")],
)
def test_bad_output(cli, tmp_path, output, message):
    err = _fails_clearly(cli, "run", "-i", "synthetic:2", "-o", str(tmp_path / output))
    assert message in err


def test_output_may_not_overwrite_the_input(cli, tmp_path):
    clip = tmp_path / "clip.mp4"
    write_clip(clip, 2)
    err = _fails_clearly(cli, "run", "-i", str(clip), "-o", str(clip))
    assert "is the input file" in err


def test_unknown_codec(cli, tmp_path):
    err = _fails_clearly(cli, "run", "-i", "synthetic:2", "-o", str(tmp_path / "out.mp4"), "--codec", "nonsense264")
    assert "no such video encoder" in err


def test_argparse_usage_errors_exit_2(cli, tmp_path):
    code, _, err = cli("run", "-i", "synthetic:2", "-o", str(tmp_path / "o.mp4"), "--cfg-type", "sometimes")
    assert code == 2 and "invalid choice" in err and "Traceback" not in err
    code, _, err = cli("run", "-o", str(tmp_path / "o.mp4"))
    assert code == 2 and "--input" in err


@pytest.mark.parametrize(("output", "accepted"), [("out.txt", ".mp4, .mkv, .mov, .avi"), ("out.wav", ".mp4"), ("out.png", ".mkv"), ("out.webm", ".mp4")])
def test_an_output_format_that_cannot_hold_the_video_fails_before_the_model_loads(cli, tmp_path, monkeypatch, output, accepted):
    import streamgen.stream

    monkeypatch.setattr(streamgen.stream, "load_stream_pipeline", lambda *a, **k: pytest.fail("the model must not load"))
    err = _fails_clearly(cli, "run", "-i", "synthetic:2", "-o", str(tmp_path / output), "--codec", "mpeg4")
    assert err.startswith("streamgen: error:") and err.count("\n") == 1
    assert f"to a {Path(output).suffix} file" in err and accepted in err
    assert not (tmp_path / output).exists()


def test_an_encoder_the_container_takes_is_accepted(cli, tmp_path):
    from streamgen.outputs.video_writer import check_output_path, container_takes

    assert container_takes("out.mkv", "mpeg4") and container_takes("out.MP4", "mpeg4")
    assert not container_takes("out.txt", "mpeg4") and not container_takes("out.y4m", "mpeg4")
    check_output_path(tmp_path / "out.mov", "mpeg4")
    assert not (tmp_path / "out.mov").exists()


def test_unknown_model_lists_image_and_video_presets(cli, tmp_path):
    err = _fails_clearly(cli, "run", "-i", "synthetic:2", "-o", str(tmp_path / "out.mp4"), "--model", "no-such-model", "--device", "cpu")
    for preset in ("tiny", "sd-turbo", "tiny-video", "wan-causal-1.3b"):
        assert preset in err


def _fresh(*args: str) -> tuple[int, str, bool]:
    """``streamgen ARGS`` in a new interpreter: (exit code, stderr, whether torch was imported before it answered)."""
    import subprocess
    import sys

    probe = (
        "import sys\nfrom streamgen.cli import main\n"
        "try:\n    code = main(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\nsys.exit(code)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=120)
    return done.returncode, done.stderr, "NO-TORCH" not in done.stdout


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["run", "--model", "sd-turbbo", "-i", "synthetic:2", "-o", "out.mp4"], "did you mean 'sd-turbo'?"),
        (["serve", "--model", "tiny-vidoe", "--port", "0"], "did you mean 'tiny-video'?"),
        (["camera", "--model", "sdxl-trubo", "-o", "window"], "did you mean 'sdxl-turbo'?"),
        (["build-engines", "--model", "tinny", "--acceleration", "compile"], "did you mean 'tiny'?"),
        (["run", "--model", "tiny", "-i", "synthetic:2", "-o", "out.mp4", "--strength", "7"], "strength must be between 0 and 1"),
        (["run", "--model", "tiny", "-i", "synthetic:2", "-o", "out.mp4", "--strenght", "0.5"], "did you mean --strength?"),
    ],
)
def test_mistakes_are_reported_before_torch_is_imported_with_the_nearest_name(tmp_path, monkeypatch, args, words):
    monkeypatch.chdir(tmp_path)
    code, err, torch_loaded = _fresh(*args)
    assert code == 2 and words in err and "Traceback" not in err, err
    assert not torch_loaded


def test_an_output_that_cannot_be_created_fails_up_front_in_one_line(cli, tmp_path):
    target = next((Path(p) / "streamgen-out.mp4" for p in ("/proc", "/sys") if Path(p).is_dir()), None)
    if target is None:
        pytest.skip("needs /proc or /sys (a folder where even root cannot create files)")
    code, err, torch_loaded = _fresh("run", "--model", "tiny", "-i", "synthetic:2", "-o", str(target), "--quiet")
    assert code == 2 and "cannot be written" in err and err.count("\n") == 1 and not torch_loaded, err


def test_ctrl_c_during_run_prints_the_summary_and_leaves_a_valid_file(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    import av

    out = tmp_path / "out.mkv"
    command = [sys.executable, "-m", "streamgen", "run", "--model", "tiny", "-i", "synthetic:100000", "-o", str(out),
               "--codec", "ffv1", "--width", "64", "--height", "64", "--quiet", "--device", "cpu"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out.exists() and out.stat().st_size > 20_000):
            assert process.poll() is None and time.monotonic() < deadline, process.stderr.read() if process.poll() is not None else "no output"
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr
    assert "stopped (Ctrl+C)" in stdout and "frames written until then" in stdout and "Traceback" not in stderr
    with av.open(str(out)) as container:
        frames = sum(1 for _ in container.decode(video=0))
    assert frames > 0 and f"holds the {frames} frames" in stdout
