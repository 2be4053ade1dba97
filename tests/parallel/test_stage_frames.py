"""Pipeline stages compute exactly what one process computes: frames, multi-stream batches, rebalancing, ownership."""

from __future__ import annotations

import pytest
import torch

from streamgen.models.loading.video_presets import build_tiny_video_model
from streamgen.pipeline.video_loading import video_pipeline_for
from streamgen.sched.blocks import BlockSplit

from .staging import SIZE, input_frames, reference_frames, staged_tiny, stream_frames


@pytest.mark.parametrize(("ranks", "layers"), [(2, 3), (3, 4)])
def test_stages_give_the_frames_of_one_process_in_both_modes(ranks: int, layers: int) -> None:
    frames = input_frames()
    expected = {mode: reference_frames(layers, stream_batch=mode, frames=frames) for mode in (True, False)}
    with staged_tiny(ranks, layers, rebalance=False) as model:
        for mode in (True, False):
            got = stream_frames(model, stream_batch=mode, frames=frames)
            assert got.shape == expected[mode].shape == (len(frames), SIZE, SIZE, 3)
            assert torch.equal(got, expected[mode]), f"stream_batch={mode}: max diff {(got.int() - expected[mode].int()).abs().max()}"


def _two_streams(model) -> list[torch.Tensor]:
    """Two streams (different prompts, seeds and modes) stepped together: their rows share each forward."""
    pipeline = video_pipeline_for(model)
    states = [
        pipeline.create_state({"width": SIZE, "height": SIZE, "use_denoising_batch": True}, {"prompt": "a fox", "seed": 1}),
        pipeline.create_state({"width": SIZE, "height": SIZE, "use_denoising_batch": False}, {"prompt": "a boat", "seed": 2, "num_inference_steps": 3}),
    ]
    a, b = input_frames(seed=1), input_frames(seed=2)
    outs = [[], []]
    for index, (fa, fb) in enumerate(zip(a, b)):
        if index == 12:
            pipeline.update(states[0], prompt="a fox in snow", transition_chunks=2)
        for out, result in zip(outs, pipeline.step(states, [fa, fb])):
            out.append(result.frames)
    for out, state in zip(outs, states):
        out.append(pipeline.flush(state).frames)
    return [torch.cat(o) for o in outs]


def test_streams_sharing_forwards_match_one_process_through_a_prompt_transition() -> None:
    expected = _two_streams(build_tiny_video_model(seed=0, layers=3))
    with staged_tiny(2, 3, rebalance=False) as model:
        got = _two_streams(model)
    for g, e in zip(got, expected):
        # The DiT rows are exact; the last rank decodes the chunks that finish together in one VAE call, which may
        # group the two streams differently from one process and round differently in the last bit (as batching does there).
        assert g.shape == e.shape
        assert (g.int() - e.int()).abs().max() <= 1


def test_moving_blocks_in_the_middle_of_a_stream_keeps_the_frames() -> None:
    frames = input_frames()
    expected = reference_frames(4, stream_batch=True, frames=frames)
    with staged_tiny(3, 4, split=[0, 1, 3, 4], rebalance=False) as model:
        driver = model.stages.driver
        plan = {9: BlockSplit((0, 2, 3, 4)), 17: BlockSplit((0, 1, 2, 4))}

        def between(index: int) -> None:
            if index in plan:
                driver.rebalance(plan[index])
                assert driver.split == plan[index]
                held = [r["blocks"] for r in driver.inventory()]
                assert held == [[b.start, b.stop] for b in map(plan[index].blocks_of, range(3))]

        got = stream_frames(model, stream_batch=True, frames=frames, between=between)
        assert driver.rebalances == 2
    assert torch.equal(got, expected)


def test_each_rank_holds_only_its_own_blocks() -> None:
    full = build_tiny_video_model(seed=0, layers=4).transformer.transformer
    block = sum(p.numel() for p in full.blocks[0].parameters())
    embeddings = sum(p.numel() for name in ("patch_embedding", "condition_embedder") for p in getattr(full, name).parameters())
    head = sum(p.numel() for p in full.proj_out.parameters()) + full.scale_shift_table.numel()
    with staged_tiny(3, 4, split=[0, 1, 3, 4], rebalance=False) as model:
        pipeline = video_pipeline_for(model)
        state = pipeline.create_state({"width": SIZE, "height": SIZE}, {"prompt": "x"})
        ranks = model.stages.driver.inventory()
        rows, (h, w) = state.cache.rows, state.latent_size
    assert [r["blocks"] for r in ranks] == [[0, 1], [1, 3], [3, 4]]
    assert [r["parameters"] for r in ranks] == [embeddings + block, 2 * block, block + head]
    vae = build_tiny_video_model(seed=0, layers=4).vae.vae
    encoder, decoder = ({n: sum(p.numel() for p in getattr(vae, n).parameters()) for n in names} for names in (("encoder", "quant_conv"), ("decoder", "post_quant_conv")))
    assert [r["vae_parameters"] for r in ranks] == [sum(encoder.values()), 0, sum(decoder.values())]  # rank 0 encodes, the last rank decodes
    assert [r["decoders"] for r in ranks] == [0, 0, 1]  # the stream's decode state lives where it decodes
    one_process = build_tiny_video_model(seed=0, layers=4).transformer
    layer_caches = [one_process.new_cache(rows, h, w, num_layers=n).nbytes for n in (1, 2, 1)]
    assert [r["kv_cache_bytes"] for r in ranks] == layer_caches  # each rank: its blocks' layers of the stream's cache


def test_the_staged_transformer_forward_equals_the_one_process_forward() -> None:
    """``model.transformer.forward_chunks`` on stages (what tools call directly): the same flow predictions, chunk after chunk."""
    one = build_tiny_video_model(seed=0, layers=3).transformer
    generator = torch.Generator().manual_seed(5)
    text = torch.randn(1, 8, one.text_dim, generator=generator)
    with staged_tiny(2, 3, rebalance=False) as model:
        staged = model.transformer
        caches = staged.new_cache(2, 8, 8), one.new_cache(2, 8, 8)
        contexts = staged.encode_context(text), one.encode_context(text)
        for _ in range(4):
            latents = torch.randn(2, one.in_channels, 1, 8, 8, generator=generator)
            timesteps = torch.tensor([[700.0], [500.0]])
            got = staged.forward_chunks(latents, timesteps, [caches[0]], contexts[0])
            expected = one.forward_chunks(latents, timesteps, [caches[1]], contexts[1])
            assert torch.equal(got, expected)
