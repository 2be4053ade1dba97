"""``acceleration="compile"`` with pipeline stages: every rank runs its blocks as a compiled graph, and the frames stay those of eager."""

from __future__ import annotations

import shutil

import pytest

from .staging import input_frames, reference_frames, staged_tiny, stream_frames

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="inductor needs a C++ compiler on CPU")


def test_compiled_stages_give_the_frames_of_one_eager_process() -> None:
    frames = input_frames(13)
    expected = reference_frames(2, stream_batch=True, frames=frames)
    with staged_tiny(2, 2, rebalance=False, acceleration="compile") as model:
        got = stream_frames(model, stream_batch=True, frames=frames)
        ranks = model.stages.driver.inventory()
        assert model.stages.describe()["acceleration"] == "compile"
    assert [(r["acceleration"], r["compiled"]) for r in ranks] == [("compile", True)] * 2  # each rank compiled its own blocks
    assert got.shape == expected.shape
    assert (got.int() - expected.int()).abs().max() <= 2  # inductor fuses and reorders float arithmetic
