"""Move blocks between stage ranks while streaming: their weights, KV-cache layers and context layers.

Every rank runs :func:`exchange_blocks` when the ``rebalance`` message
reaches it, after every forward sent before it and before any sent after
it, so no micro-batch ever sees a half-moved block. For each block that
changes owner (in block order, the same on both sides), the old owner
sends the block's parameters, then that layer of every cache and of every
context (in id order: every rank holds the same ids), and the new owner
receives them into a copy of one of its own blocks (all blocks share one
architecture). Then each rank re-layers its caches *in place*, so the
driver's handles and row views stay valid, and the values are bit-exact
copies: frames after a move equal frames without one.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch
import torch.distributed as dist

from ..models.video.wan_context import CrossAttentionContext
from ..sched.blocks import BlockSplit
from .device_streams import finished
from .shard_loading import AbsentBlock
from .stage_shard import StageShard


def exchange_blocks(shard: StageShard, old: BlockSplit, new: BlockSplit, *, rank: int, device: torch.device, group: Any) -> None:
    """This rank's part of moving from ``old`` to ``new`` over ``group`` (the links' exchange group; see module docstring)."""
    moves = old.moves_to(new)
    if not moves:
        return
    blocks = shard.model.transformer.blocks
    template = blocks[shard.blocks[0]]
    cache_ids, context_ids = sorted(shard.caches), sorted(shard.contexts)
    outgoing, works = [], []
    for move in moves:
        if move.source == rank:
            local = move.block - shard.blocks.start
            tensors = _block_tensors(blocks[move.block], shard, local, cache_ids, context_ids)
            tensors = [t.detach().to(device).contiguous() for t in tensors]
            outgoing.append(tensors)
            works += [dist.isend(t, move.target, group=group) for t in tensors]
    received: dict[int, tuple[torch.nn.Module, list[torch.Tensor], list[torch.Tensor]]] = {}
    for move in moves:
        if move.target == rank:
            received[move.block] = _receive_block(template, shard, move.source, cache_ids, context_ids, device, group)
    for work in works:
        work.wait()
    finished(device)  # NCCL: wait() only ordered this stream; the sent tensors are freed when this returns
    _relayer(shard, new.blocks_of(rank), received, cache_ids, context_ids)


def _block_tensors(block: torch.nn.Module, shard: StageShard, local: int, cache_ids: list[int], context_ids: list[int]) -> list[torch.Tensor]:
    tensors = [p for _, p in sorted(block.state_dict(keep_vars=True).items())]
    for cache_id in cache_ids:
        cache = shard.caches[cache_id]
        tensors += [cache.k[local], cache.v[local]]
        if cache.sink_keys is not None:
            tensors.append(cache.sink_keys[local])
    for context_id in context_ids:
        context = shard.contexts[context_id]
        tensors += [context.keys[local], context.values[local]]
    return tensors


def _receive_block(
    template: torch.nn.Module, shard: StageShard, source: int, cache_ids: list[int], context_ids: list[int], device: torch.device, group: Any
):
    block = copy.deepcopy(template)
    with torch.no_grad():
        for _, tensor in sorted(block.state_dict(keep_vars=True).items()):
            buffer = torch.empty_like(tensor, device=device)
            dist.recv(buffer, source, group=group)
            tensor.copy_(buffer.to(tensor.device))
    cache_layers = []
    for cache_id in cache_ids:
        cache = shard.caches[cache_id]
        parts = [cache.k[0], cache.v[0]] + ([cache.sink_keys[0]] if cache.sink_keys is not None else [])
        cache_layers.append([_received_like(p, source, device, group) for p in parts])
    context_layers = []
    for context_id in context_ids:
        context = shard.contexts[context_id]
        context_layers.append([_received_like(context.keys[0], source, device, group), _received_like(context.values[0], source, device, group)])
    return block, cache_layers, context_layers


def _received_like(like: torch.Tensor, source: int, device: torch.device, group: Any) -> torch.Tensor:
    buffer = torch.empty(like.shape, dtype=like.dtype, device=device)
    dist.recv(buffer, source, group=group)
    return buffer.to(like.device)


def _relayer(shard: StageShard, blocks: range, received: dict, cache_ids: list[int], context_ids: list[int]) -> None:
    """Give the shard the layers of ``blocks``: kept ones from itself, moved ones from ``received``."""
    old = shard.blocks
    modules = shard.model.transformer.blocks
    for i, cache_id in enumerate(cache_ids):
        cache = shard.caches[cache_id]
        parts = [received[b][1][i] if b in received else _cache_layer(cache, b - old.start) for b in blocks]
        cache.k = torch.stack([p[0] for p in parts])
        cache.v = torch.stack([p[1] for p in parts])
        if cache.sink_keys is not None:
            cache.sink_keys = torch.stack([p[2] for p in parts])
        cache.geometry = dataclasses.replace(cache.geometry, num_layers=len(blocks))
    for i, context_id in enumerate(context_ids):
        context = shard.contexts[context_id]
        layers = [received[b][2][i] if b in received else [context.keys[b - old.start], context.values[b - old.start]] for b in blocks]
        shard.contexts[context_id] = CrossAttentionContext(torch.stack([l[0] for l in layers]), torch.stack([l[1] for l in layers]))
    for block in old:
        if block not in blocks:
            modules[block] = AbsentBlock(block)
    for block, (module, _, _) in received.items():
        modules[block] = module
    shard.blocks = blocks


def _cache_layer(cache, local: int) -> list[torch.Tensor]:
    return [cache.k[local], cache.v[local]] + ([cache.sink_keys[local]] if cache.sink_keys is not None else [])
