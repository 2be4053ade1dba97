"""Loading from a diffusers-layout directory (what `save_pretrained` and `hf download` produce)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import streamgen
from streamgen.config import ModelSpec
from streamgen.errors import ModelLoadError
from streamgen.models import load_image_model
from streamgen.pipeline import ImagePipeline

from .builders import FRAME_SIZE, frame, save_diffusers_dir, tiny_sdxl_model


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _outputs(model, frames=3, **params):
    stream = streamgen.ImageStream(model, width=FRAME_SIZE, height=FRAME_SIZE, prompt="a red fox", seed=3, **params)
    return [stream(frame(k)) for k in range(frames)]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tiny_model):
    return save_diffusers_dir(tiny_model, tmp_path_factory.mktemp("tiny-diffusers"))


def test_saved_tiny_model_loads_back_with_identical_weights_and_output(tiny_dir, tiny_model):
    loaded = load_image_model(ModelSpec(source=str(tiny_dir), device="cpu"))
    assert not loaded.is_sdxl and len(loaded.text_encoders) == 1
    assert type(loaded.vae).__name__ == "AutoencoderTiny"  # its own tiny VAE, no TAESD download
    for mine, theirs in [(loaded.unet, tiny_model.unet), (loaded.vae, tiny_model.vae), (loaded.text_encoders[0], tiny_model.text_encoders[0])]:
        assert _same_weights(mine, theirs)
    assert loaded.default_size == tiny_model.default_size
    assert loaded.numerics.x0_formula == "lcm" and loaded.numerics.prediction_type == "epsilon"
    assert torch.equal(loaded.numerics.alphas_cumprod, tiny_model.numerics.alphas_cumprod)
    for mine, theirs in zip(_outputs(loaded), _outputs(tiny_model)):
        assert np.array_equal(mine, theirs)


def test_scheduler_config_sets_the_numerics(tmp_path, tiny_model):
    folder = save_diffusers_dir(tiny_model, tmp_path / "m")
    config = folder / "scheduler" / "scheduler_config.json"
    config.write_text(config.read_text().replace('"epsilon"', '"v_prediction"').replace('"scaled_linear"', '"linear"'))
    loaded = load_image_model(ModelSpec(source=str(folder), device="cpu"))
    assert loaded.numerics.prediction_type == "v_prediction"
    betas = torch.linspace(0.00085, 0.012, 1000, dtype=torch.float64)
    assert torch.allclose(loaded.numerics.alphas_cumprod, torch.cumprod(1 - betas, 0).float())


def test_half_precision_load_casts_every_component(tiny_dir):
    loaded = load_image_model(ModelSpec(source=str(tiny_dir), device="cpu", dtype="bfloat16"))
    modules = [loaded.unet, loaded.vae, *loaded.text_encoders]
    assert all(p.dtype == torch.bfloat16 for m in modules for p in m.parameters())


def test_sdxl_layout_is_detected_and_steps(tmp_path):
    reference = tiny_sdxl_model()
    folder = save_diffusers_dir(reference, tmp_path / "sdxl")
    loaded = load_image_model(ModelSpec(source=str(folder), device="cpu"))
    assert loaded.is_sdxl
    assert [type(e).__name__ for e in loaded.text_encoders] == ["CLIPTextModel", "CLIPTextModelWithProjection"]
    assert len(loaded.tokenizers) == 2
    embedding = loaded.encode_prompt("a lighthouse")
    assert embedding.hidden.shape[-1] == 32 and embedding.pooled is not None and embedding.pooled.shape == (1, 16)
    pipeline = ImagePipeline(loaded)
    state = pipeline.create_state(streamgen.StreamConfig(width=FRAME_SIZE, height=FRAME_SIZE), {"prompt": "a lighthouse"})
    out = pipeline.step([state], [torch.from_numpy(frame())[None]])[0]
    assert out.frames.shape == (1, FRAME_SIZE, FRAME_SIZE, 3)
    for mine, theirs in zip(_outputs(loaded), _outputs(reference)):
        assert np.array_equal(mine, theirs)


def test_incomplete_directory_names_what_is_missing(tmp_path, tiny_model):
    folder = save_diffusers_dir(tiny_model, tmp_path / "m")
    for weights in (folder / "text_encoder").glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(ModelLoadError, match=r"missing text_encoder weights"):
        load_image_model(ModelSpec(source=str(folder), device="cpu"))


def test_full_vae_request_without_a_vae_folder_is_an_error(tmp_path, tiny_model):
    folder = save_diffusers_dir(tiny_model, tmp_path / "m")
    for path in sorted((folder / "vae").iterdir()):
        path.unlink()
    (folder / "vae").rmdir()
    with pytest.raises(ModelLoadError, match=r"missing vae/config.json"):
        load_image_model(ModelSpec(source=str(folder), device="cpu", vae="full"))
