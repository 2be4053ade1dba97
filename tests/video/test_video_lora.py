"""LoRAs on the causal Wan DiT: ``lora={file: scale}`` for video models, fused or live, in every key style streamgen reads.

The LoRA files are written here, for the tiny video model, with random
down/up matrices. Layer names are spelled out below (Wan's original names
next to diffusers' module names) rather than taken from the loader, so a
wrong name mapping fails these tests instead of agreeing with itself.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import streamgen
from streamgen.config import ModelSpec
from streamgen.errors import ConfigError, ModelLoadError
from streamgen.models.loading import video_presets
from streamgen.models.loading.video_lora import apply_video_loras, set_video_lora_scales, video_lora_scales
from streamgen.models.loading.video_presets import build_tiny_video_model, load_video_model
from streamgen.pipeline.video_loading import load_video_pipeline

# Original Wan name inside a block → diffusers' name of the same linear layer.
WAN_TO_DIFFUSERS = {
    "self_attn.q": "attn1.to_q",
    "self_attn.k": "attn1.to_k",
    "self_attn.v": "attn1.to_v",
    "self_attn.o": "attn1.to_out.0",
    "cross_attn.q": "attn2.to_q",
    "cross_attn.k": "attn2.to_k",
    "cross_attn.v": "attn2.to_v",
    "cross_attn.o": "attn2.to_out.0",
    "ffn.0": "ffn.net.0.proj",
    "ffn.2": "ffn.net.2",
}
# (Wan name, diffusers name) of every attention and FFN linear of the tiny DiT (2 blocks).
LAYERS = [(f"blocks.{b}.{wan}", f"blocks.{b}.{diffusers}") for b in range(2) for wan, diffusers in WAN_TO_DIFFUSERS.items()]
SIZE = 64
STREAM = {"width": SIZE, "height": SIZE, "prompt": "a fox", "num_inference_steps": 1, "seed": 3}


def _keys(style: str, wan: str, diffusers: str) -> tuple[str, str, str | None]:
    """(down, up, alpha) keys of one layer as each kind of trainer writes them."""
    if style == "wan":  # ComfyUI / Wan trainers: original names, PEFT's A/B, an alpha beside them
        return f"diffusion_model.{wan}.lora_A.weight", f"diffusion_model.{wan}.lora_B.weight", f"diffusion_model.{wan}.alpha"
    if style == "wan_down_up":
        return f"diffusion_model.{wan}.lora_down.weight", f"diffusion_model.{wan}.lora_up.weight", f"diffusion_model.{wan}.alpha"
    if style == "kohya":  # musubi-tuner and other kohya-style trainers
        name = "lora_unet_" + wan.replace(".", "_")
        return f"{name}.lora_down.weight", f"{name}.lora_up.weight", f"{name}.alpha"
    if style == "kohya_diffusers":
        name = "lora_transformer_" + diffusers.replace(".", "_")
        return f"{name}.lora_down.weight", f"{name}.lora_up.weight", f"{name}.alpha"
    if style == "diffusers":  # a pipeline's save_lora_weights: alpha in the metadata, under "transformer."
        return f"transformer.{diffusers}.lora_A.weight", f"transformer.{diffusers}.lora_B.weight", None
    if style == "peft":  # a bare PEFT adapter without alpha: alpha is the rank
        return f"base_model.model.{diffusers}.lora_A.weight", f"base_model.model.{diffusers}.lora_B.weight", None
    raise AssertionError(style)


# style → (the layers its file targets, rank, alpha written in the file or None)
STYLES = {
    "wan": (LAYERS[0::2], 4, 2.0),
    "wan_down_up": (LAYERS[1::3], 3, 6.0),
    "kohya": (LAYERS[:7], 4, 1.0),
    "kohya_diffusers": (LAYERS[13:], 2, 2.0),
    "diffusers": (LAYERS[1::2], 4, 8.0),
    "peft": (LAYERS[5:15], 2, None),
}


def _write(path, style: str, layers, rank: int, alpha: float | None, seed: int) -> dict[str, torch.Tensor]:
    """Write a LoRA file; returns diffusers layer name → its weight update at scale 1 (up @ down · alpha / rank)."""
    generator = torch.Generator().manual_seed(seed)
    tensors, deltas, metadata = {}, {}, None
    model = build_tiny_video_model(seed=0).transformer.transformer
    for wan, diffusers in layers:
        out_features, in_features = model.get_submodule(diffusers).weight.shape
        down = torch.randn(rank, in_features, generator=generator) * 0.3
        up = torch.randn(out_features, rank, generator=generator) * 0.3
        down_key, up_key, alpha_key = _keys(style, wan, diffusers)
        tensors[down_key], tensors[up_key] = down, up
        if alpha_key is not None and alpha is not None:
            tensors[alpha_key] = torch.tensor(alpha)
        deltas[diffusers] = up @ down * ((alpha if alpha is not None else rank) / rank)
    if style == "diffusers":
        metadata = {"format": "pt", "lora_adapter_metadata": json.dumps({"transformer.r": rank, "transformer.lora_alpha": alpha})}
    save_file(tensors, str(path), metadata=metadata)
    return deltas


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """style → (path, deltas); plus 'live': a LoRA on both blocks that leaves cross-attention k/v alone."""
    folder = tmp_path_factory.mktemp("video_lora")
    out = {}
    for seed, (style, (layers, rank, alpha)) in enumerate(STYLES.items()):
        path = folder / f"{style}.safetensors"
        out[style] = (str(path), _write(path, style, layers, rank, alpha, seed))
    live = [(w, d) for w, d in LAYERS if not d.endswith(("attn2.to_k", "attn2.to_v"))]
    out["live"] = (str(folder / "live.safetensors"), _write(folder / "live.safetensors", "kohya", live, 4, 4.0, 99))
    return out


@pytest.fixture(scope="module")
def base():
    return load_video_model("tiny-video", device="cpu")


@pytest.fixture(scope="module")
def base_frames():
    return _frames(streamgen.VideoStream("tiny-video", **STREAM))


def _weights(model) -> dict[str, torch.Tensor]:
    return model.transformer.transformer.state_dict()


@torch.no_grad()
def _flow(model) -> torch.Tensor:
    """One block-causal DiT forward on fixed inputs, through the prompt's cross-attention K/V."""
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 16, 2, 8, 8, generator=generator)
    text = torch.randn(1, 8, model.transformer.text_dim, generator=generator)
    context = model.transformer.encode_context(text)
    return model.transformer.forward_block_causal(latents, torch.tensor([[700.0, 300.0]]), context)


