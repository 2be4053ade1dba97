"""The steered graphs' input layout: every ControlNet residual's shape, as TensorRT profiles are sized from it.

No ONNX Runtime needed: the layout is checked against what diffusers'
ControlNet really returns, at odd latent sides (each downsampler rounds up)
and at the engine profile's min / opt / max sizes.
"""

from __future__ import annotations

import pytest
import torch

from streamgen.models.image.controlnet import tiny_controlnet
from streamgen.models.image.tiny import build_tiny_image_model
from streamgen.runtime.control_export import controlnet_export, residual_layout, side_at, steered_unet_export


@pytest.fixture(scope="module", params=["sd", "sdxl"])
def model(request):
    if request.param == "sd":
        model = build_tiny_image_model(seed=0)
    else:
        from tests.models.builders import tiny_sdxl_model

        model = tiny_sdxl_model(seed=0)
    model.attach_controlnet("tiny", lambda _name, m: tiny_controlnet(m.unet, seed=0))
    return model


def _residual_shapes(model, height: int, width: int, rows: int = 2) -> list[tuple[int, ...]]:
    latents = torch.randn(rows, 4, height, width)
    hidden = torch.randn(rows, 77, model.unet.config.cross_attention_dim)
    added = None
    if model.is_sdxl:
        pooled = model.unet.config.projection_class_embeddings_input_dim - 6 * model.unet.config.addition_time_embed_dim
        added = {"text_embeds": torch.randn(rows, pooled), "time_ids": torch.full((rows, 6), 64.0)}
    images = torch.rand(rows, 3, height * model.vae_scale_factor, width * model.vae_scale_factor)
    with torch.inference_mode():
        down, mid = model.run_controlnet("tiny", latents, torch.tensor([999, 10][:rows]), hidden, added, images)
    return [tuple(t.shape) for t in (*down, mid)]


def test_side_at_rounds_up_once_per_level():
    assert [side_at(9, level) for level in range(5)] == [9, 5, 3, 2, 1]
    assert side_at(64, 3) == 8


@pytest.mark.parametrize(("height", "width"), [(8, 8), (9, 7), (5, 13)])
def test_the_layout_gives_the_controlnets_residual_shapes(model, height, width):
    factor = model.vae_scale_factor
    layout = residual_layout(model.unet)
    expected = _residual_shapes(model, height, width)
    shapes = layout.shapes(factor)
    assert [shapes[name](2, height * factor, width * factor) for name in layout.names] == expected
    down, mid = layout.zeros(torch.zeros(2, 4, height, width))
    assert [tuple(t.shape) for t in (*down, mid)] == expected


def test_profile_ranges_of_the_steered_graphs_match_the_controlnet_at_every_end(model):
    """The steered UNet's residual inputs and the ControlNet's control image get ranges that fit the latents' range."""
    steered, control = steered_unet_export(model), controlnet_export(model, model.controlnets["tiny"])
    layout = residual_layout(model.unet)
    factor = model.vae_scale_factor
    for export in (steered, control):
        assert export.signature.endswith(layout.signature())
    ranges = steered.shape_ranges((1, 3), (64, 136), (96, 96))
    control_ranges = control.shape_ranges((1, 3), (64, 136), (96, 96))
    for end in ("minimum", "optimum", "maximum"):
        rows, _, height, width = getattr(ranges["latents"], end)
        expected = _residual_shapes(model, height, width, rows=min(rows, 2))
        got = [getattr(ranges[name], end) for name in layout.names]
        assert [g[1:] for g in got] == [e[1:] for e in expected] and all(g[0] == rows for g in got)
        assert getattr(control_ranges["control"], end) == (rows, 3, height * factor, width * factor)
