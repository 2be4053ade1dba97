"""Video presets and load_video_pipeline: options, offline failures, the load path of a Wan folder."""

from __future__ import annotations

import time

import pytest
import torch

from streamgen.errors import ConfigError, ModelLoadError
from streamgen.models.loading.video_presets import VIDEO_PRESETS, load_wan_folder, missing_wan_parts
from streamgen.pipeline.video_loading import load_video_pipeline
from streamgen.pipeline.video import VideoPipeline
from streamgen.stream import is_video_model, load_stream_pipeline


def test_presets_are_recognised_as_video_models():
    assert {"tiny-video", "wan-causal-1.3b", "wan-causal-14b"} <= set(VIDEO_PRESETS)
    assert is_video_model("tiny-video") and not is_video_model("tiny")
    pipeline = load_stream_pipeline("tiny-video", weights="pretrained", device="cpu", dtype="auto")
    assert isinstance(pipeline, VideoPipeline) and is_video_model(pipeline)
    assert load_video_pipeline(pipeline) is pipeline


def test_tiny_video_is_deterministic_for_a_seed():
    a = load_video_pipeline("tiny-video", device="cpu", seed=3).model
    b = load_video_pipeline("tiny-video", device="cpu", seed=3).model
    c = load_video_pipeline("tiny-video", device="cpu", seed=4).model
    pa, pb, pc = (next(m.transformer.parameters()) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"weights": "random"}, "weights must be one of"),
        ({"lora": "x"}, "lora must map"),
        ({"frobnicate": 1}, "unknown model option"),
        ({"dtype": "int3"}, "unknown dtype"),
        ({"checkpoint": "/nonexistent/model.pt"}, "tiny-video is built in code"),
    ],
)
def test_bad_spec_raises_config_error(spec, match):
    with pytest.raises(ConfigError, match=match):
        load_video_pipeline("tiny-video", device="cpu", **spec)


def test_missing_checkpoint_file_is_a_model_load_error():
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_video_pipeline("wan-causal-1.3b", device="cpu", checkpoint="/nonexistent/model.pt")


def test_missing_weights_offline_fail_fast_with_advice(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    started = time.perf_counter()
    with pytest.raises(ModelLoadError) as error:
        load_video_pipeline("wan-causal-1.3b", device="cpu")
    assert time.perf_counter() - started < 5
    message = str(error.value)
    assert "Wan-AI/Wan2.1-T2V-1.3B-Diffusers" in message and "HF_HUB_OFFLINE" in message
    assert "hf download" in message and "weights='dummy'" in message


def test_wan_folder_load_path(tmp_path):
    """Save tiny Wan components in the diffusers layout and load them back through the preset code."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from streamgen.models.loading.video_presets import build_tiny_video_model

    model = build_tiny_video_model(seed=0)
    assert missing_wan_parts(tmp_path) == ["transformer/config.json", "vae/config.json", "text_encoder/config.json", "tokenizer/"]
    model.transformer.transformer.save_pretrained(tmp_path / "transformer")
    model.vae.vae.save_pretrained(tmp_path / "vae")
    model.text_encoder.save_pretrained(tmp_path / "text_encoder")
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, "fox": 3}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>").save_pretrained(tmp_path / "tokenizer")
    assert missing_wan_parts(tmp_path) == []
    loaded = load_wan_folder(tmp_path, VIDEO_PRESETS["wan-causal-1.3b"], device=torch.device("cpu"), dtype=torch.float32)
    for a, b in zip(loaded.transformer.parameters(), model.transformer.parameters()):
        assert torch.equal(a, b)
    embeds = loaded.encode_prompt("fox")
    assert embeds.shape == (1, loaded.text_length, model.transformer.text_dim)
    assert torch.count_nonzero(embeds[0, 2:]) == 0  # padding zeroed, as Wan is trained
