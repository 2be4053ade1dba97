"""``weights="dummy"``: a preset's real architecture from the shipped configs, random weights, no download.

Full-size architectures are built on the ``meta`` device (no memory, no
init), where every parameter count can be checked against the published
models; the load path itself runs on scaled-down copies of the shipped
configs so a stream step fits in a CPU test.
"""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch

from streamgen.config import ModelSpec
from streamgen.errors import ModelLoadError
from streamgen.models import IMAGE_PRESETS, load_image_model
from streamgen.models.loading import shipped_configs
from streamgen.models.loading.dummy import build_dummy_components, build_dummy_tiny_vae, dummy_config_dir
from streamgen.models.loading.shipped_configs import component_config, read_json, shipped_config_dir

from .builders import FRAME_SIZE, save_tiny_configs_root, same_weights, stream_outputs

DUMMY_PRESETS = {"sd-turbo": "sd-turbo", "sd15-lcm": "sd15", "sdxl-turbo": "sdxl-turbo"}

# Published parameter counts: UNet, then each text encoder.
REAL_SIZES = {
    "sd-turbo": (865_910_724, [340_387_840]),  # SD 2.1 UNet, OpenCLIP ViT-H text tower (23 layers)
    "sd15": (859_520_964, [123_060_480]),  # SD 1.5 UNet, CLIP ViT-L/14 text
    "sdxl-turbo": (2_567_463_684, [123_060_480, 694_659_840]),  # SDXL UNet, CLIP ViT-L + OpenCLIP bigG
}
SD_KL_VAE_PARAMS = 83_653_863
TAESD_PARAMS = 2_445_063


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Dummy weights must never reach for the network."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture()
def tiny_configs(tmp_path_factory, monkeypatch):
    root = save_tiny_configs_root(tmp_path_factory.mktemp("configs"))
    monkeypatch.setattr(shipped_configs, "CONFIGS_ROOT", root)
    return root


def test_every_preset_with_a_dummy_config_resolves_its_shipped_folder():
    with_dummy = {name for name, preset in IMAGE_PRESETS.items() if preset.dummy_config}
    assert with_dummy == set(DUMMY_PRESETS)
    for name, config in DUMMY_PRESETS.items():
        assert IMAGE_PRESETS[name].dummy_config == config
        folder = dummy_config_dir(name, config)
        assert folder == shipped_config_dir(config)
        for part in ("unet", "text_encoder", "vae"):
            assert (folder / part / "config.json").is_file()
        assert (folder / "scheduler" / "scheduler_config.json").is_file()


@pytest.mark.parametrize("config", sorted(REAL_SIZES))
def test_full_size_architectures_match_the_real_models(config):
    components = build_dummy_components(shipped_config_dir(config), device=torch.device("meta"), dtype=torch.float16, with_vae=True)
    unet_params, encoder_params = REAL_SIZES[config]
    assert type(components.unet).__name__ == "UNet2DConditionModel"
    assert _count(components.unet) == unet_params
    assert [_count(e) for e in components.text_encoders] == encoder_params
    expected_encoders = ["CLIPTextModel", "CLIPTextModelWithProjection"][: len(encoder_params)]
    assert [type(e).__name__ for e in components.text_encoders] == expected_encoders
    assert type(components.vae).__name__ == "AutoencoderKL" and _count(components.vae) == SD_KL_VAE_PARAMS
    assert len(components.tokenizers) == len(encoder_params)
    every = [components.unet, components.vae, *components.text_encoders]
    assert all(p.device.type == "meta" and p.dtype == torch.float16 for m in every for p in m.parameters())
    assert not any(p.requires_grad for m in every for p in m.parameters())


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_full_size_tiny_vaes_are_taesd(family):
    vae = build_dummy_tiny_vae(family, device=torch.device("meta"), dtype=torch.float16)
    assert type(vae).__name__ == "AutoencoderTiny" and _count(vae) == TAESD_PARAMS


def test_shipped_configs_carry_the_real_architectures_key_facts():
    turbo, sd15, xl = (component_config(shipped_config_dir(n), "unet") for n in ("sd-turbo", "sd15", "sdxl-turbo"))
    # SD 2.x: OpenCLIP-H (1024 wide), linear projections, heads of 64 channels.
    assert turbo["cross_attention_dim"] == 1024 and turbo["use_linear_projection"] is True
    assert turbo["attention_head_dim"] == [5, 10, 20, 20] and turbo.get("addition_embed_type") is None
    # SD 1.5: CLIP ViT-L (768 wide), 8 heads, conv projections.
    assert sd15["cross_attention_dim"] == 768 and sd15["attention_head_dim"] == 8 and sd15["use_linear_projection"] is False
    # SDXL: 768 + 1280 = 2048 text features, pooled text + 6 size ids as "text_time" conditioning.
    assert xl["cross_attention_dim"] == 2048 and xl["addition_embed_type"] == "text_time"
    assert xl["transformer_layers_per_block"] == [1, 2, 10] and xl["block_out_channels"] == [320, 640, 1280]
    assert xl["projection_class_embeddings_input_dim"] == 1280 + 6 * xl["addition_time_embed_dim"]
    for unet in (turbo, sd15, xl):
        assert unet["in_channels"] == unet["out_channels"] == 4
    widths = {n: [component_config(shipped_config_dir(n), e)["hidden_size"] for e in enc] for n, enc in
              (("sd-turbo", ["text_encoder"]), ("sd15", ["text_encoder"]), ("sdxl-turbo", ["text_encoder", "text_encoder_2"]))}
    assert widths == {"sd-turbo": [1024], "sd15": [768], "sdxl-turbo": [768, 1280]}
    assert component_config(shipped_config_dir("sdxl-turbo"), "text_encoder_2")["architectures"] == ["CLIPTextModelWithProjection"]
    assert component_config(shipped_config_dir("sd-turbo"), "text_encoder")["num_hidden_layers"] == 23  # SD 2 skips CLIP's last layer
    # VAEs: SD's scaling, SDXL's (which overflows in fp16: force_upcast), TAESD as the tiny one.
    assert component_config(shipped_config_dir("sd15"), "vae")["scaling_factor"] == 0.18215
    assert component_config(shipped_config_dir("sd-turbo"), "vae")["scaling_factor"] == 0.18215
    xl_vae = component_config(shipped_config_dir("sdxl-turbo"), "vae")
    assert xl_vae["scaling_factor"] == 0.13025 and xl_vae["force_upcast"] is True
    for name in ("taesd", "taesdxl"):
        config = read_json(shipped_config_dir(name) / "config.json")
        assert config["_class_name"] == "AutoencoderTiny" and config["latent_channels"] == 4
    for name in ("sd-turbo", "sd15", "sdxl-turbo"):
        assert component_config(shipped_config_dir(name), "scheduler")["prediction_type"] == "epsilon"
        index = read_json(shipped_config_dir(name) / "model_index.json")
        assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert read_json(shipped_config_dir("sdxl-turbo") / "model_index.json")["_class_name"] == "StableDiffusionXLPipeline"


