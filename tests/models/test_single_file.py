"""Loading one original-layout (LDM / A1111) ``.safetensors`` checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from streamgen.config import ModelSpec
from streamgen.errors import ModelLoadError
from streamgen.models import load_image_model
from streamgen.models.loading import shipped_configs
from streamgen.models.loading.single_file import CHECKPOINT_FAMILIES, checkpoint_family

from .builders import (
    save_bare_single_file,
    save_single_file,
    save_tiny_configs_root,
    same_weights,
    stream_outputs,
    unet_to_ldm,
)


@pytest.fixture(scope="module")
def tiny_configs_root(tmp_path_factory):
    return save_tiny_configs_root(tmp_path_factory.mktemp("configs"))


def test_checkpoint_with_configs_beside_it_loads_the_same_weights_and_output(tmp_path, tiny_model):
    path = save_single_file(tiny_model, tmp_path)
    tiny_vae_folder = tmp_path / "reference" / "vae"  # a local AutoencoderTiny: no TAESD download
    loaded = load_image_model(ModelSpec(source=str(path), device="cpu", vae=str(tiny_vae_folder)))
    assert same_weights(loaded.unet, tiny_model.unet)
    assert same_weights(loaded.text_encoders[0], tiny_model.text_encoders[0])
    assert same_weights(loaded.vae, tiny_model.vae)
    assert not loaded.is_sdxl and loaded.numerics.prediction_type == "epsilon"
    for mine, theirs in zip(stream_outputs(loaded, frames=1), stream_outputs(tiny_model, frames=1)):
        assert np.array_equal(mine, theirs)


def test_bare_checkpoint_is_converted_with_the_shipped_sd15_configs(tmp_path, monkeypatch, tiny_configs_root):
    # The shipped configs, scaled down to CPU size: the checkpoint has no configs beside it, so
    # its family (SD 1.x from its keys) picks configs/sd15, exactly as for a real A1111 file.
    monkeypatch.setattr(shipped_configs, "CONFIGS_ROOT", tiny_configs_root)
    reference = load_image_model(ModelSpec(source=str(tiny_configs_root / "sd15"), weights="dummy", device="cpu", seed=5))
    reference.vae.save_pretrained(tmp_path / "taesd")
    path = save_bare_single_file(reference, tmp_path / "ckpt")
    assert not (path.parent / "unet").exists()
    loaded = load_image_model(ModelSpec(source=str(path), device="cpu", vae=str(tmp_path / "taesd")))
    assert loaded.unet.config.cross_attention_dim == reference.unet.config.cross_attention_dim
    assert loaded.unet.config.use_linear_projection is False  # the sd15 config, not sd-turbo's
    assert same_weights(loaded.unet, reference.unet)
    assert same_weights(loaded.text_encoders[0], reference.text_encoders[0])
    assert loaded.name == str(path) and loaded.numerics.x0_formula == "lcm"
    for mine, theirs in zip(stream_outputs(loaded, frames=1), stream_outputs(reference, frames=1)):
        assert np.array_equal(mine, theirs)
    # The checkpoint carries no VAE: asking for its own (full) VAE says so instead of inventing one.
    with pytest.raises(ModelLoadError, match=r"model\.safetensors: .*vae"):
        load_image_model(ModelSpec(source=str(path), device="cpu", vae="full"))


def test_checkpoint_families_map_to_shipped_configs():
    assert {k: f.config for k, f in CHECKPOINT_FAMILIES.items()} == {"v1": "sd15", "v2": "sd-turbo", "xl_base": "sdxl-turbo"}
    for family in CHECKPOINT_FAMILIES.values():
        assert (shipped_configs.shipped_config_dir(family.config) / "unet" / "config.json").is_file()
    # diffusers tells the families apart by marker keys; the tensors' values do not matter.
    v2 = {"model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(320, 1024)}
    xl = {"conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias": torch.zeros(1)}
    v1 = {"model.diffusion_model.output_blocks.11.0.skip_connection.weight": torch.zeros(1)}
    assert checkpoint_family(v1, None).config == "sd15"
    assert checkpoint_family(v2, None).config == "sd-turbo"
    assert checkpoint_family(xl, None).config == "sdxl-turbo"
    refiner = {"conditioner.embedders.0.model.transformer.resblocks.9.mlp.c_proj.bias": torch.zeros(1)}
    with pytest.raises(ModelLoadError, match=r"'xl_refiner' checkpoint.*supports Stable Diffusion 1\.x"):
        checkpoint_family(refiner, "refiner.safetensors")


def test_checkpoint_without_text_encoder_weights_is_a_clear_error(tmp_path, tiny_model):
    path = save_single_file(tiny_model, tmp_path)
    save_file(unet_to_ldm(tiny_model.unet), str(path))  # UNet only
    with pytest.raises(ModelLoadError, match=r"tiny\.safetensors: could not convert its text_encoder"):
        load_image_model(ModelSpec(source=str(path), device="cpu", vae=str(tmp_path / "reference" / "vae")))


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match=r"could not read checkpoint .*broken\.safetensors"):
        load_image_model(ModelSpec(source=str(path), device="cpu"))
