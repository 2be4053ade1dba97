"""The engine cache: keys that see every input, entries that are complete or rebuilt, one build across processes."""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from streamgen.errors import EngineError
from streamgen.runtime import engine_cache
from streamgen.runtime.engine_cache import EngineCache, EngineKey, default_cache_dir, lora_fingerprint, weights_fingerprint

KEY = EngineKey(
    model_id="tiny",
    weights="0123456789abcdef",
    component="unet",
    dtype="float16",
    batch_range=(1, 8),
    resolution_range=(256, 512),
    lora="none",
    backend="tensorrt",
    backend_version="10.3.0",
    torch_version="2.13.0",
    gpu_arch="sm_90",
)

CHANGED = {
    "model_id": "sd-turbo",
    "weights": "fedcba9876543210",
    "component": "vae_decoder",
    "dtype": "float32",
    "batch_range": (1, 4),
    "resolution_range": (256, 768),
    "lora": "5a5a5a5a",
    "backend": "onnx",
    "backend_version": "10.4.0",
    "torch_version": "2.14.0",
    "gpu_arch": "sm_89",
    "inputs": "residuals:32@0,32@1",
}


# ---------------------------------------------------------------------- keys
def test_every_key_field_changes_the_digest():
    assert set(CHANGED) == {f.name for f in dataclasses.fields(EngineKey)}, "a key field is not covered"
    digests = {KEY.digest()}
    for name, value in CHANGED.items():
        digests.add(dataclasses.replace(KEY, **{name: value}).digest())
    assert len(digests) == 1 + len(CHANGED)


