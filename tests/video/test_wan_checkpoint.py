"""Causal student checkpoints in original Wan layout load into diffusers names; unknown layouts fail clearly."""

from __future__ import annotations

import argparse

import pytest
import torch

from streamgen.errors import ModelLoadError
from streamgen.models.video.tiny_video_dit import tiny_causal_wan
from streamgen.models.video.wan_checkpoint import (
    ORIGINAL_TO_DIFFUSERS,
    convert_diffusers_to_original,
    convert_original_to_diffusers,
    load_causal_checkpoint,
    load_causal_weights,
    rename_keys,
    save_original_layout,
)


@pytest.fixture(scope="module")
def model():
    return tiny_causal_wan(seed=0)


def _assert_same(state, model):
    expected = model.transformer.state_dict()
    assert state.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(state[key], value), key


@pytest.mark.parametrize(
    ("key", "prefix"),
    [("generator_ema", "model."), ("generator", ""), ("state_dict", "module."), (None, "model."), (None, "")],
)
def test_round_trip_through_the_original_layout(tmp_path, model, key, prefix):
    path = tmp_path / "model.pt"
    save_original_layout(model, path, key=key, prefix=prefix)
    _assert_same(load_causal_checkpoint(path), model)


def test_saved_file_uses_original_wan_names(tmp_path, model):
    path = tmp_path / "model.pt"
    save_original_layout(model.transformer, path)
    saved = torch.load(path, weights_only=True)["generator_ema"]
    for name in (
        "model.blocks.0.self_attn.q.weight",
        "model.blocks.1.cross_attn.o.bias",
        "model.blocks.0.norm3.weight",  # diffusers' norm2 (the cross-attention norm)
        "model.blocks.0.ffn.0.weight",
        "model.blocks.0.modulation",
        "model.head.head.weight",
        "model.head.modulation",
        "model.time_projection.1.weight",
        "model.text_embedding.2.bias",
        "model.patch_embedding.weight",
    ):
        assert name in saved, name
    assert not any(".attn1." in k or "to_q" in k for k in saved)


def test_ema_weights_are_preferred_and_key_picks_another(tmp_path, model):
    other = tiny_causal_wan(seed=7)
    path = tmp_path / "both.pt"
    ema = {"model." + k: v for k, v in convert_diffusers_to_original(model.transformer.state_dict()).items()}
    raw = {"model." + k: v for k, v in convert_diffusers_to_original(other.transformer.state_dict()).items()}
    torch.save({"generator": raw, "generator_ema": ema, "step": torch.tensor(100)}, path)
    _assert_same(load_causal_checkpoint(path), model)
    _assert_same(load_causal_checkpoint(path, key="generator"), other)


def test_load_into_another_model_gives_identical_outputs(tmp_path, model):
    path = tmp_path / "model.pt"
    save_original_layout(model, path)
    target = tiny_causal_wan(seed=5)
    load_causal_weights(target, path)
    latents = torch.randn(1, 16, 2, 8, 8)
    timesteps = torch.tensor([[700.0, 500.0]])
    text = torch.randn(1, 4, model.text_dim)
    with torch.no_grad():
        expected = model.forward_block_causal(latents, timesteps, model.encode_context(text))
        got = target.forward_block_causal(latents, timesteps, target.encode_context(text))
    assert torch.equal(got, expected)


def test_diffusers_named_checkpoints_pass_through(tmp_path, model):
    path = tmp_path / "diffusers.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in model.transformer.state_dict().items()}}, path)
    _assert_same(load_causal_checkpoint(path), model)


def test_our_table_matches_diffusers_converter(model):
    original = convert_diffusers_to_original(model.transformer.state_dict())
    assert rename_keys(original, ORIGINAL_TO_DIFFUSERS).keys() == convert_original_to_diffusers(original).keys()


def test_wrong_architecture_is_a_load_error(tmp_path, model):
    path = tmp_path / "model.pt"
    save_original_layout(model, path)
    with pytest.raises(ModelLoadError, match="missing"):
        load_causal_weights(tiny_causal_wan(seed=0, num_layers=3), path)


def test_unknown_layouts_fail_with_the_keys_found(tmp_path):
    path = tmp_path / "unknown.pt"
    torch.save({"generator": {"encoder.layer.0.weight": torch.zeros(2)}}, path)
    with pytest.raises(ModelLoadError, match=r"unknown checkpoint layout.*encoder\.layer\.0\.weight"):
        load_causal_checkpoint(path)
    torch.save({"config": {"lr": 1}, "epoch": 3}, path)
    with pytest.raises(ModelLoadError, match="config"):
        load_causal_checkpoint(path)
    with pytest.raises(ModelLoadError, match="no entry 'generator_ema'"):
        load_causal_checkpoint(path, key="generator_ema")
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_causal_checkpoint(tmp_path / "missing.pt")


def test_pickled_objects_need_explicit_trust(tmp_path, model):
    path = tmp_path / "with_args.pt"
    state = {"model." + k: v for k, v in convert_diffusers_to_original(model.transformer.state_dict()).items()}
    torch.save({"generator_ema": state, "args": argparse.Namespace(lr=1e-5)}, path)
    with pytest.raises(ModelLoadError, match="trust_pickle"):
        load_causal_checkpoint(path)
    _assert_same(load_causal_checkpoint(path, trust_pickle=True), model)
