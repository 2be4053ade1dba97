"""The one parameter schema: valid input parses, bad input gets a clear ConfigError."""

from __future__ import annotations

import math

import pytest

from streamgen.config import StreamParams, WeightedPrompt, WeightedSeed, t_index_list_for_strength
from streamgen.errors import ConfigError
from streamgen.params import parse_params, parse_stream_config, split_settings


def test_prompt_forms_parse_to_weighted_prompts():
    assert parse_params({"prompt": "a cat"}).prompt == (WeightedPrompt("a cat", 1.0),)
    pairs = parse_params({"prompt": [["a cat", 0.7], ["a dog", 0.3]]}).prompt
    objects = parse_params({"prompt": [{"text": "a cat", "weight": 0.7}, {"text": "a dog", "weight": 0.3}]}).prompt
    assert pairs == objects == (WeightedPrompt("a cat", 0.7), WeightedPrompt("a dog", 0.3))


def test_seed_forms_parse():
    assert parse_params({"seed": 5}).seed == (WeightedSeed(5, 1.0),)
    assert parse_params({"seed": [[1, 2], [3, 1]]}).seed == (WeightedSeed(1, 2.0), WeightedSeed(3, 1.0))


def test_updates_apply_on_top_of_a_base():
    base = parse_params({"prompt": "x", "guidance_scale": 2.0})
    updated = parse_params({"delta": 0.5}, base)
    assert (updated.prompt, updated.guidance_scale, updated.delta) == (base.prompt, 2.0, 0.5)


def test_round_trip_through_to_dict():
    params = parse_params({"prompt": [["a", 1], ["b", 2]], "seed": [[1, 1]], "t_index_list": [10, 20]})
    assert parse_params(params.to_dict()) == params


@pytest.mark.parametrize(
    ("update", "message"),
    [
        ({"prompt": []}, "prompt must not be an empty list"),
        ({"prompt": [["a", -1]]}, "weight must be between 0 and"),
        ({"prompt": [["a", 0], ["b", 0]]}, "weights must not all be zero"),
        ({"prompt": 5}, "prompt must be a single value or a list"),
        ({"strength": 1.5}, "strength must be between 0 and 1, got 1.5"),
        ({"strength": -0.1}, "strength must be between 0 and 1"),
        ({"guidance_scale": math.nan}, "guidance_scale must be a finite number, got nan"),
        ({"guidance_scale": "high"}, "guidance_scale must be a finite number"),
        ({"num_inference_steps": True}, "num_inference_steps must be an integer"),
        ({"num_inference_steps": 0}, "num_inference_steps must be between 1 and"),
        ({"t_index_list": [30, 20]}, "strictly increasing"),
        ({"t_index_list": [60]}, r"t_index_list\[0\] must be between 0 and 49"),
        ({"cfg_type": "half"}, "cfg_type must be one of none, full, self, initialize"),
        ({"seed": -1}, "seed must be between 0 and"),
        ({"similarity_filter": "yes"}, "similarity_filter must be true or false"),
        ({"promt": "typo"}, "unknown parameter 'promt'"),
        ({"width": 512}, "width cannot be changed on a running stream"),
    ],
)
def test_bad_values_are_rejected_with_clear_messages(update, message):
    with pytest.raises(ConfigError, match=message):
        parse_params(update)


def test_non_mapping_is_rejected():
    with pytest.raises(ConfigError, match="parameters must be a JSON object"):
        parse_params(["prompt"])  # type: ignore[arg-type]


def test_stream_config_validation():
    assert parse_stream_config({"width": 320, "height": 192, "frame_buffer_size": 2}).width == 320
    with pytest.raises(ConfigError, match="multiple of 8"):
        parse_stream_config({"width": 100})
    with pytest.raises(ConfigError, match="unknown stream setting 'fps'"):
        parse_stream_config({"fps": 30})
    config, live = split_settings({"width": 256, "prompt": "a", "bogus": 1})
    assert config == {"width": 256} and live == {"prompt": "a", "bogus": 1}


@pytest.mark.parametrize(
    ("strength", "steps", "expected"),
    [(0.35, 2, (32, 45)), (1.0, 4, (0, 15, 30, 45)), (1.0, 1, (0,)), (0.0, 1, (49,)), (0.0, 3, (47, 48, 49))],
)
def test_strength_maps_to_grid_indices(strength, steps, expected):
    assert t_index_list_for_strength(strength, steps) == expected


def test_explicit_t_index_list_overrides_strength():
    params = StreamParams(strength=1.0, t_index_list=(20, 30))
    assert params.resolved_t_index_list() == (20, 30)
