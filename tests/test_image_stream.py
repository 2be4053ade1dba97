"""The ImageStream Python API: frame kinds in and out, updates, async use, bad input."""

from __future__ import annotations

import asyncio

import av
import numpy as np
import pytest
import torch

import streamgen
from streamgen.errors import ConfigError, InputError, ModelLoadError


@pytest.fixture()
def stream(tiny_model):
    return streamgen.ImageStream(tiny_model, width=64, height=64, prompt="a cat", num_inference_steps=2)


def _frame(h=48, w=80, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_numpy_in_numpy_out_at_stream_resolution(stream):
    out = stream(_frame())
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.shape == (64, 64, 3)


def test_torch_uint8_and_float_frames_keep_their_kind(stream):
    out = stream(torch.from_numpy(_frame()))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.uint8 and out.shape == (64, 64, 3)
    chw = torch.rand(3, 64, 64)
    out = stream(chw)
    assert out.dtype == torch.float32 and out.shape == (3, 64, 64) and 0 <= float(out.min()) and float(out.max()) <= 1


def test_video_frames_keep_their_timing(stream):
    frame = av.VideoFrame.from_ndarray(_frame(), format="rgb24")
    frame.pts = 1234
    out = stream(frame)
    assert isinstance(out, av.VideoFrame)
    assert (out.width, out.height, out.pts) == (64, 64, 1234)


def test_same_input_same_output_for_a_seed(tiny_model):
    outs = []
    for _ in range(2):
        s = streamgen.ImageStream(tiny_model, width=64, height=64, seed=11)
        outs.append(s(_frame()))
    assert np.array_equal(outs[0], outs[1])


def test_update_changes_output_and_params(stream):
    frame = _frame()
    before = stream(frame)
    stream.update(prompt="a dog", guidance_scale=2.0)
    assert stream.params.guidance_scale == 2.0
    after = stream(frame)
    assert not np.array_equal(before, after)


def test_async_stream_runs_every_frame(stream):
    async def frames():
        for k in range(3):
            yield _frame(seed=k)

    async def collect():
        return [out async for out in stream.astream(frames())]

    outs = asyncio.run(collect())
    assert len(outs) == 3 and all(o.shape == (64, 64, 3) for o in outs)


def test_frame_batches_with_frame_buffer_size(tiny_model):
    s = streamgen.ImageStream(tiny_model, width=64, height=64, frame_buffer_size=2)
    out = s(np.stack([_frame(), _frame(seed=1)]))
    assert out.shape == (2, 64, 64, 3)
    with pytest.raises(InputError, match="takes 2 frame"):
        s(_frame())


def test_txt2img_stream(tiny_model):
    s = streamgen.ImageStream(tiny_model, width=64, height=64, mode="txt2img", prompt="a cat")
    assert s().shape == (64, 64, 3)
    with pytest.raises(InputError, match="txt2img"):
        s(_frame())


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (np.zeros((64, 64, 4), np.uint8), r"shape \(height, width, 3\)"),
        (np.zeros((64, 64, 3), np.float64), "must be uint8"),
        (np.zeros((64, 64), np.uint8), r"shape \(height, width, 3\)"),
        (np.zeros((2, 2, 3), np.uint8), "between 8x8 and 4096x4096"),
        (torch.full((3, 16, 16), float("nan")), "NaN"),
        (torch.zeros(16, 16, 3, dtype=torch.int32), "must be uint8"),
        ("not a frame", "unsupported frame type str"),
    ],
)
def test_bad_frames_raise_input_errors(stream, frame, message):
    with pytest.raises(InputError, match=message):
        stream(frame)
    assert stream(_frame()).shape == (64, 64, 3)  # the stream still works


def test_bad_settings_raise_config_errors(tiny_model):
    with pytest.raises(ConfigError, match="strength must be between 0 and 1"):
        streamgen.ImageStream(tiny_model, strength=2)
    with pytest.raises(ConfigError, match="prompt must not be an empty list"):
        streamgen.ImageStream(tiny_model, prompt=[])
    with pytest.raises(ConfigError, match="unknown parameter 'colour'"):
        streamgen.ImageStream(tiny_model, colour="red")
    with pytest.raises(ConfigError, match="width must be a multiple of 8, got 100"):
        streamgen.ImageStream(tiny_model, width=100, height=64)


def test_unknown_model_name_is_a_model_load_error():
    with pytest.raises(ModelLoadError):
        streamgen.ImageStream("no-such-model-anywhere")


def test_seed_is_the_streams_noise_seed_and_model_seed_the_weights(tiny_model):
    stream = streamgen.ImageStream(tiny_model, width=64, height=64, seed=5)
    assert stream.params.seed[0].seed == 5
    a = streamgen.ImageStream("tiny", width=64, height=64, model_seed=1)
    b = streamgen.ImageStream("tiny", width=64, height=64, model_seed=2)
    first = next(a.pipeline.model.unet.parameters())
    assert not torch.equal(first, next(b.pipeline.model.unet.parameters()))
