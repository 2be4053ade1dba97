"""Choosing a backend: explicit ones work or say why before any weights load; buckets never change outputs."""

from __future__ import annotations

import pytest
import torch

import streamgen
from streamgen.errors import EngineError
from streamgen.runtime import accelerate, unavailable_reason
from streamgen.runtime.buckets import bucket_for, bucketed, pad_rows


def test_unknown_acceleration_is_refused_with_the_choices():
    with pytest.raises(EngineError, match="choose one of auto, none, compile, onnxruntime, tensorrt"):
        streamgen.ImageStream("tiny", acceleration="warp-speed")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_tensorrt_on_a_cpu_machine_is_refused_before_loading_weights(monkeypatch):
    import streamgen.stream as stream_module

    def no_load(*_args, **_kwargs):
        raise AssertionError("weights were loaded before the backend was checked")

    monkeypatch.setattr(stream_module, "load_image_model", no_load)
    with pytest.raises(EngineError, match="acceleration 'tensorrt' cannot run here"):
        streamgen.ImageStream("tiny", acceleration="tensorrt")


def test_tensorrt_unavailability_names_the_fix():
    reason = unavailable_reason("tensorrt", torch.device("cpu"))
    assert reason is not None and ("streamgen[tensorrt]" in reason or "CUDA" in reason)


def test_none_leaves_the_eager_slots(tiny_model):
    before = tiny_model.unet_forward
    assert accelerate(tiny_model, "none") == "none"
    assert tiny_model.unet_forward == before


@pytest.mark.parametrize(("rows", "bucket"), [(1, 1), (2, 2), (3, 4), (5, 8), (9, 16), (33, 64), (70, 96)])
def test_bucket_sizes(rows, bucket):
    assert bucket_for(rows) == bucket


def test_padding_repeats_the_last_row_and_the_output_is_cut_back():
    calls = []

    def rowwise(x, shared, cond):
        calls.append(x.shape[0])
        assert cond["c"].shape[0] == x.shape[0]
        return x * 2 + shared.sum()

    wrapped = bucketed(rowwise)
    x = torch.arange(3.0)[:, None].expand(3, 4).contiguous()
    shared = torch.ones(7)
    out = wrapped(x, shared, {"c": torch.zeros(3, 2)})
    assert calls == [4]
    torch.testing.assert_close(out, rowwise(x, shared, {"c": torch.zeros(3, 2)}))
    torch.testing.assert_close(pad_rows(x, 4)[3], x[2])
