"""Which pipeline the server runs, and the server's few rules on top of the pipeline contract.

Everything else the server needs of a pipeline goes through
:mod:`streamgen.pipeline.contract`: its kind, its parameter schema, what a
session costs, how a state is built and described.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...errors import ConfigError
from ...pipeline.contract import Capabilities
from ...preset_names import IDENTITY

IDENTITY_MODEL = IDENTITY


def load_server_pipeline(model: str, device: str = "auto", dtype: str = "auto", acceleration: str = "none") -> Any:
    """Load ``model`` for serving: ``identity``, an image preset/hub id/path, or a video preset."""
    if model == IDENTITY_MODEL:
        from ...pipeline.identity import IdentityPipeline  # noqa: PLC0415

        return IdentityPipeline()
    from ... import load_stream_pipeline  # noqa: PLC0415  (torch-heavy; only when serving a model)

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
    from ...stream import is_video_model  # noqa: PLC0415

    if model != IDENTITY_MODEL and is_video_model(model) and len(devices) > 1:
        from ... import load_stream_pipeline  # noqa: PLC0415

        return [load_stream_pipeline(model, devices=list(devices), dtype=dtype, acceleration=acceleration)]
    return [load_server_pipeline(model, d, dtype, acceleration) for d in devices]


def attach_server_controls(pipeline: Any, controlnets: tuple[str, ...], ip_adapter: str | None, preprocessor_models: tuple[str, ...]) -> None:
    """Load what the operator lets sessions steer with (``--controlnet``, ``--ip-adapter``, ``--preprocessor-model``).

    After this the pipeline loads nothing on a client's request: a session
    naming a ControlNet or an estimator that is not loaded is refused with
    what is (a client must never make the server read a path or fetch a
    repository).
    """
    if not Capabilities.of(pipeline).steerable:
        if controlnets or ip_adapter or preprocessor_models:
            raise ConfigError("--controlnet, --ip-adapter and --preprocessor-model steer image models (SD1.5/LCM, SD-turbo, SDXL-turbo); this model is not one")
        return
    for name in controlnets:
        pipeline.attach_controlnet(name)
    if ip_adapter:
        pipeline.attach_ip_adapter(ip_adapter)
    for entry in preprocessor_models:
        kind, _, source = entry.partition("=")
        pipeline.load_estimator(kind, source)
    pipeline.load_on_demand = False


def model_kind(pipeline: Any) -> str:
    """The server's schema family: ``video`` for causal video pipelines, ``image`` for image models and identity."""
    return "video" if pipeline.kind == "video" else "image"


def no_input_mode(pipeline: Any) -> dict[str, Any] | None:
    """What a session with no input source asks for (a video model's txt2vid), and the live parameters it does not take; None for image models."""
    if model_kind(pipeline) != "video":
        return None
    from ...pipeline.video_params import TXT2VID_INPUT_PARAMS  # noqa: PLC0415

    return {"mode": "txt2vid", "params_not_taken": list(TXT2VID_INPUT_PARAMS)}


def parse_update(pipeline: Any, state: Any, changes: Mapping[str, Any], caps: Any = None) -> Any:
    """Validate a live update against a state's current parameters (and the server's caps) without queuing it."""
    params = pipeline.parse_update(state, changes)
    steps = pipeline.shape_with(state, params).steps
    if caps is not None and steps > caps.max_steps:
        raise ConfigError(f"{steps} denoising steps are over this server's limit of {caps.max_steps}")
    return params


def params_to_json(params: Any) -> dict[str, Any]:
    """Parameters (a schema dataclass or a plain mapping) as JSON."""
    if params is None:
        return {}
    if hasattr(params, "to_dict"):
        return params.to_dict()
    if isinstance(params, Mapping):
        return dict(params)
    return {"value": repr(params)}
