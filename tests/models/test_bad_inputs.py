"""Malformed model specs fail at once with a message that says what was wrong (and nothing is loaded)."""

from __future__ import annotations

import pytest

from streamgen.config import ModelSpec
from streamgen.errors import ConfigError, ModelLoadError, StreamgenError
from streamgen.models import IMAGE_PRESETS, load_image_model


def _load(source="tiny", **spec):
    return load_image_model(ModelSpec(source=source, **{"device": "cpu", **spec}))


@pytest.fixture(autouse=True)
def nothing_is_loaded(monkeypatch):
    """Every case here must be rejected before any model component is built or read."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded for a malformed spec")

    for name in ("build_tiny_image_model", "_load_components", "build_dummy_components"):
        monkeypatch.setattr(f"streamgen.models.loading.image_loading.{name}", refuse)


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ModelLoadError) as caught:
        _load("sd-trubo")
    message = str(caught.value)
    assert "unknown model 'sd-trubo'" in message
    assert all(name in message for name in IMAGE_PRESETS)


@pytest.mark.parametrize("source", ["./no-such-model", "/no/such/model", "~/no-such-model", "missing.safetensors", "a/b/c"])
def test_nonexistent_path_says_so(source):
    with pytest.raises(ModelLoadError, match=rf"model '{source}': no such file or directory"):
        _load(source)


def test_file_that_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(ModelLoadError, match=r"notes\.txt is a file but not a checkpoint \(expected \.safetensors"):
        _load(str(path))


def test_empty_directory_is_not_a_model(tmp_path, monkeypatch):
    monkeypatch.undo()  # this one reads the folder
    with pytest.raises(ModelLoadError, match=r"is not a complete diffusers model directory \(missing unet/config.json\)"):
        _load(str(tmp_path))


@pytest.mark.parametrize("weights", ["random", "", "Dummy", None])
def test_bad_weights_value(weights):
    with pytest.raises(ConfigError, match=r"weights must be one of pretrained, dummy; got"):
        _load(weights=weights)


@pytest.mark.parametrize("dtype", ["float8", "fp64", "int8", ""])
def test_bad_dtype(dtype):
    with pytest.raises(ConfigError, match=rf"unknown dtype '{dtype}'; use auto, float32, float16 or bfloat16"):
        _load(dtype=dtype)


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "tpu:0", ""])
def test_bad_device(device):
    with pytest.raises(ConfigError, match=rf"unknown device '{device}'; use auto, cpu, cuda or cuda:N"):
        _load(device=device)


def test_cuda_without_cuda(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"device 'cuda' was requested but CUDA is not available"):
        _load(device="cuda")


@pytest.mark.parametrize("lora", [{"style.safetensors": "strong"}, {"style.safetensors": True}, ["style.safetensors"], {3: 1.0}])
def test_bad_lora_mapping(lora):
    with pytest.raises(ConfigError, match=r"lora must map LoRA paths or hub ids to numeric scales"):
        _load(lora=lora)


def test_errors_are_streamgen_errors():
    for spec in ({"source": "sd-trubo"}, {"weights": "x"}, {"dtype": "x"}):
        with pytest.raises(StreamgenError):
            _load(**spec)