def _frames(stream) -> np.ndarray:
    rng = np.random.default_rng(0)
    clip = [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(5)]
    out = [f for frame in clip for f in stream(frame)]
    assert len(out) == 5
    return np.stack(out).astype(int)


def _is_peft(model, layer: str) -> bool:
    return "peft" in type(model.transformer.transformer.get_submodule(layer)).__module__


# --------------------------------------------------------------------------- fusing
@pytest.mark.parametrize("style", list(STYLES))
def test_fused_lora_moves_exactly_its_layers_by_scale_times_up_down_times_alpha_over_rank(style, files, base):
    path, deltas = files[style]
    model = load_video_model("tiny-video", device="cpu", lora={path: 0.7})
    before, after = _weights(base), _weights(model)
    assert after.keys() == before.keys()  # the peft layers were merged and removed
    assert all(not _is_peft(model, layer) for _, layer in LAYERS)
    for key, weight in after.items():
        layer = key.removesuffix(".weight")
        if layer in deltas:
            assert torch.allclose(weight, before[key] + 0.7 * deltas[layer], atol=1e-6), key
            assert not torch.allclose(weight, before[key], atol=1e-3), key
        else:
            assert torch.equal(weight, before[key]), f"{key} changed but the LoRA does not target it"


def test_two_loras_at_once_add_up_and_run_as_two_live_adapters(files, base):
    (a, delta_a), (b, delta_b) = files["wan"], files["kohya"]
    assert delta_a.keys() & delta_b.keys() and delta_a.keys() ^ delta_b.keys()  # some layers shared, some not
    both = load_video_model("tiny-video", device="cpu", lora={a: 0.8, b: -0.5})
    before, after = _weights(base), _weights(both)
    for key, weight in after.items():
        layer = key.removesuffix(".weight")
        expected = before[key] + 0.8 * delta_a.get(layer, 0.0) - 0.5 * delta_b.get(layer, 0.0)
        assert torch.allclose(weight, expected, atol=1e-6), key
    live = load_video_model("tiny-video", device="cpu", lora={a: 0.8, b: -0.5}, fuse_lora=False)
    assert torch.allclose(_flow(live), _flow(both), atol=1e-5)
    alone = load_video_model("tiny-video", device="cpu", lora={a: 0.8})
    assert not torch.allclose(_flow(alone), _flow(both), atol=1e-3)


