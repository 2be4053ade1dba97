"""``acceleration="auto"``: measures the backends available here once, keeps the fastest, remembers the choice."""

from __future__ import annotations

import importlib
import json
import logging

import pytest

import streamgen
from streamgen.runtime import accelerate

accelerate_module = importlib.import_module("streamgen.runtime.accelerate")  # the package re-exports the function under the same name


@pytest.fixture()
def only_onnxruntime(monkeypatch):
    """torch.compile takes minutes on 2 CPU cores: measure eager against ONNX Runtime only."""
    monkeypatch.setattr(accelerate_module, "AUTO_ORDER_CPU", ("onnxruntime",))


def test_auto_measures_once_and_remembers(tmp_path, caplog, monkeypatch, only_onnxruntime):
    caplog.set_level(logging.INFO, logger="streamgen.runtime.accelerate")
    model = streamgen.load_pipeline("tiny").model
    eager_unet = model.unet_forward
    chosen = accelerate(model, "auto", cache_dir=tmp_path)
    assert chosen in ("none", "onnxruntime")
    assert (model.unet_forward is eager_unet) == (chosen == "none")
    assert any("acceleration auto: chose" in r.getMessage() and "ms" in r.getMessage() for r in caplog.records)
    (choice,) = json.loads((tmp_path / "auto-choices.json").read_text()).values()
    assert choice["backend"] == chosen and set(choice["timings_ms"]) == {"none", "onnxruntime"}

    def no_measuring(*_args):
        raise AssertionError("auto measured again instead of reusing its choice")

    monkeypatch.setattr(accelerate_module, "_measure_backends", no_measuring)
    again = streamgen.load_pipeline("tiny").model
    assert accelerate(again, "auto", cache_dir=tmp_path) == chosen
