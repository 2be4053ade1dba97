"""Many video streams in one step: shared DiT forwards and VAE calls, each stream equal to its solo run; rollback.

Equality is checked on the uint8 frames (at most 1 apart: larger matmuls may
round differently in the last bit), on every tag (each input frame comes
out exactly once, in order) and on the float KV cache history (atol 1e-4).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from streamgen.models.loading.video_presets import build_tiny_video_model
from streamgen.models.video.kv_cache import RollingKVCache
from streamgen.pipeline.video import VideoPipeline

ATOL = 1e-4
SMALL_WINDOW = {"sink_frames": 1, "ring_frames": 2}  # 3 frames of history: the streams below run far past it



@pytest.fixture(scope="module")
def pipeline():
    return VideoPipeline(build_tiny_video_model(seed=0))


@dataclass(frozen=True)
class StreamPlan:
    """A stream's settings and how many frames it is fed in each call (0: not in that call)."""

    settings: dict[str, Any]
    feeds: tuple[int, ...]

    @property
    def total(self) -> int:
        return sum(self.feeds)

    def clip(self) -> torch.Tensor:
        width, height = self.settings.get("width", 64), self.settings.get("height", 64)
        g = torch.Generator().manual_seed(self.settings["seed"])
        base = torch.randint(0, 256, (height, width, 3), generator=g, dtype=torch.uint8)
        return torch.stack([base.roll(shifts=3 * i, dims=1) for i in range(self.total)])


@dataclass
class StreamResult:
    frames: list[torch.Tensor]
    tags: list[Any]
    state: Any

    @property
    def video(self) -> torch.Tensor:
        return torch.cat(self.frames)


def _settings(width=64, height=64, **settings) -> dict[str, Any]:
    return {"width": width, "height": height, "prompt": "a red fox", **settings}


def _run_together(pipeline: VideoPipeline, plans: list[StreamPlan]) -> list[StreamResult]:
    """Feed every plan's frames, all streams of a call in ONE step; flush each at the end."""
    clips = [p.clip() for p in plans]
    results = [StreamResult([], [], pipeline.create_state(None, p.settings)) for p in plans]
    offsets = [0] * len(plans)
    for call in range(max(len(p.feeds) for p in plans)):
        members = [i for i, p in enumerate(plans) if call < len(p.feeds) and p.feeds[call]]
        frames, tags = [], []
        for i in members:
            count, start = plans[i].feeds[call], offsets[i]
            frames.append(clips[i][start : start + count])
            tags.append(tuple(range(start, start + count)))
            offsets[i] += count
        if not members:
            continue
        outputs = pipeline.step([results[i].state for i in members], frames, tags)
        for i, out in zip(members, outputs):
            results[i].frames.append(out.frames)
            results[i].tags += list(out.tags)
    for result in results:
        out = pipeline.flush(result.state)
        result.frames.append(out.frames)
        result.tags += [t for t in out.tags if t is not None]
    return results


def _assert_same_stream(together: StreamResult, solo: StreamResult, total: int) -> None:
    assert together.tags == solo.tags == list(range(total))  # every input frame once, in order
    assert together.video.shape == solo.video.shape
    assert (together.video.int() - solo.video.int()).abs().max() <= 1
    a, b = together.state.cache, solo.state.cache
    history = a.geometry.scratch_start
    torch.testing.assert_close(a.k[:, :, :history], b.k[:, :, :history], atol=ATOL, rtol=0)
    torch.testing.assert_close(a.v[:, :, :history], b.v[:, :, :history], atol=ATOL, rtol=0)
    assert torch.equal(a.frames_written, b.frames_written)


@dataclass
class ForwardLog:
    """The segments (one per stream) and rows of every DiT forward."""

    calls: list[tuple[int, int]] = dataclasses.field(default_factory=list)  # (segments, rows)


@pytest.fixture()
def forward_log(pipeline, monkeypatch):
    log = ForwardLog()
    forward = pipeline.model.forward_chunks

    def logged(latents, timesteps, segments, context):
        log.calls.append((len(segments), latents.shape[0]))
        return forward(latents, timesteps, segments, context)

    monkeypatch.setattr(pipeline.model, "forward_chunks", logged)
    return log


def _check_against_solo_runs(pipeline, plans, forward_log) -> None:
    together = _run_together(pipeline, plans)
    batched_forwards = len(forward_log.calls)
    solo = [_run_together(pipeline, [plan])[0] for plan in plans]
    solo_forwards = len(forward_log.calls) - batched_forwards
    for plan, t, s in zip(plans, together, solo):
        _assert_same_stream(t, s, plan.total)
    assert batched_forwards < solo_forwards


