"""Fixtures for the server tests: shared pipelines (weights are never mutated) and servers."""

from __future__ import annotations

import pytest

from streamgen.pipeline import ImagePipeline
from streamgen.pipeline.identity import IdentityPipeline


@pytest.fixture()
def identity_pipeline() -> IdentityPipeline:
    return IdentityPipeline()


@pytest.fixture(scope="session")
def shared_tiny_pipeline(tiny_model) -> ImagePipeline:
    """One tiny image pipeline for all server tests; every session keeps its own state."""
    return ImagePipeline(tiny_model)


@pytest.fixture(scope="module")
def tiny_video_pipeline():
    """tiny-video for the server's video tests (its state is per session; the pipeline holds weights only)."""
    from streamgen.pipeline.video_loading import load_video_pipeline

    return load_video_pipeline("tiny-video", device="cpu")
