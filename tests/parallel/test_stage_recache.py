"""A prompt switch by KV re-cache over pipeline stages (2 CPU ranks) gives the frames of one process.

Over the stages the stream's chunks on the ring finish before the re-cache,
so the reference is the one-process stream in sequential mode, where no
chunk is in flight at a step boundary either.
"""

from __future__ import annotations

import torch

from streamgen.models.loading.video_presets import build_tiny_video_model
from streamgen.pipeline.video_loading import video_pipeline_for

from .staging import SIZE, input_frames, staged_tiny

LAYERS = 3
SWITCH_AT = 14  # input frame index: past the first chunks, with the window full and rolling


def _run(model, frames, *, stream_batch: bool, switch: str = "recache"):
    pipeline = video_pipeline_for(model)
    state = pipeline.create_state(
        {"width": SIZE, "height": SIZE, "use_denoising_batch": stream_batch},
        {"prompt": "a red fox", "num_inference_steps": 2, "seed": 3, "prompt_switch": switch},
    )
    outputs = []
    for index, frame in enumerate(frames):
        if index == SWITCH_AT:
            pipeline.update(state, {"prompt": "a blue whale in the deep sea"})
        outputs.append(pipeline.step([state], [frame])[0].frames)
    outputs.append(pipeline.flush(state).frames)
    return torch.cat(outputs), state


def test_a_recache_over_two_ranks_gives_the_one_process_frames():
    frames = input_frames(25)
    expected, reference = _run(build_tiny_video_model(seed=0, layers=LAYERS), frames, stream_batch=False)
    assert reference.recaches == 1 and reference.recache_forwards > 0
    with staged_tiny(2, LAYERS) as model:
        got, state = _run(model, frames, stream_batch=True)  # one dataflow over the stages, whichever mode
        assert state.recaches == 1 and state.recache_forwards == reference.recache_forwards
        assert model.stages.driver.failure is None
    assert got.shape == expected.shape and torch.equal(got, expected)


def test_a_staged_recache_changes_the_frames_after_the_switch_only():
    frames = input_frames(25)
    with staged_tiny(2, LAYERS) as model:
        recached, _ = _run(model, frames, stream_batch=True)
        blended, _ = _run(model, frames, stream_batch=True, switch="blend")
    before = 1 + 4 * ((SWITCH_AT - 1) // 4)  # frames of the chunks finished before the switch
    assert torch.equal(recached[:before], blended[:before])
    assert not torch.equal(recached[before:], blended[before:])
