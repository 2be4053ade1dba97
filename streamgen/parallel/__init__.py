"""Pipeline stages: the causal video DiT's blocks split across processes and devices over ``torch.distributed``.

One stream step on S stages (ranks):

- rank 0 is the *driver*: it is the process that runs the pipeline (the
  server, ``streamgen run``, :class:`~streamgen.VideoStream`). It holds the
  text encoder, the VAE, the patch and time embeddings and the first
  blocks; the last rank holds the output head; every other rank only its
  blocks. A rank loads the weights of what it holds and nothing else
  (:mod:`.shard_loading`);
- every rank holds the KV-cache layers of its own blocks for every stream
  (:mod:`.stage_shard`), and the cross-attention context of every prompt in
  use for its blocks; the driver reaches them through handles that look
  like a cache and a context (:mod:`.handles`);
- a DiT forward is cut into micro-batches of rows; each goes rank 0 → 1 →
  … → S−1, the last rank applies the head and sends the flow prediction
  back to rank 0. While rank 1 runs micro-batch i, rank 0 runs
  micro-batch i+1 (:mod:`.driver`);
- control messages (a new cache, a reset, a prompt's text, an undo, a new
  block split) travel the same ring, so every rank sees them in the same
  order as the forwards around them and the shards never disagree.

:mod:`.launch` starts and supervises the ranks (or joins a ``torchrun``
job), :mod:`.rebalance` moves blocks between ranks while streaming, using
the split that :mod:`streamgen.sched.blocks` chooses from measured stage
times.
"""
