"""``dtype="auto"``: the dtype each model family is published in, on each device; float32 modules stay float32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import streamgen
from streamgen.models.loading.components import keep_fp32_modules, place
from streamgen.models.loading.device import auto_dtype, resolve_dtype
from streamgen.models.loading.video_presets import build_tiny_video_model


@pytest.mark.parametrize(
    ("device", "family", "bf16", "expected"),
    [
        ("cpu", "image", True, torch.float32),
        ("cpu", "video", True, torch.float32),
        ("cuda", "image", True, torch.float16),
        ("cuda", "video", True, torch.bfloat16),  # Wan 2.1 and UMT5 are bf16 models
        ("cuda", "video", False, torch.float16),  # a GPU without fast bf16
    ],
)
def test_the_auto_dtype_table(device, family, bf16, expected):
    assert auto_dtype(device, family, bf16) == expected


def test_resolve_dtype_keeps_explicit_choices_and_defaults_to_image():
    assert resolve_dtype("bf16", torch.device("cpu"), family="image") == torch.bfloat16
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype(torch.float16, torch.device("cpu"), family="video") == torch.float16


def test_a_half_wan_model_keeps_what_diffusers_and_transformers_keep_in_float32():
    model = build_tiny_video_model(seed=0, dtype=torch.bfloat16)
    kept = {n for n, p in model.transformer.transformer.named_parameters() if p.dtype == torch.float32}
    assert "scale_shift_table" in kept and "blocks.0.scale_shift_table" in kept
    assert any(n.startswith("condition_embedder.time_embedder.") for n in kept)
    assert not any(n.startswith("blocks.0.attn1.") for n in kept)  # everything else is half
    assert model.transformer.dtype == torch.bfloat16
    wo = [p.dtype for n, p in model.text_encoder.named_parameters() if n.endswith("wo.weight")]
    assert wo and set(wo) == {torch.float32}  # UMT5's wo overflows in half precision


def test_a_bf16_video_stream_with_float32_modules_runs_and_stays_close_to_float32():
    frames = [np.full((64, 64, 3), 20 * i, np.uint8) for i in range(9)]
    streams = {dtype: streamgen.VideoStream("tiny-video", device="cpu", dtype=dtype, width=64, height=64, seed=3) for dtype in ("float32", "bfloat16")}
    out = {dtype: np.stack([o for f in frames for o in s.stream(f)]) for dtype, s in streams.items()}
    assert out["bfloat16"].shape == out["float32"].shape and out["float32"].shape[0] > 0
    assert np.abs(out["bfloat16"].astype(int) - out["float32"].astype(int)).mean() < 12


def test_placing_twice_changes_nothing_and_counts_no_moves():
    model = build_tiny_video_model(seed=0, dtype=torch.bfloat16)
    before = {n: p.data_ptr() for n, p in model.text_encoder.named_parameters()}
    again = place(model.text_encoder, torch.device("cpu"), torch.bfloat16)
    assert {n: p.data_ptr() for n, p in again.named_parameters()} == before
    assert keep_fp32_modules(again) == 0
