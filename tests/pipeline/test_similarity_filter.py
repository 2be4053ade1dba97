"""The stochastic similarity filter: probabilities, max skips, counter reset."""

from __future__ import annotations

import pytest
import torch

from streamgen.config import StreamConfig
from streamgen.pipeline.similarity import SimilarityFilter, skip_probability
from tests.pipeline.helpers import random_frames, record_unet_calls

SIZE = 64


@pytest.mark.parametrize(
    ("cosine", "threshold", "expected"),
    [(1.0, 0.98, 1.0), (0.99, 0.98, 0.5), (0.98, 0.98, 0.0), (0.5, 0.98, 0.0), (0.95, 0.9, 0.5)],
)
def test_skip_probability(cosine, threshold, expected):
    assert skip_probability(cosine, threshold) == pytest.approx(expected)


def test_identical_frames_skip_up_to_the_limit_and_the_counter_resets():
    """With max_skip 3 the pattern repeats: the reference never reset its counter and stopped skipping."""
    filt = SimilarityFilter(seed=0)
    frame = torch.ones(1, 3, 8, 8)
    decisions = [filt.should_skip(frame, threshold=0.98, max_skip=3) for _ in range(13)]
    assert decisions == [False, True, True, True] * 3 + [False]


def test_skip_rate_follows_the_probability_with_seeded_randomness():
    reference = torch.zeros(1, 1, 1, 2)
    reference[..., 0] = 1.0
    near = reference.clone()
    angle = torch.arccos(torch.tensor(0.99))  # cosine 0.99 with threshold 0.98 → p = 0.5
    near[..., 0], near[..., 1] = torch.cos(angle), torch.sin(angle)
    decisions_a, decisions_b = [], []
    for decisions in (decisions_a, decisions_b):
        filt = SimilarityFilter(seed=42)
        filt.should_skip(reference, 0.98, 1000)
        for _ in range(2000):
            skipped = filt.should_skip(near, 0.98, 1000)
            decisions.append(skipped)
            if not skipped:
                filt.mark_processed(reference)  # keep comparing against the same reference
    assert decisions_a == decisions_b  # seeded: reproducible
    assert 0.45 < sum(decisions_a) / len(decisions_a) < 0.55


def test_dissimilar_frames_are_always_processed():
    filt = SimilarityFilter(seed=0)
    a, b = torch.ones(1, 3, 8, 8), -torch.ones(1, 3, 8, 8)
    assert [filt.should_skip(x, 0.98, 10) for x in (a, b, a, b)] == [False] * 4


def test_pipeline_reuses_the_previous_output_without_model_calls(tiny_pipeline, tiny_model):
    config = StreamConfig(width=SIZE, height=SIZE)
    state = tiny_pipeline.create_state(config, {"similarity_filter": True, "max_skip_frames": 2, "t_index_list": [30]})
    frame = random_frames(1, SIZE)[0]
    first = tiny_pipeline.step([state], [frame])[0]
    with record_unet_calls(tiny_model) as calls:
        outs = [tiny_pipeline.step([state], [frame], [(k,)])[0] for k in range(3)]
    assert [o.skipped for o in outs] == [True, True, False]
    assert calls.rows == [1]
    assert torch.equal(outs[0].frames, first.frames)
    assert outs[0].tags == (0,)
    assert state.counters.frames_skipped == 2


def test_a_parameter_update_forces_the_next_frame_through(tiny_pipeline):
    config = StreamConfig(width=SIZE, height=SIZE)
    state = tiny_pipeline.create_state(config, {"similarity_filter": True, "t_index_list": [30]})
    frame = random_frames(1, SIZE)[0]
    first = tiny_pipeline.step([state], [frame])[0]
    tiny_pipeline.update(state, prompt="something else")
    out = tiny_pipeline.step([state], [frame])[0]
    assert not out.skipped
    assert not torch.equal(out.frames, first.frames)
