"""Streaming Wan VAE: chunk-by-chunk encode/decode equals diffusers' whole-clip encode/decode."""

from __future__ import annotations

import pytest
import torch

from streamgen.errors import InputError
from streamgen.models.video.stream_vae import StreamingWanVAE
from streamgen.models.video.tiny_video import seeded_build, tiny_wan_vae

SIZE = 32


@pytest.fixture(scope="module")
def vae():
    return StreamingWanVAE(seeded_build(0, tiny_wan_vae).eval())


def _clip(frames: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, frames, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _normalised(vae: StreamingWanVAE, moments_mean: torch.Tensor) -> torch.Tensor:
    return (moments_mean - vae._mean) * vae._inv_std


@torch.no_grad()
def test_streaming_encode_equals_whole_clip(vae):
    clip = _clip(13)
    whole = _normalised(vae, vae.vae.encode(clip).latent_dist.mode())
    state = vae.new_encode_state()
    # first call: 1 frame; then 4-frame groups, also two groups in one call
    parts = [vae.encode(clip[:, :, :1], state), vae.encode(clip[:, :, 1:5], state), vae.encode(clip[:, :, 5:13], state)]
    streamed = torch.cat(parts, dim=2)
    assert [p.shape[2] for p in parts] == [1, 1, 2]
    torch.testing.assert_close(streamed, whole, atol=1e-5, rtol=0)


@torch.no_grad()
def test_streaming_decode_equals_whole_clip(vae):
    latents = torch.randn(1, 16, 4, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(1))
    raw = latents / vae._inv_std + vae._mean
    whole = vae.vae.decode(raw).sample
    state = vae.new_decode_state()
    parts = [vae.decode(latents[:, :, :1], state), vae.decode(latents[:, :, 1:2], state), vae.decode(latents[:, :, 2:4], state)]
    assert [p.shape[2] for p in parts] == [1, 4, 8]
    torch.testing.assert_close(torch.cat(parts, dim=2), whole, atol=1e-5, rtol=0)


@torch.no_grad()
def test_two_streams_never_share_caches(vae):
    a, b = _clip(9, seed=2), _clip(9, seed=3)
    solo = vae.new_encode_state()
    expected = torch.cat([vae.encode(a[:, :, :1], solo), vae.encode(a[:, :, 1:5], solo), vae.encode(a[:, :, 5:9], solo)], dim=2)
    sa, sb = vae.new_encode_state(), vae.new_encode_state()
    out = []
    for lo, hi in ((0, 1), (1, 5), (5, 9)):  # interleave the two streams
        out.append(vae.encode(a[:, :, lo:hi], sa))
        vae.encode(b[:, :, lo:hi], sb)
    torch.testing.assert_close(torch.cat(out, dim=2), expected, atol=0, rtol=0)


@torch.no_grad()
def test_reset_starts_a_new_clip(vae):
    clip = _clip(5)
    state = vae.new_encode_state()
    first = vae.encode(clip[:, :, :1], state)
    vae.encode(clip[:, :, 1:5], state)
    state.reset()
    torch.testing.assert_close(vae.encode(clip[:, :, :1], state), first, atol=0, rtol=0)


def test_wrong_frame_counts_are_refused(vae):
    state = vae.new_encode_state()
    with pytest.raises(InputError, match="1 \\+ 4k"):
        vae.encode(_clip(4), state)
    vae.encode(_clip(1), state)
    with pytest.raises(InputError, match="multiple of 4"):
        vae.encode(_clip(3), state)
    with pytest.raises(InputError, match="latents must be"):
        vae.decode(torch.zeros(1, 3, 1, 4, 4), vae.new_decode_state())


@torch.no_grad()
def test_batched_encode_and_decode_equal_each_streams_own_calls(vae):
    """Streams at different points (first chunk, second, later) in one batched call: grouped, each exact."""
    clips = [_clip(13, seed=s) for s in range(3)]
    solo_states = [vae.new_encode_state() for _ in clips]
    batch_states = [vae.new_encode_state() for _ in clips]
    # stream 0 starts two chunks before stream 1, stream 2 starts with stream 1
    starts = [0, 2, 2]
    bounds = [(0, 1), (1, 5), (5, 9), (9, 13)]
    solo_out = {i: [] for i in range(3)}
    batch_out = {i: [] for i in range(3)}
    for call in range(4):
        members = [i for i in range(3) if 0 <= call - starts[i] < len(bounds)]
        pieces = [clips[i][:, :, slice(*bounds[call - starts[i]])] for i in members]
        for i, piece in zip(members, pieces):
            solo_out[i].append(vae.encode(piece, solo_states[i]))
        for i, latent in zip(members, vae.encode_batch(pieces, [batch_states[i] for i in members])):
            batch_out[i].append(latent)
    for i in range(3):
        torch.testing.assert_close(torch.cat(batch_out[i], dim=2), torch.cat(solo_out[i], dim=2), atol=1e-5, rtol=0)
        assert batch_states[i].frames_in == solo_states[i].frames_in
        assert batch_states[i].cache.signature() == solo_states[i].cache.signature()
    # decode the latents back, stream 2 joining one call late
    latents = [torch.cat(solo_out[i], dim=2) for i in range(3)]
    solo_dec = [vae.new_decode_state() for _ in clips]
    batch_dec = [vae.new_decode_state() for _ in clips]
    starts = [0, 0, 1]
    for call in range(4):
        members = [i for i in range(3) if 0 <= call - starts[i] < latents[i].shape[2]]
        pieces = [latents[i][:, :, call - starts[i] : call - starts[i] + 1] for i in members]
        expected = [vae.decode(piece, solo_dec[i]) for i, piece in zip(members, pieces)]
        got = vae.decode_batch(pieces, [batch_dec[i] for i in members])
        for e, g in zip(expected, got):
            torch.testing.assert_close(g, e, atol=1e-5, rtol=0)


def test_batched_calls_refuse_a_stream_twice(vae):
    state = vae.new_encode_state()
    with pytest.raises(InputError, match="only once"):
        vae.encode_batch([_clip(1), _clip(1)], [state, state])
    with pytest.raises(InputError, match="inputs"):
        vae.encode_batch([_clip(1)], [state, vae.new_encode_state()])
