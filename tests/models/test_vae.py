"""Choosing the VAE: ``vae="tiny"`` (default), ``"full"`` (the model's own) or a folder / hub id."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from streamgen.config import ModelSpec
from streamgen.errors import ConfigError, ModelLoadError
from streamgen.models import load_image_model

from .builders import FRAME_SIZE, add_to_hub_cache, save_diffusers_dir, same_weights, stream_outputs, tiny_kl_vae, use_hub_cache


@pytest.fixture(scope="module")
def both_vaes(tmp_path_factory, tiny_model):
    """A model folder whose vae/ is an AutoencoderKL, and the tiny model's AutoencoderTiny in its own folder."""
    root = tmp_path_factory.mktemp("vaes")
    folder = save_diffusers_dir(tiny_model, root / "model")
    shutil.move(folder / "vae", root / "taesd")
    tiny_kl_vae().save_pretrained(folder / "vae")
    return folder, root / "taesd"


@pytest.fixture(autouse=True)
def empty_hub_cache(tmp_path, monkeypatch):
    return use_hub_cache(monkeypatch, tmp_path / "hf" / "hub")


def _load(folder, **spec):
    return load_image_model(ModelSpec(source=str(folder), device="cpu", **spec))


def test_full_vae_is_the_models_own_autoencoder_kl(both_vaes):
    folder, _ = both_vaes
    model = _load(folder, vae="full")
    assert type(model.vae).__name__ == "AutoencoderKL" and same_weights(model.vae, tiny_kl_vae())
    assert model.vae_scale_factor == 8 and model.vae_scaling == (0.18215, 0.0)
    [out] = stream_outputs(model, frames=1)
    assert out.shape == (FRAME_SIZE, FRAME_SIZE, 3)


def test_vae_folder_replaces_the_models_vae(both_vaes, tiny_model):
    folder, taesd = both_vaes
    model = _load(folder, vae=str(taesd))
    assert type(model.vae).__name__ == "AutoencoderTiny" and same_weights(model.vae, tiny_model.vae)
    # With the tiny model's own TAESD back, the loaded model streams exactly like the original.
    for mine, theirs in zip(stream_outputs(model, frames=1), stream_outputs(tiny_model, frames=1)):
        assert np.array_equal(mine, theirs)
    # A pipeline folder works too: its vae/ is used.
    assert type(_load(folder, vae=str(folder)).vae).__name__ == "AutoencoderKL"


def test_tiny_vae_comes_from_the_hub_cache(both_vaes, tiny_model, empty_hub_cache):
    folder, taesd = both_vaes
    add_to_hub_cache(empty_hub_cache, "madebyollin/taesd", taesd)
    model = _load(folder)  # vae="tiny" is the default: the model's KL is not used
    assert type(model.vae).__name__ == "AutoencoderTiny" and same_weights(model.vae, tiny_model.vae)


def test_tiny_vae_that_is_not_cached_says_what_to_do(both_vaes):
    folder, _ = both_vaes
    with pytest.raises(ModelLoadError) as caught:
        _load(folder, vae="tiny")
    message = str(caught.value)
    assert "vae='tiny' (the default) uses madebyollin/taesd" in message
    assert "HF_HUB_OFFLINE is set" in message and "`hf download madebyollin/taesd" in message
    assert "vae='full'" in message


def test_a_models_own_tiny_vae_is_used_for_tiny(tmp_path, tiny_model):
    folder = save_diffusers_dir(tiny_model, tmp_path / "m")  # vae/ holds an AutoencoderTiny
    model = _load(folder, vae="tiny")
    assert type(model.vae).__name__ == "AutoencoderTiny" and same_weights(model.vae, tiny_model.vae)


def test_vae_errors_are_clear(tmp_path, both_vaes):
    folder, _ = both_vaes
    with pytest.raises(ModelLoadError, match=r"VAE '/nonexistent/vae': no such directory"):
        _load(folder, vae="/nonexistent/vae")
    with pytest.raises(ModelLoadError, match=r"VAE folder .* has no config.json"):
        _load(folder, vae=str(tmp_path))
    with pytest.raises(ModelLoadError, match=r"VAE 'someone/my-vae' is not in the local Hugging Face cache.*`hf download someone/my-vae"):
        _load(folder, vae="someone/my-vae")
    (tmp_path / "config.json").write_text('{"_class_name": "VQModel"}')
    with pytest.raises(ModelLoadError, match=r"VAE class 'VQModel' is not supported; streamgen loads AutoencoderKL, AutoencoderTiny"):
        _load(folder, vae=str(tmp_path))
    for bad in ("", None, 3):
        with pytest.raises(ConfigError, match=r"vae must be 'tiny', 'full' or a VAE folder / hub id"):
            _load(folder, vae=bad)
