"""``ImageStream``: the Python streaming API for image models.

    stream = streamgen.ImageStream("tiny", prompt="a watercolor city", strength=0.5)
    out = stream(frame)            # numpy HWC uint8 in → numpy HWC uint8 out
    stream.update(prompt="an oil painting", transition_frames=8)

Frames may be numpy arrays, torch tensors or ``av.VideoFrame`` objects; the
output is of the same kind. Many ``ImageStream`` objects may share one
:class:`~streamgen.pipeline.ImagePipeline` (pass it instead of a model name);
each keeps its own state.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import threading
from pathlib import Path
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from typing import Any

from .control_params import ReferenceImage, parse_reference_image
from .config import ModelSpec, StreamConfig, StreamParams, check_no_model_options, field_names
from .errors import ConfigError, InputError
from .frames import frames_to_uint8, uint8_to_user
from .models import ImageModel, load_image_model
from .params import parse_params, parse_stream_config, split_settings
from .pipeline import ImagePipeline, ImageStreamState

# Model options. ``seed`` is the stream's noise seed (a live parameter, as everywhere); ``model_seed`` seeds random weights.
_SPEC_FIELDS = ("weights", "device", "dtype", "vae", "lora", "fuse_lora", "model_seed", "acceleration")


def load_pipeline(model: str | ModelSpec | ImageModel | ImagePipeline = "tiny", **spec: Any) -> ImagePipeline:
    """An :class:`ImagePipeline` for a preset name, hub id, local path, spec or loaded model."""
    acceleration = spec.pop("acceleration", None)
    if isinstance(model, (ImagePipeline, ImageModel)):
        check_no_model_options(spec, f"this {type(model).__name__}")
    unknown = sorted(set(spec) - set(field_names(ModelSpec)))
    if unknown:
        raise ConfigError(f"unknown model option(s) {', '.join(unknown)}; known: {', '.join(f for f in field_names(ModelSpec) if f != 'source')}")
    if isinstance(model, ImagePipeline):
        pipeline = model
    elif isinstance(model, ImageModel):
        pipeline = ImagePipeline(model)
    else:
        if isinstance(model, str):
            model = ModelSpec(source=model, **spec)
        elif isinstance(model, ModelSpec) and spec:
            model = dataclasses.replace(model, **spec)  # keywords win over the spec's own values
        acceleration = acceleration or model.acceleration
        if acceleration and acceleration != "none":
            from .models import resolve_device  # noqa: PLC0415
            from .runtime import preflight  # noqa: PLC0415

            preflight(acceleration, resolve_device(model.device))  # before any weights are loaded
        pipeline = ImagePipeline(load_image_model(model))
    if acceleration and acceleration != "none":
        from .runtime import accelerate  # noqa: PLC0415

        accelerate(pipeline.model, acceleration)
    return pipeline


def is_video_model(model: Any) -> bool:
    """True when ``model`` names a causal video model (a video preset or a loaded video pipeline)."""
    try:
        from .models.loading.video_presets import VIDEO_PRESETS  # noqa: PLC0415
        from .pipeline.video import VideoPipeline  # noqa: PLC0415
    except ImportError:
        return False
    if isinstance(model, VideoPipeline):
        return True
    source = model.source if isinstance(model, ModelSpec) else model
    return isinstance(source, str) and source in VIDEO_PRESETS


def load_stream_pipeline(model: Any = "tiny", **spec: Any):
    """An image or video pipeline for ``model``, whichever it names (used by the CLI and server)."""
    if is_video_model(model):
        from .pipeline.video_loading import load_video_pipeline  # noqa: PLC0415

        return load_video_pipeline(model, **spec)
    if spec.get("devices") is not None:
        devices = spec.pop("devices")
        devices = devices.split(",") if isinstance(devices, str) else list(devices)
        if len(devices) > 1:
            raise ConfigError("an image model runs on one device: --devices splits video models into pipeline stages (serve runs one image replica per device)")
        spec["device"] = devices[0]
    return load_pipeline(model, **spec)


class ImageStream:
    """One live image stream: frames in, restyled frames out, parameters changeable live."""

    def __init__(self, model: str | ModelSpec | ImageModel | ImagePipeline = "tiny", **settings: Any) -> None:
        spec = {k: settings.pop(k) for k in _SPEC_FIELDS if k in settings}
        if "model_seed" in spec:
            spec["seed"] = spec.pop("model_seed")
        ip_adapter = settings.pop("ip_adapter", None)
        self.pipeline = load_pipeline(model, **spec)
        if ip_adapter is not None:
            settings.update(_attach_ip_adapter(self.pipeline, ip_adapter))
        settings = _user_images(settings)
        config_values, live_values = split_settings(settings)
        config = parse_stream_config(config_values)
        base = StreamParams(**_defaults_for(config, self.pipeline))
        params = parse_params(live_values, base)
        self.state: ImageStreamState = self.pipeline.create_state(config, params)
        self._lock = threading.Lock()

    # ---- parameters -------------------------------------------------------
    @property
    def config(self) -> StreamConfig:
        return self.state.config

    @property
    def params(self) -> StreamParams:
        """Parameters in force (including an update not yet applied)."""
        return self.state.latest_params

    def update(self, changes: Mapping[str, Any] | None = None, **params: Any) -> StreamParams:
        """Change parameters live; the stream keeps its buffers. Returns the new parameters.

        ``ip_adapter_image`` may be a path, an (H, W, 3) uint8 array or
        tensor, a PIL image, encoded bytes or base64 text;
        ``controlnets=[{...}, ...]`` changes attached ControlNets by position.
        """
        return self.pipeline.update(self.state, _user_images({**(changes or {}), **params}))

    def reset(self) -> None:
        """Start over from the next frame (keeps parameters)."""
        with self._lock:
            self.pipeline.reset(self.state)

    # ---- frames -----------------------------------------------------------
    def stream(self, frames: Any = None) -> Any:
        """Process one call's frames (f = frame_buffer_size of them) and return the output.

        With stream batch the output depicts the input of n − 1 calls ago;
        the first calls repeat the first frame's result instead of showing
        an empty buffer. txt2img streams take no frames.
        """
        if self.config.mode == "txt2img":
            if frames is not None:
                raise InputError("this stream is txt2img; call stream() without frames")
            with self._lock:
                out = self.pipeline.step([self.state], [None])[0]
            kind_frames = out.frames
            return kind_frames.cpu().numpy() if self.config.frame_buffer_size > 1 else kind_frames[0].cpu().numpy()
        if frames is None:
            raise InputError("this stream is img2img; pass a frame")
        batch, kind = frames_to_uint8(frames)
        f = self.config.frame_buffer_size
        if batch.shape[0] != f:
            raise InputError(
                f"this stream takes {f} frame(s) per call (frame_buffer_size={f}); got {batch.shape[0]}"
                + ("; pass a batch of frames" if f > 1 else "")
            )
        with self._lock:
            out = self.pipeline.step([self.state], [batch])[0]
        return uint8_to_user(out.frames, kind)

    __call__ = stream

    async def astep(self, frames: Any = None) -> Any:
        """:meth:`stream` in a worker thread, for use from asyncio code."""
        return await asyncio.to_thread(self.stream, frames)

    async def astream(self, frames: AsyncIterable[Any]) -> AsyncIterator[Any]:
        """Restyle an async iterator of frames; each model step runs off the event loop."""
        async for frame in frames:
            yield await self.astep(frame)

    @property
    def stats(self) -> dict[str, int]:
        counters = self.state.counters
        return {
            "frames_in": counters.frames_in,
            "frames_processed": counters.frames_processed,
            "frames_skipped": counters.frames_skipped,
        }


_IP_ADAPTER_KEYS = ("model", "image", "scale", "variant", "image_encoder")


def _attach_ip_adapter(pipeline: ImagePipeline, ip_adapter: Any) -> dict[str, Any]:
    """Load ``ip_adapter={"model": ..., "image": ..., "scale": ...}`` into the pipeline; the stream parameters it sets."""
    if isinstance(ip_adapter, str):
        ip_adapter = {"model": ip_adapter}
    if not isinstance(ip_adapter, Mapping) or "model" not in ip_adapter:
        raise ConfigError(f"ip_adapter must be a model name or a mapping with 'model' (and optionally {', '.join(_IP_ADAPTER_KEYS[1:])})")
    unknown = sorted(set(ip_adapter) - set(_IP_ADAPTER_KEYS))
    if unknown:
        raise ConfigError(f"unknown ip_adapter key(s) {', '.join(unknown)}; known: {', '.join(_IP_ADAPTER_KEYS)}")
    options = {k: ip_adapter[k] for k in ("variant", "image_encoder") if ip_adapter.get(k) is not None}
    pipeline.attach_ip_adapter(ip_adapter["model"], **options)
    out: dict[str, Any] = {}
    if ip_adapter.get("image") is not None:
        out["ip_adapter_image"] = ip_adapter["image"]
    if "scale" in ip_adapter:
        out["ip_adapter_scale"] = ip_adapter["scale"]
    return out


def _user_images(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with a Python-side ``ip_adapter_image`` (path, array, tensor, PIL image, bytes) made a ReferenceImage."""
    values = dict(values)
    image = values.get("ip_adapter_image")
    if image is None or isinstance(image, (ReferenceImage, Mapping)):
        return values
    if isinstance(image, (bytes, bytearray)):
        values["ip_adapter_image"] = parse_reference_image("ip_adapter_image", base64.b64encode(bytes(image)).decode())
    elif isinstance(image, (str, Path)):
        path = Path(image).expanduser()
        if isinstance(image, Path) or (len(str(image)) < 4096 and path.is_file()):
            if not path.is_file():
                raise ConfigError(f"ip_adapter_image: no such file {path}")
            values["ip_adapter_image"] = parse_reference_image("ip_adapter_image", base64.b64encode(path.read_bytes()).decode())
    elif hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image
        import numpy as np  # noqa: PLC0415

        values["ip_adapter_image"] = ReferenceImage.from_pixels(np.asarray(image.convert("RGB")).copy())
    elif hasattr(image, "shape"):
        values["ip_adapter_image"] = ReferenceImage.from_pixels(image.detach().cpu() if hasattr(image, "detach") else image)
    return values


def _defaults_for(config: StreamConfig, pipeline: ImagePipeline) -> dict[str, Any]:
    defaults = dict(pipeline.model.default_params)
    if config.mode == "txt2img":
        defaults.update(cfg_type="none", t_index_list=defaults.get("t_index_list"))
    return parse_params(defaults).__dict__ if defaults else {}
