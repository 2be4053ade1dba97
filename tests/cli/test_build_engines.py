"""``streamgen build-engines``: builds into the engine cache once, reuses after, refuses bad flags in one line."""

from __future__ import annotations

import importlib.util
import re

import pytest
import torch

needs_onnxruntime = pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="needs onnxruntime (pip install 'streamgen[onnx]')")

COMPONENTS = ("unet", "vae_encoder", "vae_decoder", "text_encoder")


@needs_onnxruntime
def test_second_run_builds_nothing_and_doctor_lists_the_engines(cli, tmp_path, monkeypatch):
    engine_dir = str(tmp_path / "engines")
    args = ("build-engines", "--model", "tiny", "--acceleration", "onnxruntime", "--resolution", "64-128", "--batch", "1-4", "--engine-dir", engine_dir, "--quiet")
    code, out, _ = cli(*args)
    assert code == 0, out
    assert "built 4, reused 0" in out
    for component in COMPONENTS:
        assert f"built   {component} (onnx)" in out

    code, out, _ = cli(*args)
    assert code == 0
    assert "built 0, reused 4" in out
    assert "built   " not in out.replace("reused (built", "")

    monkeypatch.setenv("STREAMGEN_ENGINE_DIR", engine_dir)
    code, out, _ = cli("doctor")
    assert code == 0
    assert re.search(rf"engine cache +{re.escape(engine_dir)} \(4 engines", out)
    for component in COMPONENTS:
        assert f"tiny {component}, onnx" in out


@needs_onnxruntime
def test_controlnets_and_the_ip_adapter_get_their_engines_ahead_of_serving(cli, tmp_path):
    engine_dir = str(tmp_path / "engines")
    args = ("build-engines", "--model", "tiny", "--acceleration", "onnxruntime", "--engine-dir", engine_dir, "--quiet")
    code, out, _ = cli(*args, "--controlnet", "tiny", "--ip-adapter", "tiny")
    assert code == 0, out
    for component in (*COMPONENTS, "controlnet", "unet_control", "unet_reference"):
        assert f"built   {component} (onnx)" in out, out
    assert "built 7, reused 0" in out

    code, out, _ = cli(*args, "--controlnet", "tiny")
    assert code == 0 and "built 0, reused 6" in out, out


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--acceleration", "onnxruntime", "--resolution", "512-256"], "--resolution must satisfy"),
        (["--acceleration", "onnxruntime", "--resolution", "big"], "--resolution takes MIN-MAX"),
        (["--acceleration", "onnxruntime", "--resolution", "250-500"], "multiples of 8"),
        (["--acceleration", "onnxruntime", "--batch", "0-4"], "--batch must satisfy"),
        (["--acceleration", "warp-speed"], "choose one of auto, none, compile, onnxruntime, tensorrt"),
        ([], "choose what to build with --acceleration"),
    ],
)
def test_bad_flags_are_one_line_and_exit_2(cli, tmp_path, flags, message):
    code, out, err = cli("build-engines", "--model", "tiny", "--engine-dir", str(tmp_path), *flags)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_an_unavailable_backend_is_refused_before_loading(cli, tmp_path, monkeypatch):
    import streamgen.stream as stream_module

    def no_load(*_args, **_kwargs):
        raise AssertionError("weights were loaded before the backend was checked")

    monkeypatch.setattr(stream_module, "load_pipeline", no_load)
    code, _, err = cli("build-engines", "--acceleration", "tensorrt", "--engine-dir", str(tmp_path))
    assert code == 2
    assert "acceleration 'tensorrt' cannot run here" in err and len(err.strip().splitlines()) == 1


def test_none_has_nothing_to_build(cli, tmp_path):
    code, out, _ = cli("build-engines", "--acceleration", "none", "--engine-dir", str(tmp_path))
    assert code == 0 and "nothing to build" in out
