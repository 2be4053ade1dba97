"""Shared fixtures: tiny models built in code, CPU only, no network."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tiny_model():
    """The built-in tiny image model (shared: pipelines never mutate weights)."""
    from streamgen.models.image.tiny import build_tiny_image_model

    return build_tiny_image_model(seed=0)


@pytest.fixture()
def tiny_pipeline(tiny_model):
    from streamgen.pipeline import ImagePipeline

    return ImagePipeline(tiny_model)
