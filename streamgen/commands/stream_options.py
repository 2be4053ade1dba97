"""Command-line options for a stream's settings, generated from the one parameter schema.

Every live parameter of :class:`~streamgen.config.StreamParams` gets a flag
(``guidance_scale`` → ``--guidance-scale``), and ``--params JSON`` accepts the
same mapping the Python API and the HTTP API take. Flags only collect raw
values: validation is left to :mod:`streamgen.params`, so a bad value gets the
same message on the command line as anywhere else, and a field added to the
schema gets a flag without touching this file.
"""

from __future__ import annotations

import argparse
import json
import typing
from pathlib import Path
from typing import Any, Literal

from ..config import StreamParams, field_names
from ..errors import ConfigError

PARAM_HELP = {
    "prompt": "text prompt (blend several with --params '{\"prompt\": [[\"a\", 0.7], [\"b\", 0.3]]}')",
    "negative_prompt": "negative prompt (used by cfg_type full and initialize)",
    "prompt_interpolation": "how blended prompts are mixed",
    "transition_frames": "frames over which a prompt change morphs",
    "guidance_scale": "classifier-free guidance scale (1 disables guidance)",
    "delta": "residual-CFG delta",
    "cfg_type": "residual CFG mode",
    "seed": "noise seed (blend several with --params)",
    "seed_interpolation": "how blended seeds are mixed",
    "strength": "0-1: how far the output may move from the input (1 = from pure noise)",
    "num_inference_steps": "denoising steps",
    "t_index_list": "explicit timestep-grid indices, e.g. 32,45 (overrides strength and steps)",
    "renoise": "re-noise between steps with the stream's fixed noise",
    "similarity_filter": "skip input frames that barely changed (stochastic similarity filter)",
    "similarity_threshold": "similarity above which frames may be skipped",
    "max_skip_frames": "most consecutive frames the similarity filter may skip",
}


def option_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def raw_value(text: str) -> Any:
    """A flag's text as JSON when it parses (numbers, true, null), else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def index_list(text: str) -> Any:
    """``32,45`` or ``[32, 45]`` → [32, 45]; anything else is passed on for the schema to reject."""
    parts = text.strip().strip("[]").split(",")
    try:
        return [int(part) for part in parts]
    except ValueError:
        return raw_value(text)


def _add_param_option(group: argparse._ArgumentGroup, field: str, annotation: Any, default: Any) -> None:
    help_text = PARAM_HELP.get(field, "live stream parameter")
    flag = option_name(field)
    if typing.get_origin(annotation) is Literal:
        group.add_argument(flag, dest=field, choices=typing.get_args(annotation), default=None, help=f"{help_text} (default {default})")
    elif isinstance(default, bool):
        group.add_argument(flag, dest=field, action=argparse.BooleanOptionalAction, default=None, help=f"{help_text} (default {'on' if default else 'off'})")
    elif isinstance(default, str) or field == "prompt":
        group.add_argument(flag, dest=field, type=str, default=None, metavar="TEXT", help=help_text)
    elif field == "t_index_list":
        group.add_argument(flag, dest=field, type=index_list, default=None, metavar="I,J,...", help=help_text)
    else:
        shown = default[0].seed if field == "seed" else default
        group.add_argument(flag, dest=field, type=raw_value, default=None, metavar="N", help=f"{help_text} (default {shown})")


def add_param_options(parser: argparse.ArgumentParser) -> None:
    """One flag per live parameter, plus ``--params JSON``."""
    group = parser.add_argument_group("live parameters", "the stream's parameters; defaults suit the model (see the README table)")
    group.add_argument("--params", default=None, metavar="JSON", help="parameters (and width/height/mode/frame_buffer_size) as a JSON object, or @file.json; flags override it")
    hints = typing.get_type_hints(StreamParams)
    defaults = StreamParams()
    for field in field_names(StreamParams):
        _add_param_option(group, field, hints[field], getattr(defaults, field))


IMAGE_MODES = ("img2img", "txt2img")
VIDEO_MODES = ("vid2vid", "txt2vid")


def add_stream_shape_options(parser: argparse.ArgumentParser, *, video_modes: bool = False) -> None:
    """The fixed shape of the stream (:class:`~streamgen.config.StreamConfig`; ``video_modes``: ``--mode`` offers the video modes too)."""
    group = parser.add_argument_group("stream shape")
    group.add_argument("--width", type=raw_value, default=None, help="output width, a multiple of 8 (default: the model's)")
    group.add_argument("--height", type=raw_value, default=None, help="output height, a multiple of 8 (default: the model's)")
    group.add_argument("--frame-buffer-size", type=raw_value, default=None, metavar="F", help="frames per model call (default 1)")
    if video_modes:
        group.add_argument("--mode", choices=IMAGE_MODES + VIDEO_MODES, default=None, help="image models: img2img restyles the input, txt2img ignores its pictures (default img2img); video models: vid2vid restyles the input (default), txt2vid generates from the prompt with no input (run: --frames N; camera: --input none)")
    else:
        group.add_argument("--mode", choices=IMAGE_MODES, default=None, help="img2img restyles the input; txt2img ignores its pictures (default img2img)")
    group.add_argument("--no-denoising-batch", dest="use_denoising_batch", action="store_const", const=False, default=None, help="run the denoising steps one after another instead of in one stream batch")


def load_params_json(text: str | None) -> dict[str, Any]:
    """``--params`` value (JSON text or ``@path``) → a mapping, or ConfigError saying what is wrong."""
    if text is None:
        return {}
    source = "--params"
    if text.startswith("@"):
        path = Path(text[1:])
        try:
            text = path.read_text()
        except OSError as error:
            raise ConfigError(f"--params: cannot read {str(path)!r}: {error.strerror or error}") from None
        source = f"--params file {str(path)!r}"
    try:
        value = json.loads(text)
    except ValueError as error:
        raise ConfigError(f"{source} is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{source} must be a JSON object like {{\"prompt\": \"a watercolor\"}}, got {type(value).__name__}")
    return value


SHAPE_FIELDS = ("width", "height", "frame_buffer_size", "mode", "use_denoising_batch")


def collect_settings(args: argparse.Namespace) -> dict[str, Any]:
    """``--params`` merged with the flags the user gave (flags win); not yet validated."""
    settings = load_params_json(args.params)
    for field in (*field_names(StreamParams), *SHAPE_FIELDS):
        value = getattr(args, field, None)
        if value is not None:
            settings[field] = value
    return settings