# -------------------------------------------------------------------- equality
def test_four_streams_mixed_modes_late_joins_many_chunks_equal_solo_runs(pipeline, forward_log):
    plans = [
        # stream batch, 2 steps; fed two chunks at once in call 3
        StreamPlan(_settings(seed=5, num_inference_steps=2, **SMALL_WINDOW), (1, 4, 4, 8, 4, 4, 4, 4, 4)),
        # sequential, 3 steps, joins at call 2, two chunks at once in call 6
        StreamPlan(_settings(seed=6, prompt="ink", use_denoising_batch=False, num_inference_steps=3, **SMALL_WINDOW), (0, 0, 1, 4, 4, 4, 8, 4, 4)),
        # stream batch, 3 steps, another prompt, joins at call 1, default window
        StreamPlan(_settings(seed=7, prompt="a blue whale", num_inference_steps=3), (0, 1, 4, 4, 4, 4, 4, 4, 4)),
        # sequential, 2 steps, joins at call 3 with its first two chunks in one call
        StreamPlan(_settings(seed=8, use_denoising_batch=False, num_inference_steps=2, **SMALL_WINDOW), (0, 0, 0, 5, 4, 4, 4, 4, 4)),
    ]
    forward_log.calls.clear()
    _check_against_solo_runs(pipeline, plans, forward_log)
    assert max(segments for segments, _ in forward_log.calls) == 4  # all four streams in one forward


def test_streams_of_different_resolutions_in_one_step_equal_solo_runs(pipeline, forward_log):
    feeds = (1, 4, 8, 4, 4)
    plans = [
        StreamPlan(_settings(64, 64, seed=1, **SMALL_WINDOW), feeds),
        StreamPlan(_settings(96, 96, seed=2, prompt="ink", use_denoising_batch=False, **SMALL_WINDOW), feeds),
        StreamPlan(_settings(96, 64, seed=3, num_inference_steps=3), feeds),
        StreamPlan(_settings(96, 96, seed=4, num_inference_steps=3, **SMALL_WINDOW), feeds),  # shares with the other 96x96
    ]
    _check_against_solo_runs(pipeline, plans, forward_log)


def test_streams_of_different_chunk_lengths_in_one_step_equal_solo_runs(pipeline, forward_log):
    plans = [
        StreamPlan(_settings(seed=1, chunk_frames=2, **SMALL_WINDOW), (5, 8, 8, 16, 8)),
        StreamPlan(_settings(seed=2, chunk_frames=1, use_denoising_batch=False, **SMALL_WINDOW), (5, 8, 8, 16, 8)),
        StreamPlan(_settings(seed=3, chunk_frames=2, use_denoising_batch=False, num_inference_steps=3), (5, 8, 8, 16, 8)),
    ]
    _check_against_solo_runs(pipeline, plans, forward_log)


def test_one_step_makes_one_vae_call_per_compatible_group(pipeline, monkeypatch):
    plans = [StreamPlan(_settings(seed=s, prompt=f"p{s}", num_inference_steps=1), (1, 4)) for s in range(3)]
    states = [pipeline.create_state(None, p.settings) for p in plans]
    clips = [p.clip() for p in plans]
    pipeline.step(states, [c[:1] for c in clips])
    calls = {"encode": 0, "decode": 0}
    vae = pipeline.model.vae
    for name in calls:
        original = getattr(vae, name)

        def counted(*args, name=name, original=original):
            calls[name] += 1
            return original(*args)

        monkeypatch.setattr(vae, name, counted)
    outputs = pipeline.step(states, [c[1:5] for c in clips])
    assert calls == {"encode": 1, "decode": 1}
    assert all(out.frames.shape[0] == 4 for out in outputs)


