"""What steers an image stream beside its prompt, on the pipeline's side: ControlNets, the IP-Adapter, preprocessor estimators.

:class:`ImageSteering` is part of :class:`~streamgen.pipeline.image.ImagePipeline`
(a mixin: one object, split by concern). It loads what steers (once, shared
by every stream of the pipeline), checks that a stream's parameters name
only what is loaded (or, for the Python API, loads it), makes a call's
control images and a reference image's embeddings, and gives one batched
UNet call its IP-Adapter inputs. The per-row algorithm is in
:mod:`streamgen.pipeline.image_control`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ..config import StreamParams
from ..errors import ConfigError, InputError
from ..models.image.reference_image import decode_reference_image
from .image_control import ControlImages, PreparedFrames, ReferenceRows, make_control_images
from .image_state import ImageStreamState

if TYPE_CHECKING:
    from .image import RowSegment

REFERENCE_CACHE_SIZE = 16


class ImageSteering:
    """Steering methods of the image pipeline (see module docstring); expects ``model``, ``preprocessors``, ``load_on_demand``, ``_references``."""

    def attach_controlnet(self, source: str) -> None:
        """Load the ControlNet ``source`` for every stream of this pipeline (once; ConfigError when it does not fit the model)."""
        from ..models.image.controlnet import load_controlnet  # noqa: PLC0415 - diffusers' ControlNet loads only when used

        self.model.attach_controlnet(source, load_controlnet)

    def attach_ip_adapter(self, source: str, **options: Any) -> None:
        """Load an IP-Adapter into the shared UNet (once): streams then steer with reference images (``ip_adapter_image``)."""
        from ..models.image.ip_adapter import load_ip_adapter  # noqa: PLC0415

        self.model.attach_ip_adapter(source, lambda model: load_ip_adapter(model, source, **options))

    def load_estimator(self, kind: str, source: str) -> None:
        """Load a model-based preprocessor's estimator (``depth``/``pose``) for every stream of this pipeline."""
        from ..preprocessor_settings import parse_preprocessor_settings  # noqa: PLC0415

        self.preprocessors.get(kind, parse_preprocessor_settings(kind, {"model": source}), self.device, self.dtype)

    def describe_steering(self) -> dict[str, Any]:
        """What streams of this pipeline may steer with (the page offers these)."""
        from ..preprocessor_settings import PREPROCESSOR_NAMES, default_preprocessor_settings  # noqa: PLC0415

        adapter = self.model.ip_adapter
        return {
            "controlnets": sorted(self.model.controlnets),
            "ip_adapter": None if adapter is None else {"source": adapter.source, "variant": adapter.variant},
            "preprocessors": list(PREPROCESSOR_NAMES),
            "preprocessor_settings": {name: default_preprocessor_settings(name).to_dict() for name in PREPROCESSOR_NAMES},
            "estimators": [{"preprocessor": held.name, "model": held.model} for held in self.preprocessors.loaded() if held.model is not None],
            "loads_on_demand": self.load_on_demand,
        }

    def control_preview(self, state: ImageStreamState, index: int) -> torch.Tensor | None:
        """The control image ControlNet ``index`` of ``state`` read at its latest step, (3, H, W) in [0, 1], or None."""
        latest = state.latest_params.controlnets  # an accepted change counts at once; its image comes with the next step
        if not 0 <= index < len(latest):
            raise InputError(f"this stream has {len(latest)} ControlNet(s); there is no ControlNet {index}")
        entries = state.params.controlnets
        if index >= len(entries):
            return None
        image = state.last_controls.get(entries[index].control_key)
        return None if image is None else image[0]

    def check_control(self, params: StreamParams, *, load: bool) -> None:
        """ConfigError unless every ControlNet, estimator and adapter ``params`` names is here (or, when allowed and ``load``, loaded now)."""
        for i, entry in enumerate(params.controlnets):
            if entry.model not in self.model.controlnets:
                if not self.load_on_demand:
                    loaded = ", ".join(sorted(self.model.controlnets)) or "none"
                    raise ConfigError(
                        f"controlnets[{i}].model {entry.model!r} is not loaded on this server (loaded: {loaded}); "
                        "its operator loads ControlNets at start (serve --controlnet NAME)"
                    )
                if load:
                    self.attach_controlnet(entry.model)
            estimator = getattr(entry.preprocessor_settings, "model", None)
            if estimator is not None and not self.load_on_demand and not any(held.name == entry.preprocessor and held.model == estimator for held in self.preprocessors.loaded()):
                raise ConfigError(
                    f"controlnets[{i}] preprocessor {entry.preprocessor!r} with the estimator {estimator!r} is not loaded on this server; "
                    f"its operator loads estimators at start (serve --preprocessor-model {entry.preprocessor}={estimator})"
                )
            if estimator is not None and load and self.load_on_demand:
                self.preprocessors.get(entry.preprocessor, entry.preprocessor_settings, self.device, self.dtype)
        if params.ip_adapter_image is not None and self.model.ip_adapter is None:
            raise ConfigError("ip_adapter_image needs an IP-Adapter and this model has none (ImageStream(..., ip_adapter={...}) or serve --ip-adapter)")

    def _call_controls(self, state: ImageStreamState, image: torch.Tensor | None, prepared: PreparedFrames | None) -> ControlImages:
        """This call's control images under the parameters now in force (made on the input side where they could be)."""
        if not state.params.controlnets:
            return {}
        have = prepared.controls if prepared is not None else None
        return make_control_images(self.preprocessors, state.params, image, state.last_output, have=have, frames=state.frames_per_call)

    # --------------------------------------------------------------- reference
    def reference_embeddings(self, image: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(embedding, negative embedding) of an IP-Adapter reference image, computed once per distinct image."""
        with self._references_lock:
            cached = self._references.get(image.sha256)
            if cached is not None:
                self._references.move_to_end(image.sha256)
                return cached
        adapter = self.model.ip_adapter
        embedded = adapter.embed(decode_reference_image(image)), adapter.negative_embedding()
        with self._references_lock:
            self._references[image.sha256] = embedded
            while len(self._references) > REFERENCE_CACHE_SIZE:
                self._references.popitem(last=False)
        return embedded

    def _reference_rows(self, state: ImageStreamState) -> tuple[ReferenceRows | None, ReferenceRows | None]:
        params = state.params
        if self.model.ip_adapter is None or params.ip_adapter_image is None or params.ip_adapter_scale == 0:
            return None, None
        positive, negative = self.reference_embeddings(params.ip_adapter_image)
        return ReferenceRows(positive, params.ip_adapter_scale), ReferenceRows(negative, params.ip_adapter_scale)

    def _reference_inputs(self, segments: list[RowSegment], sizes: list[int]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """One call's IP-Adapter inputs: every row's embedding and scale (zeros without a reference); None when no row has one."""
        adapter = self.model.ip_adapter
        if adapter is None or all(s.reference is None for s in segments):
            return None
        zero = adapter.zero_embedding()
        embeds = torch.cat([(s.reference.embedding if s.reference is not None else zero).expand(n, *zero.shape) for s, n in zip(segments, sizes)])
        scales = torch.cat([torch.full((n,), s.reference.scale if s.reference is not None else 0.0) for s, n in zip(segments, sizes)])
        return embeds, scales
