"""Several streams in one batched step give exactly their solo results."""

from __future__ import annotations

import torch

from streamgen.config import StreamConfig
from tests.pipeline.helpers import random_frames, record_unet_calls

SIZE = 64

SESSIONS = [
    (StreamConfig(width=SIZE, height=SIZE), {"prompt": "a cat", "t_index_list": [20, 40], "cfg_type": "self", "seed": 1}),
    (
        StreamConfig(width=SIZE, height=SIZE),
        {"prompt": "a dog", "t_index_list": [5, 25, 45], "cfg_type": "full", "guidance_scale": 2.0, "seed": 5},
    ),
    (StreamConfig(width=SIZE, height=SIZE, frame_buffer_size=2), {"prompt": "a fox", "t_index_list": [30], "cfg_type": "none"}),
    (StreamConfig(width=SIZE, height=SIZE, use_denoising_batch=False), {"prompt": "a owl", "num_inference_steps": 2, "cfg_type": "initialize", "guidance_scale": 1.5}),
]


def _frames_for(config, count, seed):
    return random_frames(count, SIZE, seed=seed, batch=config.frame_buffer_size)


def test_batched_step_equals_solo_runs(tiny_pipeline, tiny_model):
    steps = 5
    inputs = [_frames_for(config, steps, seed=i) for i, (config, _) in enumerate(SESSIONS)]

    solo = []
    for (config, params), frames in zip(SESSIONS, inputs):
        state = tiny_pipeline.create_state(config, params)
        solo.append([tiny_pipeline.step([state], [f])[0].frames for f in frames])

    states = [tiny_pipeline.create_state(config, params) for config, params in SESSIONS]
    batched = [[] for _ in states]
    calls_per_step = []
    for k in range(steps):
        with record_unet_calls(tiny_model) as calls:
            outs = tiny_pipeline.step(states, [frames[k] for frames in inputs])
        calls_per_step.append(len(calls.rows))
        for i, out in enumerate(outs):
            batched[i].append(out.frames)

    for i in range(len(states)):
        for k in range(steps):
            diff = (batched[i][k].int() - solo[i][k].int()).abs()
            assert diff.max() <= 1, f"session {i} step {k} differs from its solo run"
            assert diff.float().mean() < 0.01
    # first step: the 3-slot stream prefills over 2 rounds; then every round is ONE call for all streams
    assert calls_per_step[0] == 3
    assert calls_per_step[1:] == [2] * (steps - 1)  # the sequential-mode stream needs 2 rounds


def test_sessions_do_not_share_state(tiny_pipeline):
    config = StreamConfig(width=SIZE, height=SIZE)
    a = tiny_pipeline.create_state(config, {"prompt": "a cat"})
    b = tiny_pipeline.create_state(config, {"prompt": "a cat"})
    frames = random_frames(2, SIZE)
    tiny_pipeline.step([a, b], [frames[0], frames[1]])
    assert a.buffer.data_ptr() != b.buffer.data_ptr()
    assert a.init_noise.data_ptr() != b.init_noise.data_ptr()
    assert a.stock_noise.data_ptr() != b.stock_noise.data_ptr()
    assert not torch.equal(a.last_output, b.last_output)