# --------------------------------------------------------------------------- streams
def test_video_stream_with_a_lora_end_to_end_fused_equals_unfused_unlike_no_lora(files, base, base_frames):
    path, deltas = files["kohya"]
    fused = streamgen.VideoStream("tiny-video", lora={path: 0.8}, **STREAM)
    unfused = streamgen.VideoStream("tiny-video", lora={path: 0.8}, fuse_lora=False, **STREAM)
    layer = next(iter(deltas))
    assert not _is_peft(fused.pipeline.model, layer) and _is_peft(unfused.pipeline.model, layer)
    fused_weight = fused.pipeline.model.transformer.transformer.get_submodule(layer).weight
    assert torch.allclose(fused_weight, base.transformer.transformer.get_submodule(layer).weight + 0.8 * deltas[layer], atol=1e-6)
    flow = _flow(fused.pipeline.model)
    assert torch.allclose(flow, _flow(unfused.pipeline.model), atol=1e-5)
    assert (flow - _flow(base)).abs().max() > 0.05
    fused_frames, unfused_frames = _frames(fused), _frames(unfused)
    assert np.abs(fused_frames - unfused_frames).max() <= 1
    assert np.abs(fused_frames - base_frames).mean() > 1.0


def test_set_video_lora_scales_is_model_wide_and_scale_zero_is_the_base_model(files, base, base_frames):
    path, _ = files["live"]
    pipeline = load_video_pipeline("tiny-video", device="cpu", lora={path: 1.0}, fuse_lora=False)
    model = pipeline.model
    assert video_lora_scales(model) == {path: 1.0}
    running = streamgen.VideoStream(pipeline, **STREAM)  # made before the change: it must see it too
    assert not torch.allclose(_flow(model), _flow(base), atol=1e-3)

    set_video_lora_scales(model, {path: 0.0})
    assert video_lora_scales(model) == {path: 0.0}
    assert torch.equal(_flow(model), _flow(base))
    assert np.array_equal(_frames(running), base_frames)
    assert np.array_equal(_frames(streamgen.VideoStream(pipeline, **STREAM)), base_frames)

    set_video_lora_scales(model.transformer, {path: 0.6})
    fused = load_video_model("tiny-video", device="cpu", lora={path: 0.6})
    assert torch.allclose(_flow(model), _flow(fused), atol=1e-5)
    with pytest.raises(ConfigError, match="no LoRA 'other.safetensors'"):
        set_video_lora_scales(model, {"other.safetensors": 1.0})
    with pytest.raises(ConfigError, match="fused into its weights"):
        set_video_lora_scales(fused, {path: 1.0})
    with pytest.raises(ConfigError, match="has no LoRA"):
        set_video_lora_scales(base, {path: 1.0})


def test_a_model_spec_carries_lora_and_fuse_lora(files):
    path, deltas = files["wan"]
    model = load_video_model(ModelSpec(source="tiny-video", device="cpu", lora={path: 0.5}, fuse_lora=False))
    assert all(_is_peft(model, layer) for layer in deltas)
    assert video_lora_scales(model) == {path: 0.5}


# --------------------------------------------------------------------------- refusals
def test_keys_that_map_to_no_layer_are_refused_listing_them(tmp_path, files, base):
    tensors = {
        "diffusion_model.blocks.0.self_attn.q.lora_A.weight": torch.zeros(2, 48),
        "diffusion_model.blocks.0.self_attn.q.lora_B.weight": torch.zeros(48, 2),
        "diffusion_model.blocks.7.self_attn.q.lora_A.weight": torch.zeros(2, 48),  # a bigger Wan's block
        "diffusion_model.blocks.0.cross_attn.k_img.lora_A.weight": torch.zeros(2, 48),  # image-to-video only
        "diffusion_model.blocks.0.norm3.diff": torch.zeros(48),  # a full diff, not a LoRA
    }
    path = tmp_path / "other_model.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(ConfigError, match="does not fit this Wan DiT") as caught:
        load_video_model("tiny-video", device="cpu", lora={str(path): 1.0})
    message = str(caught.value)
    for key in ("blocks.7.self_attn.q.lora_A", "cross_attn.k_img.lora_A", "blocks.0.norm3.diff"):
        assert key in message
    assert "self_attn.q.lora_A.weight'" in message and "lora_unet_blocks_0_self_attn_q.lora_down.weight" in message  # what was expected
    assert "3 of its 5 keys" in message

    transformer = build_tiny_video_model(seed=0).transformer  # a refused file among good ones leaves the model untouched
    with pytest.raises(ConfigError, match="does not fit"):
        apply_video_loras(transformer, {files["wan"][0]: 1.0, str(path): 1.0})
    assert all("peft" not in type(m).__module__ for m in transformer.modules())
    assert all(torch.equal(w, _weights(base)[k]) for k, w in transformer.transformer.state_dict().items())