# -------------------------------------------------------------------- rollback
def _fingerprint(state) -> dict[str, Any]:
    """Everything a step may change, as plain values and cloned tensors (the scratch slots excluded: dead storage)."""
    cache = state.cache
    history = cache.geometry.scratch_start
    entries = lambda cache_: [e.clone() if isinstance(e, torch.Tensor) else e for e in cache_.entries]  # noqa: E731
    return {
        "k": cache.k[:, :, :history].clone(),
        "v": cache.v[:, :, :history].clone(),
        "frames_written": cache.frames_written.clone(),
        "cache": id(cache),
        "pending_frames": [f.clone() for f in state.pending_frames],
        "pending_tags": list(state.pending_tags),
        "in_flight": [(c.latents.clone(), c.step, c.tags, id(c.context)) for c in state.in_flight],
        "chunks_in": state.chunks_in,
        "counters": dataclasses.asdict(state.counters),
        "context": (id(state.context.current), id(state.context.target), state.context.done, state.context.total),
        "noise": (state.noise.settings, state.noise.level.clone(), state.noise._previous_frame),
        "generator": state.generator.get_state(),
        "base_timesteps": state.base_timesteps.clone(),
        "encoder": (state.encoder.frames_in, entries(state.encoder.cache)),
        "decoder": (state.decoder.latents_in, entries(state.decoder.cache)),
        "params": state.params,
        "latest_params": state.latest_params,
    }


def _assert_same(a: Any, b: Any, where: str = "state") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


class InjectedFault(RuntimeError):
    pass


