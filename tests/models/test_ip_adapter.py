"""IP-Adapter: diffusers' loader and processors, per-row scales in one batched UNet call, memoised embeddings."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from diffusers import LCMScheduler, StableDiffusionPipeline
from safetensors.torch import load_file
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

from streamgen.errors import ConfigError, InputError, ModelLoadError
from streamgen.models.image.image_model import ImageModel
from streamgen.models.image.ip_adapter import IPAdapter, RowScaledLinear, load_ip_adapter
from streamgen.models.image.ip_adapter_tiny import TINY_ENCODER, save_tiny_ip_adapter, tiny_image_encoder, tiny_ip_adapter_state_dict
from streamgen.models.image.numerics import DEFAULT_SCHEDULE
from streamgen.models.image.tiny import build_tiny_image_model

from .builders import add_to_hub_cache, same_weights, tiny_sdxl_model, use_hub_cache

VARIANTS = ("plain", "plus")
EMBEDDING_SHAPES = {"plain": (32,), "plus": (17, 32)}  # tiny encoder: projection 32; (32/8)^2 + 1 tokens x 32


def _image(seed: int, height: int = 48, width: int = 64) -> torch.Tensor:
    return torch.randint(0, 256, (height, width, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _inputs(model: ImageModel, rows: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(rows, 4, 8, 8, generator=generator)
    timesteps = torch.tensor([999, 500, 250, 100][:rows] + [500] * max(0, rows - 4))
    hidden = model.encode_prompt("a red fox").hidden.expand(rows, -1, -1)
    return latents, timesteps, hidden


def _sdxl_cond(model: ImageModel, rows: int) -> dict[str, torch.Tensor]:
    pooled = model.encode_prompt("a red fox").pooled
    return {"text_embeds": pooled.expand(rows, -1), "time_ids": model.sdxl_time_ids(64, 64).expand(rows, -1)}


def _run(model: ImageModel, adapter: IPAdapter, embeds: torch.Tensor, scales, seed: int = 0, rows=None) -> torch.Tensor:
    """One batched UNet call through the per-row mechanism (rows: a subset of the inputs)."""
    latents, timesteps, hidden = _inputs(model, embeds.shape[0] if rows is None else 3, seed)
    if rows is not None:
        latents, timesteps, hidden = latents[rows], timesteps[rows], hidden[rows]
    cond = _sdxl_cond(model, latents.shape[0]) if model.is_sdxl else {}
    with adapter.row_scales(scales):
        return model.predict_noise(latents, timesteps, hidden, {**cond, **adapter.unet_kwargs(embeds, scales)})


def _diffusers_pipeline(model: ImageModel, adapter: IPAdapter) -> StableDiffusionPipeline:
    return StableDiffusionPipeline(
        vae=model.vae,
        text_encoder=model.text_encoders[0],
        tokenizer=model.tokenizers[0],
        unet=model.unet,
        scheduler=LCMScheduler(**DEFAULT_SCHEDULE, steps_offset=1),
        safety_checker=None,
        feature_extractor=None,
        image_encoder=adapter.image_encoder,
        requires_safety_checker=False,
    )


@pytest.fixture(params=VARIANTS)
def loaded(request):
    model = build_tiny_image_model(seed=0)
    return model, load_ip_adapter(model, "tiny", variant=request.param)


@pytest.fixture(scope="module")
def plain_model():
    return build_tiny_image_model(seed=0)  # never gets an adapter: the reference UNet


# ---- equality with diffusers' own path ------------------------------------------------------


def test_embedding_is_what_diffusers_encode_image_gives(loaded):
    model, adapter = loaded
    pipe = _diffusers_pipeline(model, adapter)
    image = _image(0)
    embedding = adapter.embed(image)
    assert tuple(embedding.shape) == adapter.embedding_shape == EMBEDDING_SHAPES[adapter.variant]
    assert embedding.dtype == model.dtype and embedding.device == model.device
    (theirs,) = pipe.prepare_ip_adapter_image_embeds(adapter.preprocess(image), None, model.device, 1, False)
    assert theirs.shape == (1, 1, *adapter.embedding_shape)
    assert torch.allclose(embedding, theirs[0, 0], atol=1e-6)
    mine = adapter.unet_kwargs(embedding[None], [1.0])["image_embeds"]
    assert len(mine) == 1 and torch.allclose(mine[0], theirs, atol=1e-6)


@pytest.mark.parametrize("scale", [0.5, 1.0])
def test_uniform_scale_equals_diffusers_scalar_scale(loaded, plain_model, scale):
    model, adapter = loaded
    embeds = torch.stack([adapter.embed(_image(1)), adapter.embed(_image(2))])
    latents, timesteps, hidden = _inputs(model, 2)
    pipe = _diffusers_pipeline(model, adapter)
    pipe.set_ip_adapter_scale(scale)
    theirs = model.unet(latents, timesteps, encoder_hidden_states=hidden, added_cond_kwargs={"image_embeds": [embeds[:, None]]}).sample
    mine = _run(model, adapter, embeds, torch.full((2,), scale))
    assert torch.allclose(mine, theirs, atol=1e-5)
    assert not torch.allclose(mine, plain_model.predict_noise(latents, timesteps, hidden), atol=1e-3)  # it does steer
    assert all(p.scale == [0.0] for p in model.unet.attn_processors.values() if hasattr(p, "scale"))  # off again after the call


def test_each_row_gets_its_own_scale(loaded, plain_model):
    model, adapter = loaded
    embeds = torch.stack([adapter.embed(_image(k)) for k in range(3)])  # row 0 has an image but scale 0
    scales = torch.tensor([0.0, 0.5, 1.0])
    batched = _run(model, adapter, embeds, scales)
    for row in range(3):
        alone = _run(model, adapter, embeds[row : row + 1], scales[row : row + 1], rows=[row])
        assert torch.allclose(batched[row : row + 1], alone, atol=1e-5), row
    latents, timesteps, hidden = _inputs(plain_model, 3)
    plain = plain_model.predict_noise(latents, timesteps, hidden)
    assert torch.equal(batched[0], plain[0])  # scale 0: exactly the UNet without the adapter (same batch)
    assert not torch.allclose(batched[1], plain[1], atol=1e-3)
    assert not torch.allclose(batched[1], batched[2], atol=1e-3)


def test_all_zero_scales_skip_the_adapter_and_equal_the_plain_unet(loaded, plain_model):
    model, adapter = loaded
    calls = []
    handles = [m.register_forward_hook(lambda *_: calls.append(1)) for m in model.unet.modules() if isinstance(m, RowScaledLinear)]
    assert handles, "every to_v_ip is wrapped"
    embeds = torch.stack([adapter.embed(_image(0)), adapter.zero_embedding(), adapter.embed(_image(1))])
    out = _run(model, adapter, embeds, [0.0, 0.0, 0.0])
    assert not calls  # diffusers skipped the adapter's attention
    latents, timesteps, hidden = _inputs(plain_model, 3)
    assert torch.equal(out, plain_model.predict_noise(latents, timesteps, hidden))
    _run(model, adapter, embeds, [0.0, 1.0, 0.0])
    assert calls
    for handle in handles:
        handle.remove()


def test_sdxl_shaped_unet_takes_image_embeds_beside_text_time():
    model, plain = tiny_sdxl_model(seed=0), tiny_sdxl_model(seed=0)
    adapter = load_ip_adapter(model, "tiny", variant="plus")
    embeds = torch.stack([adapter.zero_embedding(), adapter.embed(_image(0)), adapter.embed(_image(1))])
    scales = torch.tensor([0.0, 0.7, 1.0])
    batched = _run(model, adapter, embeds, scales)
    latents, timesteps, hidden = _inputs(plain, 3)
    reference = plain.predict_noise(latents, timesteps, hidden, _sdxl_cond(plain, 3))
    assert torch.equal(batched[0], reference[0])
    assert not torch.allclose(batched[2], reference[2], atol=1e-3)
    for processor in (p for p in model.unet.attn_processors.values() if hasattr(p, "scale")):
        processor.scale = [1.0]  # diffusers' scalar path at scale 1 for the last row
    cond = {**_sdxl_cond(model, 1), "image_embeds": [embeds[2:, None]]}
    theirs = model.unet(latents[2:], timesteps[2:], encoder_hidden_states=hidden[2:], added_cond_kwargs=cond).sample
    assert torch.allclose(batched[2:], theirs, atol=1e-5)


# ---- embeddings -----------------------------------------------------------------------------


def test_embedding_is_memoised_by_content(loaded):
    _, adapter = loaded
    calls = []
    adapter.image_encoder.register_forward_hook(lambda *_: calls.append(1))
    image = _image(5)
    first = adapter.embed(image)
    assert adapter.embed(image) is first and adapter.embed(image.clone()) is first and len(calls) == 1
    assert adapter.embed(image.numpy()) is first  # numpy frames with the same pixels too
    assert not torch.equal(adapter.embed(_image(6)), first) and len(calls) == 2
    adapter.embed(image.reshape(96, 32, 3))  # same bytes, another image
    assert len(calls) == 3
    other = _image(7)
    threads = [threading.Thread(target=adapter.embed, args=(other,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 4


def test_preprocessing_matches_clip_image_processor(loaded):
    _, adapter = loaded
    size = TINY_ENCODER["image_size"]
    processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    coarse = torch.rand(1, 3, 6, 8, generator=torch.Generator().manual_seed(0))
    for height, width in ((120, 160), (90, 40), (20, 24)):  # wide, tall, smaller than the encoder's input
        smooth = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear")[0].permute(1, 2, 0)
        image = smooth.mul(255).round().to(torch.uint8)
        theirs = processor(image.numpy(), return_tensors="pt").pixel_values
        mine = adapter.preprocess(image)
        assert mine.shape == theirs.shape == (1, 3, size, size)
        assert (mine - theirs).abs().max() < 0.05  # PIL vs torch bicubic: within ~1/255 before normalisation


def test_zero_embedding_has_the_row_shape(loaded):
    model, adapter = loaded
    zero = adapter.zero_embedding()
    assert tuple(zero.shape) == adapter.embedding_shape and not zero.any() and zero.dtype == model.dtype


@pytest.mark.parametrize(
    "image, words",
    [
        (torch.rand(32, 32, 3), "uint8"),
        (torch.zeros(32, 32, dtype=torch.uint8), "(H, W, 3)"),
        (torch.zeros(32, 32, 4, dtype=torch.uint8), "(H, W, 3)"),
        (torch.zeros(3, 32, 32, dtype=torch.uint8), "(3, 32, 32)"),
        (torch.zeros(0, 32, 3, dtype=torch.uint8), "empty"),
        ([[1, 2, 3]], "list"),
    ],
)
def test_a_non_image_is_an_input_error(image, words):
    model = build_tiny_image_model(seed=0)
    adapter = load_ip_adapter(model, "tiny")
    with pytest.raises(InputError, match="IP-Adapter image") as error:
        adapter.embed(image)
    assert words in str(error.value)


def test_bad_batches_and_nested_calls_are_refused(loaded):
    model, adapter = loaded
    embeds = torch.stack([adapter.zero_embedding()] * 2)
    with pytest.raises(InputError, match="2 embeddings but 3 scales"):
        adapter.unet_kwargs(embeds, [0.0, 1.0, 1.0])
    with pytest.raises(InputError, match="rows, "):
        adapter.unet_kwargs(embeds[:, :1] if adapter.variant == "plain" else embeds[..., :3], [0.0, 1.0])
    with pytest.raises(InputError, match="finite"):
        adapter.unet_kwargs(embeds, [float("nan"), 1.0])
    with adapter.row_scales([1.0, 1.0]):
        with pytest.raises(RuntimeError, match="one call at a time"):
            with adapter.row_scales([1.0, 1.0]):
                pass
    latents, timesteps, hidden = _inputs(model, 2)
    with pytest.raises(InputError, match="set for 3 rows"):
        with adapter.row_scales([1.0, 1.0, 0.5]):
            model.predict_noise(latents, timesteps, hidden, adapter.unet_kwargs(embeds, [1.0, 1.0]))


# ---- weights and loading --------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_tiny_adapter_is_deterministic(variant):
    unet = build_tiny_image_model(seed=0).unet
    first, again = tiny_ip_adapter_state_dict(unet, variant, seed=0), tiny_ip_adapter_state_dict(unet, variant, seed=0)
    other = tiny_ip_adapter_state_dict(unet, variant, seed=1)
    for group in ("image_proj", "ip_adapter"):
        assert first[group].keys() == again[group].keys() == other[group].keys()
        assert all(torch.equal(first[group][k], again[group][k]) for k in first[group])
    assert not all(torch.equal(first["ip_adapter"][k], other["ip_adapter"][k]) for k in first["ip_adapter"])
    assert same_weights(tiny_image_encoder(0), tiny_image_encoder(0))
    models = [build_tiny_image_model(seed=0) for _ in range(2)]
    adapters = [load_ip_adapter(m, "tiny", variant=variant) for m in models]
    assert same_weights(models[0].unet, models[1].unet)
    outs = [_run(m, a, torch.stack([a.embed(_image(3))]), [0.8]) for m, a in zip(models, adapters)]
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("variant", VARIANTS)
def test_published_file_loads_like_the_built_in_one(tmp_path, variant):
    path = save_tiny_ip_adapter(build_tiny_image_model(seed=0).unet, tmp_path, variant=variant)
    assert {k.split(".")[0] for k in load_file(str(path))} == {"image_proj", "ip_adapter"}
    from_file, built_in = build_tiny_image_model(seed=0), build_tiny_image_model(seed=0)
    adapter = load_ip_adapter(from_file, str(path))  # variant read from the keys, encoder found beside the file
    reference = load_ip_adapter(built_in, "tiny", variant=variant)
    assert adapter.variant == variant and adapter.embedding_shape == reference.embedding_shape
    assert same_weights(from_file.unet, built_in.unet)
    image = _image(4)
    assert torch.equal(adapter.embed(image), reference.embed(image))
    embeds = torch.stack([adapter.embed(image), adapter.zero_embedding()])
    assert torch.equal(_run(from_file, adapter, embeds, [0.6, 0.0]), _run(built_in, reference, embeds, [0.6, 0.0]))


def test_nested_bin_file_with_an_explicit_encoder(tmp_path):
    unet = build_tiny_image_model(seed=0).unet
    torch.save(tiny_ip_adapter_state_dict(unet, "plus"), tmp_path / "adapter.bin")
    tiny_image_encoder(0).save_pretrained(tmp_path / "encoders" / "clip")
    model = build_tiny_image_model(seed=0)
    adapter = load_ip_adapter(model, str(tmp_path / "adapter.bin"), image_encoder=str(tmp_path / "encoders" / "clip"))
    assert adapter.variant == "plus" and adapter.num_tokens == 4


def test_hub_file_loads_from_the_cache_offline(tmp_path, monkeypatch):
    folder = tmp_path / "repo"
    save_tiny_ip_adapter(build_tiny_image_model(seed=0).unet, folder / "models")
    cache = use_hub_cache(monkeypatch, tmp_path / "hub")
    add_to_hub_cache(cache, "someone/tiny-ip-adapter", folder)
    model = build_tiny_image_model(seed=0)
    adapter = load_ip_adapter(model, "someone/tiny-ip-adapter/models/ip-adapter_tiny.safetensors")
    assert adapter.variant == "plain"
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE") as error:
        load_ip_adapter(build_tiny_image_model(seed=0), "someone/not-cached/models/ip-adapter_sd15.safetensors")
    assert "hf download someone/not-cached" in str(error.value)


def _attention_state(model: ImageModel):
    return {name: p for name, p in model.unet.attn_processors.items()}, model.unet.encoder_hid_proj, model.unet.config.encoder_hid_dim_type


def test_adapter_for_another_cross_attention_dim_is_refused_before_the_unet_changes(tmp_path):
    path = save_tiny_ip_adapter(build_tiny_image_model(seed=0).unet, tmp_path, cross_attention_dim=64)
    model = build_tiny_image_model(seed=0)
    before = _attention_state(model)
    with pytest.raises(ConfigError, match="cross-attention dim 64.*cross-attention dim 32"):
        load_ip_adapter(model, str(path))
    after = _attention_state(model)
    assert after[1:] == before[1:] and after[0].keys() == before[0].keys()
    assert all(after[0][k] is before[0][k] for k in before[0])
    assert same_weights(model.unet, build_tiny_image_model(seed=0).unet)
    load_ip_adapter(model, "tiny")  # the UNet is still clean


def test_encoder_and_variant_mismatches_are_config_errors(tmp_path):
    path = save_tiny_ip_adapter(build_tiny_image_model(seed=0).unet, tmp_path)
    CLIPVisionModelWithProjection(CLIPVisionConfig(**{**TINY_ENCODER, "projection_dim": 16})).save_pretrained(tmp_path / "narrow")
    model = build_tiny_image_model(seed=0)
    before = _attention_state(model)
    with pytest.raises(ConfigError, match="32-wide image features.*projection_dim 16"):
        load_ip_adapter(model, str(path), image_encoder=str(tmp_path / "narrow"))
    with pytest.raises(ConfigError, match="is a plain adapter, not plus"):
        load_ip_adapter(model, str(path), variant="plus")
    with pytest.raises(ConfigError, match="variant must be one of"):
        load_ip_adapter(model, "tiny", variant="faceid")
    assert _attention_state(model)[1:] == before[1:]
    load_ip_adapter(model, "tiny")
    with pytest.raises(ConfigError, match="already has an IP-Adapter"):
        load_ip_adapter(model, "tiny")


def test_missing_files_are_model_load_errors(tmp_path):
    model = build_tiny_image_model(seed=0)
    missing = tmp_path / "nowhere" / "ip-adapter_sd15.safetensors"
    with pytest.raises(ModelLoadError, match="no such file") as error:
        load_ip_adapter(model, str(missing))
    assert str(missing) in str(error.value)
    lonely = tmp_path / "lonely"
    path = save_tiny_ip_adapter(model.unet, lonely)
    import shutil  # noqa: PLC0415

    shutil.rmtree(lonely / "image_encoder")
    with pytest.raises(ModelLoadError, match="image_encoder="):
        load_ip_adapter(model, str(path))
    (tmp_path / "not-an-adapter.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelLoadError, match="could not read"):
        load_ip_adapter(model, str(tmp_path / "not-an-adapter.safetensors"))
    assert model.unet.encoder_hid_proj is None


def test_row_scaled_layers_keep_the_state_dict_names(loaded):
    model, _ = loaded
    keys = [k for k in model.unet.state_dict() if "to_v_ip" in k]
    assert keys and all(k.endswith("to_v_ip.0.weight") for k in keys)
    assert np.all([isinstance(m, torch.nn.Linear) for m in model.unet.modules() if isinstance(m, RowScaledLinear)])
