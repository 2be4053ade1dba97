"""``python -m bench.engines`` on the tiny model (eager and ONNX Runtime): the report has every component and steering row (structure, not speed)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from bench import engines as bench_engines


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="needs onnxruntime")
def test_engine_rows_time_the_steered_calls_against_eager(tmp_path, capsys):
    out = tmp_path / "engines.json"
    argv = ["--sizes", "64", "--backends", "none,onnxruntime", "--no-video", "--no-ttff", "--frames", "2", "--rows", "2"]
    assert bench_engines.main([*argv, "--engine-dir", str(tmp_path / "cache"), "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    assert [r["backend"] for r in rows] == ["none", "onnxruntime"]
    for row in rows:
        for name in ("unet", "controlnet", "unet_control", "unet_ip"):
            assert row[f"{name}_ms"] > 0, (name, row)
    assert all(rows[1][f"{n}_x"] > 0 for n in ("controlnet", "unet_control", "unet_ip"))
    assert "UNet+IP ms" in capsys.readouterr().out
