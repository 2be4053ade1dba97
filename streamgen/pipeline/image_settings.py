"""An image session's settings (one flat mapping, as HTTP, the data channel and the command line send it) → its shape and parameters.

A session is described by one mapping that mixes the stream's fixed shape
(``width``, ``height``, ``frame_buffer_size``, ``mode``,
``use_denoising_batch``) with its live parameters. Both parts are validated
against the shared schema (:mod:`streamgen.params`), the parameters over the
model's own defaults (a txt2img stream starts without CFG), before any state
is built: the server runs this on its event loop for every offer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..config import StreamConfig, StreamParams
from ..errors import ConfigError
from ..params import parse_params, parse_stream_config, split_settings

TXT2IMG_STRENGTH = "strength applies to img2img streams; txt2img streams start from pure noise"


def parse_image_settings(settings: Mapping[str, Any], model_defaults: Mapping[str, Any] | None = None) -> tuple[StreamConfig, StreamParams]:
    """``(config, params)`` of an image session; ConfigError naming the first bad field."""
    config_fields, live_fields = split_settings(settings)
    config = parse_stream_config(config_fields)
    defaults = dict(model_defaults or {})
    if config.mode == "txt2img":
        defaults["cfg_type"] = "none"
    params = parse_params(live_fields, parse_params(defaults) if defaults else None)
    if config.mode == "txt2img" and "strength" in live_fields:
        raise ConfigError(TXT2IMG_STRENGTH)
    return config, params


def full_cfg_rows(params: StreamParams) -> int:
    """UNet rows per frame per step: 2 with full classifier-free guidance (a conditional and an unconditional row)."""
    return 2 if params.cfg_type == "full" and params.guidance_scale != 1.0 else 1
