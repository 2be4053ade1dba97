"""A batched step that raises for one session leaves the others exactly as their solo runs (real pipelines).

One session's state is corrupted so that the shared step raises half-way,
after every state was already touched (queued updates applied, counters,
similarity filter, prompt transitions, noise generators, KV caches). The
worker's transactional step must restore them all, find the culprit, and
give every other session exactly the frames it would have got alone: none
duplicated, none lost, and a live update accepted before the failure still
applied.
"""

from __future__ import annotations

import pytest
import torch

from streamgen.models.loading.video_presets import build_tiny_video_model
from streamgen.pipeline import ImagePipeline
from streamgen.pipeline.video import VideoPipeline
from streamgen.server.worker.transaction import StepEntry, step_transactionally

IMAGE_SETTINGS = [
    {"prompt": "a red fox", "seed": 1, "cfg_type": "self", "guidance_scale": 1.4, "num_inference_steps": 2},
    {"prompt": "a blue boat", "seed": 2, "similarity_filter": True, "similarity_threshold": 0.5, "num_inference_steps": 3},
    {"prompt": "a green hill", "seed": 3, "cfg_type": "initialize", "guidance_scale": 1.2, "num_inference_steps": 2},
]


def _frames(step: int, index: int, size: int = 64, count: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 * index + step)
    return torch.randint(0, 256, (count, size, size, 3), generator=g, dtype=torch.uint8)


def _image_state(pipeline: ImagePipeline, settings: dict):
    from streamgen.config import StreamConfig

    return pipeline.create_state(StreamConfig(width=64, height=64), settings)


def _break(state) -> None:
    """A state whose step raises in the shared UNet round (its noise no longer matches its latents)."""
    state.init_noise = state.init_noise[..., :3]


@pytest.fixture()
def image_pipeline(tiny_model) -> ImagePipeline:
    return ImagePipeline(tiny_model)


def test_image_step_that_raises_for_one_session_leaves_the_others_equal_to_solo_runs(image_pipeline):
    pipeline = image_pipeline
    steps = 5
    update = {"prompt": "a stormy sea", "transition_frames": 2}

    # Solo references: each healthy stream alone, with the same live update queued before step 1.
    reference = {}
    for i in (0, 1):
        state = _image_state(pipeline, IMAGE_SETTINGS[i])
        outs = []
        for step in range(steps):
            if step == 1:
                pipeline.update(state, update)
            outs.append(pipeline.step([state], [_frames(step, i)], [(f"{i}-{step}",)])[0])
        reference[i] = (outs, state.counters)

    states = [_image_state(pipeline, s) for s in IMAGE_SETTINGS]
    results = {0: [], 1: []}
    for step in range(steps):
        if step == 1:
            for i in (0, 1):
                pipeline.update(states[i], update)  # accepted (a PATCH answered 200) just before the failing step
            _break(states[2])
        live = [i for i in range(3) if not (step > 1 and i == 2)]
        entries = [StepEntry(states[i], _frames(step, i), (f"{i}-{step}",)) for i in live]
        before = states[2].counters.frames_in if step == 1 else None
        outcomes = step_transactionally(pipeline, entries)
        for i, outcome in zip(live, outcomes):
            if i == 2:
                if step == 1:
                    assert outcome.error is not None, "the broken session is reported"
                    assert states[2].counters.frames_in == before, "and left as it was"
                continue
            assert outcome.error is None
            results[i].append(outcome.output)

    for i in (0, 1):
        expected, counters = reference[i]
        assert len(results[i]) == steps
        for got, want in zip(results[i], expected):
            assert got.tags == want.tags, "every frame once, in order"
            assert got.skipped == want.skipped
            assert (got.frames.int() - want.frames.int()).abs().max() <= 1
        assert states[i].counters == counters, "no frame counted twice"
        assert states[i].params.prompt[0].text == "a stormy sea", "the accepted update was applied"


def test_restore_keeps_an_update_queued_after_the_checkpoint(image_pipeline):
    pipeline = image_pipeline
    state = _image_state(pipeline, IMAGE_SETTINGS[0])
    pipeline.update(state, {"strength": 0.5})
    saved = pipeline.checkpoint(state)
    pipeline.apply_pending(state)  # a step consumed it, then failed...
    pipeline.update(state, {"seed": 9})  # ...and a newer PATCH arrived meanwhile (parsed over the first)
    pipeline.restore(state, saved)
    queued = state.latest_params
    assert queued.strength == 0.5 and queued.seed[0].seed == 9


# ---------------------------------------------------------------------- video
@pytest.fixture(scope="module")
def video_pipeline() -> VideoPipeline:
    return VideoPipeline(build_tiny_video_model(seed=0))


