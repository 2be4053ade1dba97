"""LoRA adapters: ``lora={path: scale}``, fused into the weights or kept as live adapters."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from streamgen.config import ModelSpec
from streamgen.errors import ModelLoadError
from streamgen.models import load_image_model

from .builders import save_diffusers_dir, save_tiny_lora, same_weights, stream_outputs, tiny_sdxl_model

ATTENTION = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
CLIP_Q = "encoder.layers.0.self_attn.q_proj"


@pytest.fixture(scope="module")
def lora_file(tmp_path_factory, tiny_model):
    return save_tiny_lora(tiny_model, tmp_path_factory.mktemp("lora"))


@pytest.fixture(scope="module")
def no_lora(tiny_model):
    return tiny_model, stream_outputs(tiny_model, frames=1)


def _load(**spec):
    return load_image_model(ModelSpec(source="tiny", device="cpu", **spec))


def _noise(model) -> torch.Tensor:
    """One UNet prediction on fixed inputs, through the text encoder (both carry LoRA layers)."""
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    hidden = model.encode_prompt("a red fox").hidden
    return model.predict_noise(latents, torch.tensor([500]), hidden)


def _lora_delta(lora: dict[str, torch.Tensor], prefix: str, module: str) -> torch.Tensor:
    """up @ down of one layer, whatever the diffusers key style (``lora.up`` / ``lora_linear_layer.up``)."""
    up = next(v for k, v in lora.items() if k.startswith(f"{prefix}.{module}.") and k.endswith("up.weight"))
    down = next(v for k, v in lora.items() if k.startswith(f"{prefix}.{module}.") and k.endswith("down.weight"))
    return up @ down


def test_fused_lora_adds_scale_times_up_down_to_the_weights(lora_file, tiny_model):
    lora = load_file(str(lora_file))
    for scale in (1.0, 0.5):
        model = _load(lora={str(lora_file): scale})
        assert type(model.unet.get_submodule(ATTENTION)).__name__ == "Linear"  # adapters merged and removed
        assert not hasattr(model.unet, "peft_config")
        expected_unet = tiny_model.unet.get_submodule(ATTENTION).weight + scale * _lora_delta(lora, "unet", ATTENTION)
        assert torch.allclose(model.unet.get_submodule(ATTENTION).weight, expected_unet, atol=1e-6)
        expected_clip = tiny_model.text_encoders[0].get_submodule(CLIP_Q).weight + scale * _lora_delta(lora, "text_encoder", CLIP_Q)
        assert torch.allclose(model.text_encoders[0].get_submodule(CLIP_Q).weight, expected_clip, atol=1e-6)


def test_fused_and_unfused_lora_give_the_same_output_unlike_no_lora(lora_file, no_lora):
    base, base_frames = no_lora
    fused, unfused = _load(lora={str(lora_file): 1.0}), _load(lora={str(lora_file): 1.0}, fuse_lora=False)
    assert "lora" in type(unfused.unet.get_submodule(ATTENTION)).__module__  # still a live peft layer
    assert torch.allclose(_noise(fused), _noise(unfused), atol=1e-5)
    assert not torch.allclose(_noise(fused), _noise(base), atol=1e-3)
    fused_frames, unfused_frames = stream_outputs(fused, frames=1), stream_outputs(unfused, frames=1)
    for a, b, c in zip(fused_frames, unfused_frames, base_frames):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
        assert np.abs(a.astype(int) - c.astype(int)).max() > 10


@pytest.mark.parametrize("fuse", [True, False])
def test_scale_zero_is_the_model_without_lora(lora_file, no_lora, fuse):
    base, base_frames = no_lora
    model = _load(lora={str(lora_file): 0.0}, fuse_lora=fuse)
    if fuse:
        assert same_weights(model.unet, base.unet) and same_weights(model.text_encoders[0], base.text_encoders[0])
    assert torch.equal(_noise(model), _noise(base))
    for mine, theirs in zip(stream_outputs(model, frames=1), base_frames):
        assert np.array_equal(mine, theirs)


def test_lora_folder_loads_like_its_file(lora_file):
    by_folder, by_file = _load(lora={str(lora_file.parent): 1.0}), _load(lora={str(lora_file): 1.0})
    assert same_weights(by_folder.unet, by_file.unet)


def test_two_loras_add_up(tmp_path, lora_file, tiny_model):
    other = save_tiny_lora(tiny_model, tmp_path, seed=2, text_encoder=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = _load(lora={str(lora_file): 0.5, str(other): 2.0})
    assert not [w for w in caught if "peft_config" in str(w.message)], "a second LoRA is no cause for a warning"
    expected = (
        tiny_model.unet.get_submodule(ATTENTION).weight
        + 0.5 * _lora_delta(load_file(str(lora_file)), "unet", ATTENTION)
        + 2.0 * _lora_delta(load_file(str(other)), "unet", ATTENTION)
    )
    assert torch.allclose(model.unet.get_submodule(ATTENTION).weight, expected, atol=1e-5)


def test_lora_on_a_local_sdxl_directory(tmp_path):
    reference = tiny_sdxl_model()
    folder = save_diffusers_dir(reference, tmp_path / "sdxl")
    lora = save_tiny_lora(reference, tmp_path / "lora", text_encoder=False)
    module = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"
    model = load_image_model(ModelSpec(source=str(folder), device="cpu", lora={str(lora): 1.0}))
    expected = reference.unet.get_submodule(module).weight + _lora_delta(load_file(str(lora)), "unet", module)
    assert torch.allclose(model.unet.get_submodule(module).weight, expected, atol=1e-6)
    assert same_weights(model.text_encoders[1], reference.text_encoders[1])


def test_missing_lora_is_a_clear_error():
    with pytest.raises(ModelLoadError, match=r"LoRA '/nonexistent/style.safetensors': no such file or directory"):
        _load(lora={"/nonexistent/style.safetensors": 1.0})


def test_folder_without_a_lora_file_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match=r"LoRA .*: no \.safetensors file in"):
        _load(lora={str(tmp_path): 1.0})
    (tmp_path / "a.safetensors").write_bytes(b"")
    (tmp_path / "b.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError, match=r"several \.safetensors files .*a\.safetensors, b\.safetensors.*pass the file's path"):
        _load(lora={str(tmp_path): 1.0})


def test_corrupt_lora_file_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"not safetensors")
    with pytest.raises(ModelLoadError, match=r"could not load LoRA .*broken\.safetensors"):
        _load(lora={str(path): 1.0})


def test_lora_for_another_architecture_is_a_clear_error(tmp_path):
    # The tiny SDXL UNet's attention sits in down block 1, the middle and up block 0; the tiny SD
    # UNet's in down block 0, the middle and up block 1. Only the middle block's 16 weights fit:
    # diffusers merely warns about the other 48, so without streamgen's check this LoRA would
    # load as a near no-op.
    sdxl_lora = save_tiny_lora(tiny_sdxl_model(), tmp_path, text_encoder=False)
    with pytest.raises(ModelLoadError, match=r"LoRA .*does not fit this model: 48 of its 64 UNet weights match no layer.*different base model"):
        _load(lora={str(sdxl_lora): 1.0})


def test_lora_scale_must_be_a_number():
    from streamgen.errors import ConfigError

    with pytest.raises(ConfigError, match=r"lora must map LoRA paths or hub ids to numeric scales"):
        _load(lora={"style.safetensors": "strong"})


def test_lora_with_a_few_stray_weights_loads_and_says_so(tmp_path, lora_file, tiny_model, caplog):
    from safetensors.torch import save_file

    sdxl_lora = load_file(str(save_tiny_lora(tiny_sdxl_model(), tmp_path / "xl", text_encoder=False)))
    stray = {k: v for k, v in sdxl_lora.items() if k.startswith("unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.")}
    assert len(stray) == 2
    save_file({**load_file(str(lora_file)), **stray}, str(tmp_path / "mixed.safetensors"))
    with caplog.at_level("WARNING", logger="streamgen.models.loading.lora"):
        mixed = _load(lora={str(tmp_path / "mixed.safetensors"): 1.0})
    assert any("2 of its 66 UNet weights match no layer" in r.getMessage() for r in caplog.records if r.name == "streamgen.models.loading.lora")
    assert same_weights(mixed.unet, _load(lora={str(lora_file): 1.0}).unet)  # everything that fits is applied