@dataclass
class Fault:
    """Make the ``nth`` call of ``owner.name`` raise (before it runs, or just after it ran with ``after=True``)."""

    owner: Callable[[VideoPipeline], Any]
    name: str
    nth: int
    after: bool = False

    def install(self, pipeline: VideoPipeline, monkeypatch) -> None:
        owner = self.owner(pipeline)
        original = getattr(owner, self.name)
        calls = {"n": 0}
        after = self.after

        def faulty(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == self.nth and not after:
                raise InjectedFault(f"{self.name} call {self.nth}")
            result = original(*args, **kwargs)
            if calls["n"] == self.nth:
                raise InjectedFault(f"after {self.name} call {self.nth}")
            return result

        monkeypatch.setattr(owner, self.name, faulty)


def _commit_fault(nth: int) -> Fault:
    """Raise right after the nth KV-cache commit of the step has written the cache."""
    return Fault(lambda p: RollingKVCache, "commit", nth, after=True)


def _model(p):
    return p.model


def _vae(p):
    return p.model.vae


# The faulty step: stream A (stream batch, 2 steps) gets 2 chunks (2 rounds), stream B (sequential, 3 steps)
# 1 chunk and a queued prompt update. Forwards: round 1 = [A rows + B step 0], [B step 1], [B step 2];
# round 2 = [A]. Commits: 2, 1, 1, 1. Encode: round 1 = A+B in one call, round 2 = A. Decode likewise.
FAULTS = {
    "first forward": Fault(_model, "forward_chunks", 1),
    "sequential step 2": Fault(_model, "forward_chunks", 3),
    "second round forward": Fault(_model, "forward_chunks", 4),
    "after forward of round 1": Fault(_model, "forward_chunks", 2, after=True),
    "after the last commit": _commit_fault(5),
    "after the first commit": _commit_fault(1),
    "batched encode": Fault(_vae, "encode", 1),
    "encode of round 2": Fault(_vae, "encode", 2),
    "after batched decode": Fault(_vae, "decode", 1, after=True),
    "decode of round 2": Fault(_vae, "decode", 2),
    "prompt encoder": Fault(lambda p: p, "_prompt_context", 1),
}

ROLLBACK_PLANS = (
    _settings(seed=11, num_inference_steps=2, **SMALL_WINDOW),
    _settings(seed=12, prompt="ink", use_denoising_batch=False, num_inference_steps=3, **SMALL_WINDOW),
)
BEFORE = ((1, 1), (4, 4), (4, 4), (4, 4))  # frames per stream in the calls before the faulty one
FAULTY_CALL = (8, 4)
AFTER = ((4, 4), (4, 4))


class Session:
    """Two streams fed the rollback scenario, collecting their outputs."""

    def __init__(self, pipeline: VideoPipeline) -> None:
        self.pipeline = pipeline
        self.states = [pipeline.create_state(None, s) for s in ROLLBACK_PLANS]
        total = sum(c[0] for c in (*BEFORE, FAULTY_CALL, *AFTER))
        self.clips = [StreamPlan(s, (total,)).clip() for s in ROLLBACK_PLANS]
        self.offsets = [0, 0]
        self.frames: list[list[torch.Tensor]] = [[], []]
        self.tags: list[list[Any]] = [[], []]

    def feed(self, counts: tuple[int, int]) -> None:
        frames = [clip[o : o + n] for clip, o, n in zip(self.clips, self.offsets, counts)]
        tags = [tuple(range(o, o + n)) for o, n in zip(self.offsets, counts)]
        outputs = self.pipeline.step(self.states, frames, tags)
        self.offsets = [o + n for o, n in zip(self.offsets, counts)]
        for i, out in enumerate(outputs):
            self.frames[i].append(out.frames)
            self.tags[i] += list(out.tags)

    def queue_update(self) -> None:
        self.pipeline.update(self.states[1], prompt="ink, later", transition_chunks=1)

    def finish(self) -> None:
        for counts in AFTER:
            self.feed(counts)
        for i, state in enumerate(self.states):
            out = self.pipeline.flush(state)
            self.frames[i].append(out.frames)
            self.tags[i] += [t for t in out.tags if t is not None]


@pytest.fixture(scope="module")
def reference(pipeline):
    session = Session(pipeline)
    for counts in BEFORE:
        session.feed(counts)
    session.queue_update()
    session.feed(FAULTY_CALL)
    session.finish()
    return session


@pytest.mark.parametrize("fault", list(FAULTS.values()), ids=list(FAULTS))
def test_restore_after_a_fault_anywhere_in_the_step_loses_and_repeats_nothing(pipeline, reference, fault, monkeypatch):
    session = Session(pipeline)
    for counts in BEFORE:
        session.feed(counts)
    session.queue_update()
    before = [_fingerprint(s) for s in session.states]
    checkpoints = [pipeline.checkpoint(s) for s in session.states]
    with monkeypatch.context() as patch:
        fault.install(pipeline, patch)
        with pytest.raises(InjectedFault):
            session.feed(FAULTY_CALL)
    for state, checkpoint in zip(session.states, checkpoints):
        pipeline.restore(state, checkpoint)
    for state, expected in zip(session.states, before):
        _assert_same(_fingerprint(state), expected)
    session.feed(FAULTY_CALL)  # the retry, without the fault
    session.finish()
    for i in range(2):
        assert session.tags[i] == reference.tags[i] == list(range(len(session.tags[i])))
        assert torch.equal(torch.cat(session.frames[i]), torch.cat(reference.frames[i]))


def test_a_checkpoint_survives_failed_retries_and_is_spent_by_a_success(pipeline, reference, monkeypatch):
    session = Session(pipeline)
    for counts in BEFORE:
        session.feed(counts)
    session.queue_update()
    before = [_fingerprint(s) for s in session.states]
    checkpoints = [pipeline.checkpoint(s) for s in session.states]
    for fault in (FAULTS["second round forward"], FAULTS["after the last commit"]):
        with monkeypatch.context() as patch:
            fault.install(pipeline, patch)
            with pytest.raises(InjectedFault):
                session.feed(FAULTY_CALL)
        for state, checkpoint in zip(session.states, checkpoints):
            pipeline.restore(state, checkpoint)
        for state, expected in zip(session.states, before):
            _assert_same(_fingerprint(state), expected)
    session.feed(FAULTY_CALL)
    with pytest.raises(RuntimeError, match="spent"):
        pipeline.restore(session.states[0], checkpoints[0])
    assert session.states[0].cache.journal is None  # nothing recorded once the step went through
    session.finish()
    for i in range(2):
        assert torch.equal(torch.cat(session.frames[i]), torch.cat(reference.frames[i]))


def test_restore_after_a_fault_in_flush(pipeline, monkeypatch):
    state = pipeline.create_state(None, _settings(seed=3, num_inference_steps=3, **SMALL_WINDOW))
    clip = StreamPlan(_settings(seed=3), (10,)).clip()
    pipeline.step([state], [clip[:1]])
    pipeline.step([state], [clip[1:9]])
    pipeline.step([state], [clip[9:10]])  # a partial chunk pending, two chunks in flight
    twin = pipeline.create_state(None, _settings(seed=3, num_inference_steps=3, **SMALL_WINDOW))
    for frames in (clip[:1], clip[1:9], clip[9:10]):
        pipeline.step([twin], [frames])
    expected = pipeline.flush(twin)
    before = _fingerprint(state)
    checkpoint = pipeline.checkpoint(state)
    with monkeypatch.context() as patch:
        Fault(_vae, "decode", 2).install(pipeline, patch)
        with pytest.raises(InjectedFault):
            pipeline.flush(state)
    pipeline.restore(state, checkpoint)
    _assert_same(_fingerprint(state), before)
    out = pipeline.flush(state)
    assert out.tags == expected.tags and torch.equal(out.frames, expected.frames)
