"""Pipeline stages: the causal video DiT's blocks split across processes and devices over ``torch.distributed``.

A stream on S stages (ranks):

- rank 0 is the *driver*: it is the process that runs the pipeline (the
  server, ``streamgen run``, :class:`~streamgen.VideoStream`). It holds the
  text encoder, the VAE encoder, the patch and time embeddings and the
  first blocks; the last rank holds its blocks, the output head and the VAE
  decoder; every other rank only its blocks. A rank loads the weights of
  what it holds and nothing else (:mod:`.shard_loading`);
- every rank holds the KV-cache layers of its own blocks for every stream
  (:mod:`.stage_shard`) and the cross-attention context of every prompt in
  use for its blocks; the last rank holds every stream's decode state. The
  driver reaches them through handles that look like a cache, a context and
  a decode state (:mod:`.handles`);
- work moves as rows (:mod:`.rows`): one chunk at one denoising step. The
  pipeline (:class:`~streamgen.pipeline.video_staged.StagedVideoPipeline`)
  submits a chunk's first step when the chunk is encoded and each later
  step when the previous one's prediction is back; rank 0 batches the rows
  that are ready into a micro-batch, runs its blocks and sends it on without
  waiting, so as many micro-batches are on the ring as there is work, and
  every rank works at once (:mod:`.driver`). The last rank decodes a chunk
  after its last step and sends the frames back;
- control messages (a new cache, a reset, a prompt's text, a decoder, a new
  block split) travel the same ring, so every rank sees them in the same
  order as the micro-batches around them and the shards never disagree;
- every header and control message goes over gloo, and NCCL carries only
  tensors a header announced (:mod:`.links`, :mod:`.messages`): no rank
  waits in NCCL for work that may not come, an idle hour is not a hang
  (keep-alives), and each thread on a GPU has its own CUDA stream
  (:mod:`.device_streams`).

:mod:`.launch` starts and supervises the ranks (or joins a ``torchrun``
job), :mod:`.rebalance` moves blocks between ranks while streaming, using
the split that :mod:`streamgen.sched.blocks` chooses from measured stage
times.
"""
