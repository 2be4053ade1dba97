"""Which pipeline the server runs, and how a session's settings become a pipeline state.

The server drives every model through the
:class:`~streamgen.pipeline.output.StreamPipeline` protocol. Image pipelines
(and ``identity``) take the shared schema of :mod:`streamgen.params`: the
stream's shape (``width``, ``height``, ``frame_buffer_size``, ``mode``, ...)
is split from its live parameters and both are validated before any state
is built. Any other pipeline (causal video models) receives the settings as
a plain mapping in ``create_state(None, settings)`` and validates them itself;
a :class:`~streamgen.errors.ConfigError` from it is a user mistake like any
other.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..config import StreamConfig, StreamParams
from ..errors import ConfigError
from ..params import PARAM_NAMES, parse_params, parse_stream_config, split_settings
from ..pipeline.image import TXT2IMG_STRENGTH, ImagePipeline
from .identity import IdentityPipeline

IDENTITY_MODEL = "identity"


def load_server_pipeline(model: str, device: str = "auto", dtype: str = "auto", acceleration: str = "none") -> Any:
    """Load ``model`` for serving: ``identity``, an image preset/hub id/path, or a video preset."""
    if model == IDENTITY_MODEL:
        return IdentityPipeline()
    from .. import load_stream_pipeline  # noqa: PLC0415  (torch-heavy; only when serving a model)

    return load_stream_pipeline(model, device=device, dtype=dtype, acceleration=acceleration)


def load_server_pipelines(model: str, devices: tuple[str, ...], replicas: int, device: str, dtype: str, acceleration: str) -> list[Any]:
    """The pipelines to serve: ``replicas`` copies on ``device``, or per ``devices``.

    With ``devices``, a causal video model runs ONE pipeline whose DiT
    blocks are split over them (pipeline stages, :mod:`streamgen.parallel`);
    any other model runs one replica per device, and the server spreads
    sessions over the replicas by predicted load.
    """
    if not devices:
        return [load_server_pipeline(model, device, dtype, acceleration) for _ in range(replicas)]
    from ..stream import is_video_model  # noqa: PLC0415

    if model != IDENTITY_MODEL and is_video_model(model) and len(devices) > 1:
        from .. import load_stream_pipeline  # noqa: PLC0415

        return [load_stream_pipeline(model, devices=list(devices), dtype=dtype, acceleration=acceleration)]
    return [load_server_pipeline(model, d, dtype, acceleration) for d in devices]


def model_name(pipeline: Any) -> str:
    model = getattr(pipeline, "model", None)
    return str(getattr(model, "name", None) or getattr(pipeline, "name", None) or type(pipeline).__name__)


def model_kind(pipeline: Any) -> str:
    """``video`` for causal video pipelines (chunked, their own schema), else ``image``."""
    return "image" if isinstance(pipeline, (ImagePipeline, IdentityPipeline)) else "video"


def live_param_names(pipeline: Any) -> tuple[str, ...]:
    """The live parameters ``pipeline``'s sessions accept (what ``PATCH .../params`` and the page may send)."""
    if model_kind(pipeline) == "image":
        return PARAM_NAMES
    from ..pipeline.video_params import VIDEO_PARAM_NAMES  # noqa: PLC0415

    return VIDEO_PARAM_NAMES


def create_session_state(pipeline: Any, settings: Mapping[str, Any]) -> Any:
    """A new per-session state for ``settings`` (call on the worker thread: may encode prompts)."""
    if isinstance(pipeline, (ImagePipeline, IdentityPipeline)):
        return pipeline.create_state(*parse_image_settings(pipeline, settings))
    return pipeline.create_state(None, dict(settings))


def validate_session_settings(pipeline: Any, settings: Mapping[str, Any]) -> None:
    """Check settings against the schema without building a state (cheap: runs on the event loop)."""
    if isinstance(pipeline, (ImagePipeline, IdentityPipeline)):
        parse_image_settings(pipeline, settings)
        return
    validate = getattr(pipeline, "validate_settings", None)  # video pipelines check their own schema
    if callable(validate):
        validate(settings)


def parse_image_settings(pipeline: Any, settings: Mapping[str, Any]) -> tuple[StreamConfig, StreamParams]:
    """An image session's shape and parameters from its settings, over the model's defaults."""
    config_fields, live_fields = split_settings(settings)
    config = parse_stream_config(config_fields)
    params = parse_params(live_fields, _model_defaults(pipeline, config.mode))
    if config.mode == "txt2img" and "strength" in live_fields:
        raise ConfigError(TXT2IMG_STRENGTH)
    return config, params


def _model_defaults(pipeline: Any, mode: str) -> StreamParams | None:
    defaults = dict(getattr(getattr(pipeline, "model", None), "default_params", None) or {})
    if mode == "txt2img":
        defaults["cfg_type"] = "none"
    return parse_params(defaults) if defaults else None


def parse_update(pipeline: Any, state: Any, changes: Mapping[str, Any], caps: Any = None) -> Any:
    """Validate a live update against a state's current parameters (and the server's caps) without queuing it."""
    params = pipeline.parse_update(state, changes)
    steps = params.num_inference_steps if model_kind(pipeline) == "video" else len(params.resolved_t_index_list())
    if caps is not None and steps > caps.max_steps:
        raise ConfigError(f"{steps} denoising steps are over this server's limit of {caps.max_steps}")
    return params


def warm_prompts(pipeline: Any, params: Any) -> None:
    """Encode the prompts ``params`` name (memoised by the model), so the step that applies them finds them ready.

    Runs on the setup thread, beside the model step: one session's new prompt
    never makes the others wait for the text encoder.
    """
    model = getattr(pipeline, "model", None)
    encode = getattr(model, "encode_prompt", None)
    if not callable(encode):
        return
    texts = [p.text for p in getattr(params, "prompt", ())]
    negative = getattr(params, "negative_prompt", None)
    if isinstance(negative, str):
        texts.append(negative)
    for text in texts:
        try:
            encode(text)
        except UnicodeError as error:
            raise ConfigError(f"the prompt {text[:40]!r} cannot be encoded as text ({error.reason})") from None


def stream_size(state: Any) -> tuple[int, int] | None:
    """The (width, height) a state's frames are processed at, when the state says so."""
    config = getattr(state, "config", None)
    width, height = getattr(config, "width", None), getattr(config, "height", None)
    if isinstance(width, int) and isinstance(height, int):
        return width, height
    return None


def frames_per_step(state: Any) -> int:
    """How many input frames one step of this stream takes (1 unless the state says otherwise)."""
    value = getattr(state, "frames_per_call", 1)
    return value if isinstance(value, int) and value >= 1 else 1


def takes_no_frames(state: Any) -> bool:
    """txt2img image streams step on the input's clock but are given no pixels."""
    return getattr(getattr(state, "config", None), "mode", None) == "txt2img"


def current_params(state: Any) -> dict[str, Any]:
    """The JSON form of a state's parameters (queued updates included) for the HTTP API."""
    params = getattr(state, "latest_params", None) or getattr(state, "params", None)
    return params_to_json(params)


def params_to_json(params: Any) -> dict[str, Any]:
    if params is None:
        return {}
    if hasattr(params, "to_dict"):
        return params.to_dict()
    if isinstance(params, Mapping):
        return dict(params)
    return {"value": repr(params)}