VIDEO_SETTINGS = [
    {"prompt": "a river", "seed": 5, "width": 64, "height": 64, "num_inference_steps": 2, "sink_frames": 1, "ring_frames": 2},
    {"prompt": "a city", "seed": 6, "width": 64, "height": 64, "num_inference_steps": 2, "use_denoising_batch": False, "sink_frames": 1, "ring_frames": 2},
    {"prompt": "a forest", "seed": 7, "width": 64, "height": 64, "num_inference_steps": 2, "sink_frames": 1, "ring_frames": 2},
]


def _video_frames(step: int, index: int, count: int = 4) -> torch.Tensor:
    return torch.cat([_frames(step * 10 + j, index + 10) for j in range(count)])


def test_video_step_that_raises_for_one_session_leaves_the_others_equal_to_solo_runs(video_pipeline, monkeypatch):
    pipeline = video_pipeline
    steps = 6

    def run_solo(i: int) -> list:
        state = pipeline.create_state(None, dict(VIDEO_SETTINGS[i]))
        outs = []
        for step in range(steps):
            if step == 2:
                pipeline.update(state, {"prompt": "a storm"})
            frames = _video_frames(step, i)
            outs.append(pipeline.step([state], [frames], [tuple(f"{i}-{step}-{j}" for j in range(4))])[0])
        return outs

    reference = {i: run_solo(i) for i in (0, 1)}
    states = [pipeline.create_state(None, dict(s)) for s in VIDEO_SETTINGS]
    got = {0: [], 1: []}
    for step in range(steps):
        if step == 2:
            for i in (0, 1):
                pipeline.update(states[i], {"prompt": "a storm"})
            # Session 2's chunks in flight are corrupted: the shared forward raises after the VAE encoded everyone.
            for chunk in states[2].in_flight:
                chunk.latents = chunk.latents[:, :1]
        live = [0, 1] if step > 2 else [0, 1, 2]
        entries = [StepEntry(states[i], _video_frames(step, i), tuple(f"{i}-{step}-{j}" for j in range(4))) for i in live]
        outcomes = step_transactionally(pipeline, entries)
        for i, outcome in zip(live, outcomes):
            if i == 2:
                assert (outcome.error is not None) == (step == 2)
                continue
            assert outcome.error is None, outcome.error
            got[i].append(outcome.output)

    for i in (0, 1):
        for mine, theirs in zip(got[i], reference[i]):
            assert mine.tags == theirs.tags, "every input frame comes out once, in order"
            assert mine.frames.shape == theirs.frames.shape
            if mine.frames.numel():
                assert (mine.frames.int() - theirs.frames.int()).abs().max() <= 1
        assert states[i].params.prompt[0].text == "a storm"


class _FaultyCheckpoints:
    """The image pipeline, with checkpoint or restore raising for one chosen state (fault injection)."""

    def __init__(self, pipeline, victim, where):
        self.inner, self.victim, self.where = pipeline, victim, where

    def checkpoint(self, state):
        if self.where == "checkpoint" and state is self.victim:
            raise RuntimeError("checkpoint failed")
        return self.inner.checkpoint(state)

    def restore(self, state, saved):
        if self.where == "restore" and state is self.victim:
            raise RuntimeError("restore failed")
        self.inner.restore(state, saved)

    def step(self, states, frames, tags=None):
        return self.inner.step(states, frames, tags)


@pytest.mark.parametrize("where", ["checkpoint", "restore"])
def test_a_failing_checkpoint_or_restore_fails_only_its_session_and_the_others_equal_solo_runs(image_pipeline, where):
    from streamgen.server.worker.transaction import step_with_report

    pipeline = image_pipeline
    reference = []
    for i in (0, 1):
        state = _image_state(pipeline, IMAGE_SETTINGS[i])
        reference.append(pipeline.step([state], [_frames(0, i)])[0].frames)
    healthy = [_image_state(pipeline, IMAGE_SETTINGS[i]) for i in (0, 1)]
    victim = _image_state(pipeline, IMAGE_SETTINGS[2])
    if where == "restore":
        _break(victim)  # the batch must fail, so that restoring is needed
    entries = [StepEntry(s, _frames(0, i), (None,)) for i, s in enumerate([*healthy, victim])]
    report = step_with_report(_FaultyCheckpoints(pipeline, victim, where), entries)
    outcomes = report.outcomes
    assert not report.clean
    assert outcomes[2].error is not None and where in str(outcomes[2].error)
    for i in (0, 1):
        assert outcomes[i].error is None and torch.equal(outcomes[i].output.frames, reference[i])