def test_a_key_without_extra_inputs_hashes_as_keys_did_before_the_field():
    """Plain components keep the digests (and so the cache entries) they had before ``inputs`` existed."""
    import hashlib
    import json

    before = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(KEY).items() if k != "inputs"}
    assert KEY.digest() == hashlib.sha256(json.dumps(before, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert EngineKey.from_fields(before) == KEY


def test_digest_is_stable_and_depends_on_the_fields_only():
    same = EngineKey(**{f.name: getattr(KEY, f.name) for f in dataclasses.fields(EngineKey)})
    assert same.digest() == KEY.digest()
    # pinned: a change to the canonical form would orphan every cache on disk
    assert KEY.digest() == "f0584cdf00dc1dfa61e066f8b0d2e1b0ed5f92e3a7cb7c6d61b08009ee68d354"
    assert EngineKey.from_fields(json.loads(json.dumps(KEY.fields()))) == KEY


def _linear(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.LayerNorm(64))


def test_weights_fingerprint_sees_other_weights_a_fused_lora_and_a_cast():
    base = _linear()
    fingerprint = weights_fingerprint(base)
    assert weights_fingerprint(_linear()) == fingerprint
    assert weights_fingerprint(_linear(seed=1)) != fingerprint
    fused = _linear()
    with torch.no_grad():
        down, up = torch.randn(4, 64) * 0.01, torch.randn(64, 4) * 0.01
        fused[0].weight += up @ down  # what fusing a rank-4 LoRA does
    assert weights_fingerprint(fused) != fingerprint
    assert weights_fingerprint(_linear().half()) != fingerprint


def test_weights_fingerprint_is_the_same_in_another_process():
    """Nothing process-dependent (set order of config bookkeeping, hash seeds) may leak into it."""
    from streamgen.models.image.tiny import build_tiny_image_model

    code = (
        "from streamgen.models.image.tiny import build_tiny_image_model\n"
        "from streamgen.runtime.engine_cache import weights_fingerprint\n"
        "m = build_tiny_image_model(seed=0)\n"
        "print(weights_fingerprint(m.unet), weights_fingerprint(m.vae), weights_fingerprint(m.text_encoders[0]))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True, timeout=120).stdout.split()
    model = build_tiny_image_model(seed=0)
    assert out == [weights_fingerprint(model.unet), weights_fingerprint(model.vae), weights_fingerprint(model.text_encoders[0])]


def test_lora_fingerprint_sees_unfused_adapter_scales():
    module = _linear()
    assert lora_fingerprint(module) == "none"
    module[0].scaling = {"style": 1.0}
    module[0].active_adapters = ["style"]
    first = lora_fingerprint(module)
    module[0].scaling = {"style": 0.5}
    assert first != "none" and lora_fingerprint(module) != first


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("STREAMGEN_ENGINE_DIR", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("STREAMGEN_ENGINE_DIR")
    checkout = Path(engine_cache.__file__).resolve().parents[2] / "engines"
    if (checkout / "README.md").is_file() and os.access(checkout, os.W_OK):
        assert default_cache_dir() == checkout
    monkeypatch.setattr(engine_cache.os, "access", lambda *_: False)
    assert default_cache_dir() == Path.home() / ".cache" / "streamgen" / "engines"


# ------------------------------------------------------------------- entries
def _writer(payload: bytes, calls: list[Path]):
    def build(out: Path) -> None:
        calls.append(out)
        out.write_bytes(payload)

    return build


def test_second_get_or_build_reuses_and_the_manifest_describes_the_entry(tmp_path):
    cache = EngineCache(tmp_path)
    calls: list[Path] = []
    path = cache.get_or_build(KEY, _writer(b"engine bytes", calls))
    again = EngineCache(tmp_path).get_or_build(KEY, _writer(b"other", calls))
    assert path == again and path.read_bytes() == b"engine bytes" and len(calls) == 1
    assert calls[0].parent != tmp_path, "the build must write into a private temporary folder"
    assert path.suffix == ".plan" and KEY.digest()[:20] in path.name
    manifest = json.loads(cache.manifest_path(KEY).read_text())
    assert manifest["key"]["gpu_arch"] == "sm_90" and manifest["size"] == len(b"engine bytes")
    assert manifest["build_seconds"] >= 0 and len(manifest["sha256"]) == 64
    [entry] = cache.entries()
    assert entry.key == KEY and entry.path == path and entry.complete
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".building")]


@pytest.mark.parametrize("damage", ["flip_bytes", "truncate", "no_manifest", "no_artefact"])
def test_a_corrupt_or_partial_entry_is_rebuilt(tmp_path, caplog, damage):
    calls: list[Path] = []
    path = EngineCache(tmp_path).get_or_build(KEY, _writer(b"0123456789", calls))
    if damage == "flip_bytes":
        path.write_bytes(b"0123456780")
    elif damage == "truncate":
        path.write_bytes(b"01234")
    elif damage == "no_manifest":
        EngineCache(tmp_path).manifest_path(KEY).unlink()
    else:
        path.unlink()
    with caplog.at_level(logging.WARNING, logger="streamgen.runtime.engine_cache"):
        rebuilt = EngineCache(tmp_path).get_or_build(KEY, _writer(b"0123456789", calls))
    assert len(calls) == 2 and rebuilt.read_bytes() == b"0123456789"
    assert "rebuilding" in caplog.text


def test_a_failed_build_leaves_nothing_and_says_what_failed(tmp_path):
    def broken(out: Path) -> None:
        out.write_bytes(b"half")
        raise RuntimeError("unsupported op aten::frobnicate")

    with pytest.raises(EngineError, match="unet.*aten::frobnicate"):
        EngineCache(tmp_path).get_or_build(KEY, broken)
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".lock"]
    calls: list[Path] = []
    EngineCache(tmp_path).get_or_build(KEY, _writer(b"ok", calls))
    assert len(calls) == 1


def test_sidecars_travel_with_the_entry_and_strays_are_refused(tmp_path):
    def with_sidecar(out: Path) -> None:
        out.write_bytes(b"graph")
        out.with_name(out.name + ".data").write_bytes(b"weights")

    cache = EngineCache(tmp_path)
    path = cache.get_or_build(KEY, with_sidecar)
    assert path.with_name(path.name + ".data").read_bytes() == b"weights"
    assert cache.entries()[0].size == len(b"graph") + len(b"weights")
    path.with_name(path.name + ".data").write_bytes(b"other weights")
    calls: list[Path] = []
    EngineCache(tmp_path).get_or_build(KEY, _writer(b"graph", calls))
    assert len(calls) == 1, "a damaged sidecar makes the entry invalid"

    def stray(out: Path) -> None:
        out.write_bytes(b"graph")
        (out.parent / "weights.bin").write_bytes(b"x")

    with pytest.raises(EngineError, match="not named after it"):
        EngineCache(tmp_path).get_or_build(dataclasses.replace(KEY, component="vae_encoder"), stray)


def _build_in_process(root: str, barrier, counter: str, results) -> None:
    def build(out: Path) -> None:
        with open(counter, "a") as handle:
            handle.write(f"{os.getpid()}\n")
        import time

        time.sleep(0.5)  # long enough that the other process arrives while this one builds
        out.write_bytes(b"built once")

    barrier.wait()
    path = EngineCache(Path(root)).get_or_build(KEY, build)
    results.put((str(path), path.read_bytes()))


def test_two_processes_building_the_same_entry_build_it_once(tmp_path):
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(2), context.Queue()
    counter = tmp_path / "builds.txt"
    workers = [context.Process(target=_build_in_process, args=(str(tmp_path / "cache"), barrier, str(counter), results)) for _ in range(2)]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert len(counter.read_text().splitlines()) == 1
    assert outcomes[0] == outcomes[1] and outcomes[0][1] == b"built once"


def test_entries_mark_an_incomplete_entry(tmp_path):
    cache = EngineCache(tmp_path)
    path = cache.get_or_build(KEY, _writer(b"abc", []))
    path.unlink()
    [entry] = cache.entries()
    assert not entry.complete
    assert EngineCache(tmp_path / "absent").entries() == []