@pytest.mark.parametrize("preset", sorted(DUMMY_PRESETS))
def test_dummy_preset_loads_through_its_configs_and_steps(preset, tiny_configs):
    config_dir = tiny_configs / DUMMY_PRESETS[preset]
    model = load_image_model(ModelSpec(source=preset, weights="dummy", device="cpu", seed=7))
    unet_config = component_config(config_dir, "unet")
    assert model.name == f"{preset}-dummy"
    assert model.is_sdxl == (preset == "sdxl-turbo")
    assert model.unet.config.cross_attention_dim == unet_config["cross_attention_dim"]
    assert list(model.unet.config.block_out_channels) == unet_config["block_out_channels"]
    assert model.unet.config.use_linear_projection == unet_config["use_linear_projection"]
    encoders = [component_config(config_dir, n) for n in ("text_encoder", "text_encoder_2")[: len(model.text_encoders)]]
    assert [type(e).__name__ for e in model.text_encoders] == [c["architectures"][0] for c in encoders]
    assert [e.config.hidden_size for e in model.text_encoders] == [c["hidden_size"] for c in encoders]
    assert type(model.vae).__name__ == "AutoencoderTiny"  # vae="tiny": TAESD(XL) from the shipped config
    assert model.default_size == IMAGE_PRESETS[preset].default_size
    assert model.default_params == IMAGE_PRESETS[preset].default_params
    assert model.numerics.x0_formula == IMAGE_PRESETS[preset].x0_formula
    [out] = stream_outputs(model, frames=1)
    assert out.shape == (FRAME_SIZE, FRAME_SIZE, 3) and out.dtype == np.uint8


def test_dummy_full_vae_is_the_configs_autoencoder_kl(tiny_configs):
    model = load_image_model(ModelSpec(source="sd-turbo", weights="dummy", device="cpu", vae="full"))
    assert type(model.vae).__name__ == "AutoencoderKL"
    assert list(model.vae.config.block_out_channels) == component_config(tiny_configs / "sd-turbo", "vae")["block_out_channels"]
    assert model.vae_scale_factor == 8
    [out] = stream_outputs(model, frames=1)
    assert out.shape == (FRAME_SIZE, FRAME_SIZE, 3)


def test_dummy_weights_depend_only_on_the_seed(tiny_configs):
    first, again, other = (load_image_model(ModelSpec(source=str(tiny_configs / "sd15"), weights="dummy", device="cpu", seed=s)) for s in (1, 1, 2))
    assert same_weights(first.unet, again.unet) and same_weights(first.text_encoders[0], again.text_encoders[0])
    assert same_weights(first.vae, again.vae)
    assert not same_weights(first.unet, other.unet)
    assert first.name == f"{tiny_configs / 'sd15'}-dummy"


def test_dummy_weights_are_built_in_the_requested_dtype(tiny_configs):
    model = load_image_model(ModelSpec(source="sd15-lcm", weights="dummy", device="cpu", dtype="bfloat16"))
    modules = [model.unet, model.vae, *model.text_encoders]
    assert all(p.dtype == torch.bfloat16 for m in modules for p in m.parameters())
    assert torch.get_default_dtype() == torch.float32  # the builder restores the global default


def test_dummy_needs_configs(tmp_path):
    with pytest.raises(ModelLoadError, match=r"weights='dummy' needs a preset with shipped configs.*'someone/some-model' is a hub"):
        load_image_model(ModelSpec(source="someone/some-model", weights="dummy", device="cpu"))
    with pytest.raises(ModelLoadError, match=r"weights='dummy' needs .*unet/config.json"):
        load_image_model(ModelSpec(source=str(tmp_path), weights="dummy", device="cpu"))


def test_dummy_with_a_missing_vae_folder_fails_before_building(monkeypatch):
    def no_build(*args, **kwargs):
        raise AssertionError("the model was built although the VAE path is wrong")

    monkeypatch.setattr("streamgen.models.loading.image_loading.build_dummy_components", no_build)
    with pytest.raises(ModelLoadError, match=r"VAE '/nonexistent/vae': no such directory"):
        load_image_model(ModelSpec(source="sdxl-turbo", weights="dummy", device="cpu", vae="/nonexistent/vae"))
    with pytest.raises(ModelLoadError, match=r"LoRA '/nonexistent/lora.safetensors': no such file"):
        load_image_model(ModelSpec(source="sdxl-turbo", weights="dummy", device="cpu", lora={"/nonexistent/lora.safetensors": 1.0}))
