"""Hub ids and presets: the local Hugging Face cache first, a fast, helpful failure when offline."""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest

from streamgen.config import ModelSpec
from streamgen.errors import ModelLoadError
from streamgen.models import load_image_model
from streamgen.models.loading import hub

from .builders import add_to_hub_cache, save_diffusers_dir, save_single_file, save_tiny_lora, same_weights, stream_outputs


@pytest.fixture(autouse=True)
def network_calls(monkeypatch):
    """Record (and refuse) any attempt to open a connection or ask the hub."""
    calls: list[str] = []

    def refuse(name):
        def call(*args, **kwargs):
            calls.append(name)
            raise OSError(f"test: no network ({name})")

        return call

    monkeypatch.setattr(socket.socket, "connect", refuse("socket.connect"))
    monkeypatch.setattr(socket, "create_connection", refuse("socket.create_connection"))
    monkeypatch.setattr(socket, "getaddrinfo", refuse("socket.getaddrinfo"))
    return calls


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    from .builders import use_hub_cache

    return use_hub_cache(monkeypatch, tmp_path / "hf" / "hub")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tiny_model):
    return save_diffusers_dir(tiny_model, tmp_path_factory.mktemp("tiny-diffusers"))


def _load(source, **spec):
    return load_image_model(ModelSpec(source=source, device="cpu", **spec))


@pytest.mark.parametrize(
    ("source", "names"),
    [
        ("sd-turbo", ["preset 'sd-turbo'", "stabilityai/sd-turbo", "`hf download stabilityai/sd-turbo --include", "`hf download madebyollin/taesd`"]),
        ("sdxl-turbo", ["preset 'sdxl-turbo'", "`hf download stabilityai/sdxl-turbo --include", "`hf download madebyollin/taesdxl`"]),
        ("sd15-lcm", ["preset 'sd15-lcm': model 'stable-diffusion-v1-5/stable-diffusion-v1-5' is not in the local", "`hf download stable-diffusion-v1-5/stable-diffusion-v1-5 --include", "`hf download latent-consistency/lcm-lora-sdv1-5`", "`hf download madebyollin/taesd`"]),
        ("someone/some-model", ["model 'someone/some-model' is not in the local Hugging Face cache", "`hf download someone/some-model --include"]),
        ("someone/some-model/model.safetensors", ["checkpoint someone/some-model/model.safetensors is not in the local", '`hf download someone/some-model --include "model.safetensors"`']),
    ],
)
def test_missing_weights_offline_fail_fast_without_touching_the_network(source, names, cache, network_calls, monkeypatch):
    def no_hub(*args, **kwargs):
        raise AssertionError("asked the hub although HF_HUB_OFFLINE is set")

    monkeypatch.setattr(hub, "list_repo_files", no_hub)
    monkeypatch.setattr(hub, "_download", no_hub)
    started = time.monotonic()
    with pytest.raises(ModelLoadError) as caught:
        _load(source)
    assert time.monotonic() - started < 5  # guard against huggingface_hub's retry loop (~30 s)
    message = str(caught.value)
    assert "HF_HUB_OFFLINE is set, so streamgen did not try the network" in message
    for name in names:
        assert name in message
    assert network_calls == []


def test_full_vae_download_hint_includes_the_vae_folder(cache):
    with pytest.raises(ModelLoadError, match=r'hf download stabilityai/sdxl-turbo --include .*"vae/\*"'):
        _load("sdxl-turbo", vae="full")


def test_unreachable_hub_is_one_quick_clear_error(cache, network_calls, monkeypatch):
    from huggingface_hub import HfApi, constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    asked: list[tuple] = []

    def model_info(self, repo, timeout=None, **kwargs):
        asked.append((repo, timeout))
        raise ConnectionError("connection refused")

    monkeypatch.setattr(HfApi, "model_info", model_info)
    with pytest.raises(ModelLoadError) as caught:
        _load("someone/some-model")
    message = str(caught.value)
    assert "could not be reached (ConnectionError: connection refused)" in message
    assert "`hf download someone/some-model --include" in message and "Set HF_HUB_OFFLINE=1" in message
    assert asked == [("someone/some-model", hub.HUB_CHECK_TIMEOUT_S)]  # asked once, with a short timeout
    assert network_calls == []


