"""The loop of a stage rank other than the driver: receive, apply, pass on.

A rank receives every message from the rank before it. Control messages
change its shard (:func:`apply_control`) and are passed on unchanged, so
they reach every rank in ring order. A forward runs the rank's blocks and
passes the hidden states on; the last rank applies the output head, turns
the rows that were a chunk's last step into clean latents and decodes them
(it holds the VAE decoder and every stream's decode state), and sends the
flow predictions and the decoded frames to rank 0. An exception in a
forward becomes an ``error`` message that travels on to rank 0, which ends
the streams of that micro-batch with its text; the rank's shard is as it
was (a forward commits only after its last block). A control operation
that raises leaves the rank out of step: rank 0 fails every stream.
"""

from __future__ import annotations

import logging
import time
import traceback

import torch

from ..models.video.causal_wan import EmbeddedChunk
from ..models.video.flow import flow_x0
from ..sched.blocks import BlockSplit
from .device_streams import finished, new_stream
from .links import Links, keepalive_seconds
from .messages import Message, Sender, receive
from .stage_shard import RowContexts, SegmentSpec, StageShard, shard_inventory

logger = logging.getLogger(__name__)
CONTROL_OPS = (
    "cache.new", "cache.drop", "cache.reset", "cache.replace", "context.define", "context.blend", "context.drop",
    "decoder.new", "decoder.reset", "decoder.drop",
)


def apply_control(shard: StageShard, message: Message) -> None:
    """Apply one control message to ``shard`` (the driver does the same to its own shard when sending it)."""
    meta = message.meta
    op = message.op
    if op == "cache.new":
        shard.new_cache(meta["id"], meta["rows"], *meta["latent"], meta["options"])
    elif op == "cache.drop":
        shard.drop_cache(meta["id"])
    elif op == "cache.reset":
        cache = shard.caches[meta["id"]].row_view(meta["start"], meta["stop"])
        cache.reset(meta["rows"])
    elif op == "cache.replace":
        cache = shard.caches[meta["id"]].row_view(meta["start"], meta["stop"])
        cache.replace_frames(meta["rows"], shard.caches[meta["scratch"]], meta["frames"])
    elif op == "context.define":
        shard.define_context(meta["id"], message.tensors[0])
    elif op == "context.blend":
        shard.blend_context(meta["id"], meta["start"], meta["target"], meta["weight"])
    elif op == "context.drop":
        shard.drop_context(meta["id"])
    elif op == "decoder.new":
        shard.new_decoder(meta["id"])
    elif op == "decoder.reset":
        shard.reset_decoder(meta["id"])
    elif op == "decoder.drop":
        shard.drop_decoder(meta["id"])
    elif op not in ("rebalance", "shutdown"):
        raise ValueError(f"unknown stage operation {op!r}")


def run_stage(rank: int, shard: StageShard, split: BlockSplit, comm_device: torch.device, links: Links) -> None:
    """Serve as stage ``rank`` (>= 1) until a shutdown message arrives."""
    stages = split.stages
    last = rank == stages - 1
    keepalive = keepalive_seconds(links.timeout_s)
    name = f"stage-{rank}"
    sender = (
        Sender(0, links.back, comm_device, keepalive_s=keepalive, name=name)
        if last else Sender(rank + 1, links.ring, comm_device, keepalive_s=keepalive, name=name)
    )
    receive_stream = new_stream(comm_device)
    try:
        _serve(rank, shard, split, comm_device, links, sender, receive_stream, last)
    finally:
        sender.close()


def _serve(rank, shard, split, comm_device, links, sender, receive_stream, last) -> None:
    while True:
        message = receive(rank - 1, links.ring, comm_device, receive_stream)
        if message.op == "shutdown":
            sender.close()
            sender.send(Message("bye") if last else message)
            sender.flush()
            return
        if message.op == "forward":
            sender.send(_forward(rank, shard, message, last))
            continue
        if message.op == "error":
            sender.send(message)
            continue
        if message.op == "inventory":
            message.meta["ranks"].append(shard_inventory(shard, rank))
            sender.send(message)
            continue
        if not last:
            sender.send(message)
        if message.op == "rebalance":
            from .rebalance import exchange_blocks  # noqa: PLC0415

            new = BlockSplit(tuple(message.meta["bounds"]))
            exchange_blocks(shard, split, new, rank=rank, device=comm_device, group=links.exchange)
            split = new
            continue
        try:
            apply_control(shard, message)
        except Exception as error:  # noqa: BLE001  - a control op that fails leaves this shard out of step: fatal
            logger.exception("stage rank %d: %s failed", rank, message.op)
            sender.send(Message("error", {"rank": rank, "error": f"{message.op}: {error}", "item": None}))


def _forward(rank: int, shard: StageShard, message: Message, last: bool) -> Message:
    meta = message.meta
    try:
        device = shard.device
        x, modulation, temb = (t.to(device) for t in message.tensors[:3])
        began = time.perf_counter()
        segments = [SegmentSpec.from_json(s) for s in meta["segments"]]
        grid = tuple(meta["grid"])
        with torch.inference_mode():
            x = shard.run(x, modulation, meta["frames"], grid, segments, RowContexts.from_json(meta["rows"]))
            blocks_done = finished(device)
            times = [*meta["times"], [blocks_done - began, 0.0]]
            if last:
                return _finish(shard, message, x, times, blocks_done)
        return Message("forward", {**meta, "times": times}, [x, modulation, temb, *message.tensors[3:]])
    except Exception as error:  # noqa: BLE001  - reported to the driver, which fails the streams with it
        logger.error("stage rank %d: forward failed:\n%s", rank, traceback.format_exc())
        return Message("error", {"rank": rank, "error": f"{type(error).__name__}: {error}", "item": meta.get("item")})


def _finish(shard: StageShard, message: Message, x: torch.Tensor, times: list, blocks_done: float) -> Message:
    """The last rank: head → flow predictions; a chunk's last step → clean latents → decoded frames."""
    meta = message.meta
    modulation, temb, *final = (t.to(shard.device) for t in message.tensors[1:])
    v = shard.model.head(x, EmbeddedChunk(x, temb, modulation, *meta["grid"])).float()
    frames = []
    if meta["decode"]:
        rows = [i for i, _ in meta["decode"]]
        latents, sigmas = final
        x0 = flow_x0(latents, v[rows], sigmas.view(-1, 1, 1, 1, 1))
        frames = shard.decode(x0, [decoder for _, decoder in meta["decode"]])
    times[-1][1] = finished(shard.device) - blocks_done
    return Message("result", {"item": meta["item"], "times": times}, [v, *frames])

