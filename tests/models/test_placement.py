"""Placing a loaded component: CPU weights end up in aligned memory of their own (numerics must not depend on file offsets)."""

from __future__ import annotations

import torch

from streamgen.models.loading.components import CPU_ALIGNMENT, place


def test_weights_viewed_at_an_odd_offset_get_aligned_memory_with_the_same_values():
    backing = torch.randn(1 + 8 * 8 + 8)  # one file buffer, tensors at offsets as safetensors hands them out
    layer = torch.nn.Linear(8, 8)
    with torch.no_grad():
        layer.weight.data = backing[1 : 1 + 64].view(8, 8)
        layer.bias.data = backing[65:73]
    assert layer.weight.data_ptr() % CPU_ALIGNMENT != 0
    expected_weight, expected_bias = layer.weight.detach().clone(), layer.bias.detach().clone()
    placed = place(layer, torch.device("cpu"), torch.float32)
    assert all(p.data_ptr() % CPU_ALIGNMENT == 0 for p in placed.parameters())
    assert torch.equal(placed.weight, expected_weight) and torch.equal(placed.bias, expected_bias)
    assert not placed.training and not any(p.requires_grad for p in placed.parameters())


def test_aligned_weights_are_left_where_they_are():
    layer = torch.nn.Linear(8, 8)
    pointer = layer.weight.data_ptr()
    assert place(layer, torch.device("cpu"), torch.float32).weight.data_ptr() == pointer
