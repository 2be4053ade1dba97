"""The server reaches pipelines only through the contract (streamgen/pipeline/contract.py), checked on the source.

Every attribute the server (and the command line's stream runner) reads of
a pipeline is a member of the contract's protocols, and nothing probes a
pipeline with ``getattr``/``hasattr``: a renamed method fails at load, not
silently at run time. Real pipelines satisfy the contract.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from streamgen.pipeline.contract import (
    Capabilities,
    Checkpointable,
    Flushable,
    OutputListener,
    PreparesInput,
    Staged,
    Steerable,
    StreamPipeline,
    contract_members,
)

ROOT = Path(__file__).resolve().parents[2] / "streamgen"
DRIVERS = sorted((ROOT / "server").rglob("*.py")) + [ROOT / "commands" / "stream_runner.py"]
MEMBERS = contract_members(StreamPipeline, Checkpointable, Flushable, OutputListener, Staged, PreparesInput, Steerable)


def _pipeline_reads(path: Path) -> list[tuple[int, str]]:
    """``(line, attribute)`` of every ``<...>pipeline.<attribute>`` in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute):
            owner = node.value
            name = owner.attr if isinstance(owner, ast.Attribute) else owner.id if isinstance(owner, ast.Name) else None
            if name in ("pipeline", "_pipeline"):
                found.append((node.lineno, node.attr))
    return found


def _probes(path: Path) -> list[int]:
    """Lines where ``getattr``/``hasattr`` is called on something named like a pipeline or a pipeline's state."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr") and node.args:
            target = ast.unparse(node.args[0])
            if "pipeline" in target or target in ("state", "self.state", "client.state") or target.endswith(".model"):
                lines.append(node.lineno)
    return lines


@pytest.mark.parametrize("path", DRIVERS, ids=lambda p: p.name)
def test_the_server_reads_only_contract_members_of_a_pipeline(path):
    outside = [f"{path.name}:{line} pipeline.{attr}" for line, attr in _pipeline_reads(path) if attr not in MEMBERS]
    assert outside == [], f"not in the contract: {outside}"
    assert _probes(path) == [], f"{path.name} probes a pipeline or its state at lines {_probes(path)}"


def test_the_contract_check_sees_reads_and_probes():
    sample = Path(__file__).with_name("contract_sample.txt")
    sample.write_text("def f(self, state):\n    self.pipeline.model.stages\n    return getattr(state, 'ring', None)\n")
    try:
        assert _pipeline_reads(sample) == [(2, "model")] and _probes(sample) == [3]
    finally:
        sample.unlink()


def test_every_pipeline_meets_the_contract(tiny_pipeline):
    from streamgen.models.loading.video_presets import build_tiny_video_model
    from streamgen.pipeline.identity import IdentityPipeline
    from streamgen.pipeline.video_loading import video_pipeline_for

    for pipeline in (tiny_pipeline, IdentityPipeline(), video_pipeline_for(build_tiny_video_model(seed=0))):
        capabilities = Capabilities.of(pipeline)
        assert capabilities.checkpoint and capabilities.flush and not capabilities.staged
        assert isinstance(pipeline, StreamPipeline)


def test_a_pipeline_without_the_core_is_refused_at_load_naming_what_it_lacks():
    class Half:
        kind = "image"

        def step(self, states, frames, tags=None):
            return []

    with pytest.raises(TypeError, match="lacks .*settings_shape"):
        Capabilities.of(Half())