@pytest.mark.parametrize(
    ("down", "up", "shown"),
    [((4, 47), (48, 4), r"\(4, 47\)"), ((4, 48), (48, 3), r"\(48, 3\)"), ((4, 48), (40, 4), r"\(40, 4\)")],
)
def test_shapes_that_do_not_fit_are_refused_naming_the_layer_and_shapes(tmp_path, down, up, shown):
    path = tmp_path / "bad_shapes.safetensors"
    name = "lora_unet_blocks_1_self_attn_q"
    save_file({f"{name}.lora_down.weight": torch.zeros(down), f"{name}.lora_up.weight": torch.zeros(up)}, str(path))
    with pytest.raises(ConfigError, match=rf"blocks\.1\.attn1\.to_q .*48x48.*{shown}"):
        load_video_model("tiny-video", device="cpu", lora={str(path): 1.0})


def test_half_a_pair_and_a_file_without_lora_weights_are_refused(tmp_path):
    half = tmp_path / "half.safetensors"
    save_file({"lora_unet_blocks_0_ffn_0.lora_down.weight": torch.zeros(2, 48), "lora_unet_blocks_0_ffn_0.alpha": torch.tensor(1.0)}, str(half))
    with pytest.raises(ConfigError, match="'lora_unet_blocks_0_ffn_0' has no up weight"):
        load_video_model("tiny-video", device="cpu", lora={str(half): 1.0})
    empty = tmp_path / "empty.safetensors"
    save_file({}, str(empty))
    with pytest.raises(ConfigError, match="holds no LoRA weights"):
        load_video_model("tiny-video", device="cpu", lora={str(empty): 1.0})


def test_missing_files_are_model_load_errors_before_the_model_is_built_and_offline_never_asks_the_hub(tmp_path, monkeypatch):
    from streamgen.models.loading import hub

    def no_build(*_, **__):
        raise AssertionError("the model was built before its LoRA files were found")

    def no_network(*_, **__):
        raise AssertionError("the hub was asked although HF_HUB_OFFLINE=1")

    monkeypatch.setattr(video_presets, "build_tiny_video_model", no_build)
    monkeypatch.setattr(hub, "list_repo_files", no_network)
    monkeypatch.setattr(hub, "_download", no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    missing = tmp_path / "nowhere" / "style.safetensors"
    with pytest.raises(ModelLoadError, match=re.escape(f"LoRA '{missing}': no such file")):
        load_video_model("tiny-video", device="cpu", lora={str(missing): 1.0})
    with pytest.raises(ModelLoadError, match="someone/wan-loras/style.safetensors.*HF_HUB_OFFLINE"):
        load_video_model("tiny-video", device="cpu", lora={"someone/wan-loras/style.safetensors": 1.0})
    with pytest.raises(ModelLoadError, match="someone/wan-lora.*HF_HUB_OFFLINE"):
        load_video_model("tiny-video", device="cpu", lora={"someone/wan-lora": 1.0})


@pytest.mark.parametrize(
    ("spec", "match"),
    [({"lora": "x.safetensors"}, "lora must map"), ({"lora": {"x": "1"}}, "lora must map"), ({"fuse_lora": "no"}, "fuse_lora must be")],
)
def test_malformed_lora_options_are_config_errors(spec, match):
    with pytest.raises(ConfigError, match=match):
        load_video_model("tiny-video", device="cpu", **spec)


def test_pipeline_stages_refuse_unfused_loras_and_missing_files_before_starting_any_rank(files, monkeypatch):
    from streamgen.parallel import staged_model

    def no_ranks(*_, **__):
        raise AssertionError("stage ranks were started")

    monkeypatch.setattr(staged_model, "start_stage_group", no_ranks)
    path, _ = files["wan"]
    with pytest.raises(ConfigError, match="fuse_lora=False"):
        load_video_pipeline("tiny-video", devices=["cpu", "cpu"], lora={path: 1.0}, fuse_lora=False)
    with pytest.raises(ModelLoadError, match="nowhere.safetensors"):
        load_video_pipeline(ModelSpec(source="tiny-video", lora={"/nowhere.safetensors": 1.0}), devices="cpu,cpu")