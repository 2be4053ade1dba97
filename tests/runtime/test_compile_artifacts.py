"""torch.compile's cache artefacts live in the engine cache under the model's key: saved after a warm-up, loaded at install."""

from __future__ import annotations

import logging

import torch

from streamgen.runtime.compile_artifacts import artifacts_key, load_compile_artifacts, save_compile_artifacts
from streamgen.runtime.engine_cache import EngineCache


class _Model:
    """The parts of an image model the artefact key reads (a small real module, compiled for real)."""

    name = "artefact-test"

    def __init__(self, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.unet = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 8))
        self.dtype = torch.float32
        self.device = torch.device("cpu")


def _compile_once(model: _Model) -> None:
    torch._dynamo.reset()
    compiled = torch.compile(model.unet, fullgraph=True)
    with torch.inference_mode():
        compiled(torch.randn(3, 8))


def test_artefacts_are_saved_under_the_models_key_and_found_by_the_next_start(tmp_path):
    cache = EngineCache(tmp_path)
    model = _Model()
    assert load_compile_artifacts(model, cache) is False  # a cold start: nothing yet
    _compile_once(model)
    path = save_compile_artifacts(model)
    assert path is not None and path.is_file() and path.stat().st_size > 0
    assert cache.lookup(artifacts_key(model, cache)) == path
    assert save_compile_artifacts(model) is None  # nothing compiled since: the entry is not rewritten

    again = _Model()  # the next process: same weights, same key
    assert load_compile_artifacts(again, cache) is True
    other = _Model(seed=1)  # other weights: another key, a cold start
    assert artifacts_key(other, cache) != artifacts_key(model, cache) and load_compile_artifacts(other, cache) is False


def test_a_corrupt_blob_costs_a_cold_compile_not_a_failed_start(tmp_path, caplog):
    cache = EngineCache(tmp_path)
    model = _Model()
    key = artifacts_key(model, cache)
    cache.store(key, lambda out: out.write_bytes(b"not a torch cache blob"))
    with caplog.at_level(logging.WARNING):
        assert load_compile_artifacts(_Model(), cache) is False
    assert "compiling from scratch" in caplog.text


def test_a_model_without_a_store_saves_nothing():
    assert save_compile_artifacts(_Model()) is None