def test_cached_hub_id_loads_offline(cache, tiny_dir, tiny_model, network_calls):
    add_to_hub_cache(cache, "someone/tiny-model", tiny_dir)
    add_to_hub_cache(cache, "madebyollin/taesd", tiny_dir / "vae")
    model = _load("someone/tiny-model")
    assert model.name == "someone/tiny-model"
    for mine, theirs in [(model.unet, tiny_model.unet), (model.text_encoders[0], tiny_model.text_encoders[0]), (model.vae, tiny_model.vae)]:
        assert same_weights(mine, theirs)
    for mine, theirs in zip(stream_outputs(model, frames=1), stream_outputs(tiny_model, frames=1)):
        assert np.array_equal(mine, theirs)
    assert network_calls == []


def test_cached_preset_loads_offline_with_the_presets_traits(cache, tiny_dir, tiny_model, network_calls):
    add_to_hub_cache(cache, "stabilityai/sd-turbo", tiny_dir)
    add_to_hub_cache(cache, "madebyollin/taesd", tiny_dir / "vae")
    model = _load("sd-turbo")
    assert model.name == "sd-turbo" and model.numerics.x0_formula == "direct"
    assert model.default_size == (512, 512) and model.default_params["num_inference_steps"] == 1
    assert same_weights(model.unet, tiny_model.unet) and same_weights(model.vae, tiny_model.vae)
    assert network_calls == []


def test_cached_preset_with_its_lora_loads_offline(cache, tiny_dir, tiny_model, tmp_path):
    lora = save_tiny_lora(tiny_model, tmp_path / "lcm-lora", text_encoder=False)
    add_to_hub_cache(cache, "stable-diffusion-v1-5/stable-diffusion-v1-5", tiny_dir)
    add_to_hub_cache(cache, "latent-consistency/lcm-lora-sdv1-5", lora.parent)
    add_to_hub_cache(cache, "madebyollin/taesd", tiny_dir / "vae")
    preset = _load("sd15-lcm")
    by_hand = _load(str(tiny_dir), lora={str(lora): 1.0})
    assert preset.name == "sd15-lcm" and preset.numerics.x0_formula == "lcm"
    assert same_weights(preset.unet, by_hand.unet) and not same_weights(preset.unet, tiny_model.unet)


def test_partly_cached_snapshot_names_what_is_missing(cache, tiny_dir):
    snapshot = add_to_hub_cache(cache, "someone/tiny-model", tiny_dir)
    for weights in (snapshot / "text_encoder").glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(ModelLoadError, match=r"'someone/tiny-model' is only partly cached \(missing text_encoder weights\).*`hf download someone/tiny-model"):
        _load("someone/tiny-model")


def test_cached_checkpoint_file_of_a_hub_repo_loads_offline(cache, tiny_model, tmp_path):
    save_single_file(tiny_model, tmp_path / "repo", name="tiny.safetensors")
    add_to_hub_cache(cache, "someone/checkpoints", tmp_path / "repo")
    model = _load("someone/checkpoints/tiny.safetensors", vae=str(tmp_path / "repo" / "reference" / "vae"))
    assert same_weights(model.unet, tiny_model.unet) and same_weights(model.text_encoders[0], tiny_model.text_encoders[0])


def test_cached_lora_hub_id_loads_offline(cache, tiny_model, tmp_path):
    lora = save_tiny_lora(tiny_model, tmp_path / "lora")
    add_to_hub_cache(cache, "someone/style-lora", lora.parent)
    by_id = _load("tiny", lora={"someone/style-lora": 1.0})
    by_path = _load("tiny", lora={str(lora): 1.0})
    assert same_weights(by_id.unet, by_path.unet) and same_weights(by_id.text_encoders[0], by_path.text_encoders[0])
    with pytest.raises(ModelLoadError, match=r"LoRA 'someone/other-lora' is not in the local Hugging Face cache.*`hf download someone/other-lora"):
        _load("tiny", lora={"someone/other-lora": 1.0})
