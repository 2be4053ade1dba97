"""An update accepted while a step is being set up is never lost when that step fails and is rolled back.

The race: the worker checkpoints the states, then the step takes each
state's queued update. A PATCH that lands between the two is taken and
applied by the step; if the step then raises, the rollback must queue that
update again (pipeline/pending.py), not the older one queued at the
checkpoint. Checked for the image and video pipelines, through the same
transactional step the server uses.
"""

from __future__ import annotations

import pytest
import torch

from streamgen.models.loading.video_presets import build_tiny_video_model
from streamgen.pipeline.pending import PendingUpdate
from streamgen.pipeline.video_loading import video_pipeline_for
from streamgen.server.worker.transaction import StepEntry, step_transactionally


def test_the_newest_accepted_update_is_queued_again_after_a_rollback():
    pending: PendingUpdate[str] = PendingUpdate()
    pending.restore(at_checkpoint="A", applied=None)
    assert pending.take() == "A"
    pending.restore(at_checkpoint="A", applied="B")  # the failed step applied B, newer than A
    assert pending.take() == "B"
    pending.set("C")  # queued after the step took B: built over it, so newest
    pending.restore(at_checkpoint="A", applied="B")
    assert pending.take() == "C" and pending.take() is None
    assert pending.latest("current") == "current"


class _Racing:
    """The pipeline, with an update landing right after each checkpoint and the step's model call failing once."""

    def __init__(self, pipeline, update, break_step):
        self.inner, self.update_between, self.break_step = pipeline, update, break_step
        self.failures = 1

    def checkpoint(self, state):
        saved = self.inner.checkpoint(state)
        if self.update_between is not None:
            self.inner.update(state, self.update_between)
            self.update_between = None
        return saved

    def restore(self, state, saved):
        self.inner.restore(state, saved)

    def step(self, states, frames, tags=None):
        if self.failures:
            self.failures -= 1
            with self.break_step():
                return self.inner.step(states, frames, tags)
        return self.inner.step(states, frames, tags)


class _Failing:
    """Replace ``owner.name`` with a call that raises, for one ``with`` block."""

    def __init__(self, owner, name):
        self.owner, self.name = owner, name

    def __call__(self):
        return self

    def __enter__(self):
        self.saved = getattr(self.owner, self.name)

        def broken(*args, **kwargs):
            raise RuntimeError("injected model failure")

        setattr(self.owner, self.name, broken)

    def __exit__(self, *exc):
        setattr(self.owner, self.name, self.saved)


def _prompt_text(params) -> str:
    return params.prompt[0].text


def test_image_an_update_between_checkpoint_and_take_survives_a_failed_step(tiny_pipeline):
    state = tiny_pipeline.create_state(None, {"prompt": "A"})
    frame = torch.full((1, 64, 64, 3), 100, dtype=torch.uint8)
    tiny_pipeline.step([state], [frame])
    racing = _Racing(tiny_pipeline, {"prompt": "B"}, _Failing(tiny_pipeline.model, "unet_forward"))
    (outcome,) = step_transactionally(racing, [StepEntry(state, frame, (None,))])
    assert outcome.error is not None and "injected" in str(outcome.error)
    assert _prompt_text(state.latest_params) == "B", "the accepted update was lost"
    tiny_pipeline.step([state], [frame])
    assert _prompt_text(state.params) == "B"


def test_video_an_update_between_checkpoint_and_take_survives_a_failed_step():
    pipeline = video_pipeline_for(build_tiny_video_model(seed=0))
    state = pipeline.create_state({"width": 64, "height": 64}, {"prompt": "A", "num_inference_steps": 1})
    frames = [torch.randint(0, 256, (1, 64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(i)) for i in range(6)]
    for frame in frames[:4]:
        pipeline.step([state], [frame])
    racing = _Racing(pipeline, {"prompt": "B"}, _Failing(pipeline.model, "forward_chunks"))
    (outcome,) = step_transactionally(racing, [StepEntry(state, frames[4], (None,))])
    assert outcome.error is not None
    assert _prompt_text(state.latest_params) == "B", "the accepted update was lost"
    pipeline.step([state], [frames[4]])
    assert _prompt_text(state.params) == "B"


@pytest.mark.parametrize("late", [True, False])
def test_image_rule_holds_whether_or_not_another_update_came_after_the_step_took_its_own(tiny_pipeline, late):
    state = tiny_pipeline.create_state(None, {"prompt": "A"})
    frame = torch.full((1, 64, 64, 3), 100, dtype=torch.uint8)
    tiny_pipeline.step([state], [frame])
    saved = tiny_pipeline.checkpoint(state)
    tiny_pipeline.update(state, prompt="B")  # between checkpoint and take
    with _Failing(tiny_pipeline.model, "unet_forward")():
        state_step = pytest.raises(RuntimeError)
        with state_step:
            tiny_pipeline.step([state], [frame])  # takes and applies B, then fails
    if late:
        tiny_pipeline.update(state, prompt="C")  # after the step took B
    tiny_pipeline.restore(state, saved)
    assert _prompt_text(state.latest_params) == ("C" if late else "B")
