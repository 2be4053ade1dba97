"""Build the part of a causal Wan transformer that one stage holds, loading only that part's weights.

A stage's role is its block range plus, on the first stage, the patch, time
and text embeddings (and the VAE encoder and text encoder, which the
driver's model holds) and, on the last stage, the output head and the VAE
decoder. Everything
else is absent: blocks of other stages are :class:`AbsentBlock`
placeholders (so block indices keep their meaning) and foreign top-level
modules are ``None``, so ``parameters()`` counts what the rank really holds.

Where the weights come from:

- ``tiny-video`` is built whole (it is a few hundred kilobytes) and pruned,
  so a staged run computes bit for bit what one process computes;
- ``weights="dummy"`` (benchmarks of the 1.3B/14B shapes) builds the
  blocks on the meta device and materialises only the stage's own, each
  seeded by its block index: a 14B stage never allocates the other
  stages' blocks (the values differ from a one-process dummy build, which
  is seeded as a whole; dummy weights mean nothing anyway);
- pretrained folders: the same meta build, then only the stage's tensors
  are read from the ``.safetensors`` files (safetensors reads tensors one by
  one). A causal student checkpoint (``checkpoint=``) is a single pickle or
  safetensors file of the whole model: each rank reads it and keeps its
  part, so loading peaks at one checkpoint in host memory per rank.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelLoadError
from ..models.video.causal_wan import CausalWanTransformer
from ..models.video.stream_vae import StreamingWanVAE
from .stage_shard import StageShard

EMBEDDING_MODULES = ("patch_embedding", "condition_embedder")
HEAD_MODULES = ("norm_out", "proj_out")
HEAD_PARAMETERS = ("scale_shift_table",)


@dataclass(frozen=True)
class StageRole:
    """Stage ``index`` of ``stages`` holds blocks ``start:stop`` (and the embeddings first, the head last)."""

    index: int
    stages: int
    start: int
    stop: int

    @property
    def blocks(self) -> range:
        return range(self.start, self.stop)

    @property
    def embedding(self) -> bool:
        return self.index == 0

    @property
    def head(self) -> bool:
        return self.index == self.stages - 1

    def owns(self, name: str) -> bool:
        """Whether the parameter ``name`` (diffusers' ``WanTransformer3DModel`` naming) belongs to this stage."""
        if name.startswith("blocks."):
            return int(name.split(".", 2)[1]) in self.blocks
        top = name.split(".", 1)[0]
        if top in EMBEDDING_MODULES:
            return self.embedding
        if top in HEAD_MODULES or top in HEAD_PARAMETERS:
            return self.head
        return True  # rope tables and anything new: small, everyone keeps them


@dataclass(frozen=True)
class StageSource:
    """Which model a stage builds (JSON-able: it is sent to the rank processes)."""

    model: str
    weights: str = "pretrained"
    seed: int = 0
    layers: int | None = None  # tiny-video only
    tiny_dit: dict[str, int] | None = None  # tiny-video only: other DiT sizes (benchmarks)
    checkpoint: str | None = None
    checkpoint_key: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    lora: dict[str, float] | None = None  # local LoRA files -> scales, fused into each stage's own layers

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("model", "weights", "seed", "layers", "tiny_dit", "checkpoint", "checkpoint_key", "options", "lora")}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> StageSource:
        return cls(**value)


class AbsentBlock(torch.nn.Module):
    """The place of a block that another stage holds: no weights; running it is a bug."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def forward(self, *_: Any, **__: Any) -> torch.Tensor:
        raise RuntimeError(f"block {self.index} is held by another pipeline stage")


def prune(model: CausalWanTransformer, role: StageRole) -> CausalWanTransformer:
    """Drop everything ``role`` does not hold from ``model`` (in place) and return it."""
    tr = model.transformer
    for index in range(len(tr.blocks)):
        if index not in role.blocks:
            tr.blocks[index] = AbsentBlock(index)
    for name in EMBEDDING_MODULES:
        if not role.embedding:
            setattr(tr, name, None)
    for name in HEAD_MODULES:
        if not role.head:
            setattr(tr, name, None)
    for name in HEAD_PARAMETERS:
        if not role.head:
            setattr(tr, name, None)
    return model


def build_stage_transformer(source: StageSource, role: StageRole, device: torch.device, dtype: torch.dtype) -> CausalWanTransformer:
    """The stage's part of ``source`` on ``device`` (see module docstring), its LoRAs fused into the layers it holds."""
    model = _stage_part(source, role, device, dtype)
    fuse_stage_loras(model, source, role)
    return model


def fuse_stage_loras(model: CausalWanTransformer, source: StageSource, role: StageRole) -> None:
    """Fuse ``source``'s LoRAs into the layers ``role`` holds, each file checked against the whole architecture."""
    if not source.lora:
        return
    from ..models.loading.video_lora import fuse_video_loras_into_part  # noqa: PLC0415

    fuse_video_loras_into_part(model, source.lora, _whole_architecture(source, model.transformer.dtype), role.owns)


def _whole_architecture(source: StageSource, dtype: torch.dtype) -> torch.nn.Module:
    """``source``'s whole DiT for name and shape checks (tiny: built on the CPU, it is small; Wan: on the meta device)."""
    if source.model == "tiny-video":
        from ..models.video.tiny_video_dit import tiny_causal_wan  # noqa: PLC0415

        return tiny_causal_wan(seed=source.seed, device="cpu", dtype=dtype, **_tiny_overrides(source)).transformer
    from ..models.loading.video_presets import VIDEO_PRESETS, wan_snapshot  # noqa: PLC0415

    preset = VIDEO_PRESETS[source.model]
    if source.weights == "dummy":
        from ..models.video.wan_build import wan_transformer_config  # noqa: PLC0415

        return _meta_architecture(wan_transformer_config(preset.dummy_config))
    return _meta_architecture(read_config(wan_snapshot(preset, dtype) / "transformer"))


def _tiny_overrides(source: StageSource) -> dict[str, Any]:
    return {**(source.tiny_dit or {}), **({} if source.layers is None else {"num_layers": source.layers})}


def _stage_part(source: StageSource, role: StageRole, device: torch.device, dtype: torch.dtype) -> CausalWanTransformer:
    """The stage's part of ``source``'s DiT, loaded with the weights of the layers it holds."""
    if source.model == "tiny-video":
        from ..models.video.tiny_video_dit import tiny_causal_wan  # noqa: PLC0415

        return prune(tiny_causal_wan(seed=source.seed, device=device, dtype=dtype, **_tiny_overrides(source)), role)
    from ..models.loading.video_presets import VIDEO_PRESETS  # noqa: PLC0415

    preset = VIDEO_PRESETS[source.model]
    if source.weights == "dummy":
        from ..models.video.wan_build import wan_transformer_config  # noqa: PLC0415

        model = _meta_built(wan_transformer_config(preset.dummy_config), role, device, dtype, source.seed)
        _seed_owned_blocks(model, role, source.seed)
        return model
    from ..models.loading.video_presets import wan_snapshot  # noqa: PLC0415

    folder = wan_snapshot(preset, dtype) / "transformer"
    config = read_config(folder)
    model = _meta_built(config, role, device, dtype, source.seed)
    _load_owned(model, role, _safetensors_state(folder, role))
    if source.checkpoint is not None:
        from ..models.video.wan_checkpoint import load_causal_checkpoint  # noqa: PLC0415

        state = load_causal_checkpoint(source.checkpoint, key=source.checkpoint_key)
        _load_owned(model, role, {k: v for k, v in state.items() if role.owns(k)})
    return model


def _meta_architecture(config: dict[str, Any]) -> torch.nn.Module:
    """The whole DiT of ``config`` on the meta device: no memory, every layer's name and shape."""
    from diffusers import WanTransformer3DModel  # noqa: PLC0415

    with torch.device("meta"):
        return WanTransformer3DModel.from_config({k: v for k, v in config.items() if not k.startswith("_")})


def num_blocks(source: StageSource, preset: Any) -> int:
    """How many DiT blocks ``source``'s model has (tiny-video's override, a dummy config's, or the downloaded config's)."""
    if source.model == "tiny-video":
        from ..models.video.tiny_video_dit import TINY_WAN_CONFIG  # noqa: PLC0415

        return source.layers or TINY_WAN_CONFIG["num_layers"]
    if source.weights == "dummy":
        from ..models.video.wan_build import wan_transformer_config  # noqa: PLC0415

        return int(wan_transformer_config(preset.dummy_config)["num_layers"])
    from ..models.loading.video_presets import wan_snapshot  # noqa: PLC0415

    return int(read_config(wan_snapshot(preset, torch.float32) / "transformer")["num_layers"])


# --------------------------------------------------------------------- internals
def _meta_built(config: dict[str, Any], role: StageRole, device: torch.device, dtype: torch.dtype, seed: int) -> CausalWanTransformer:
    """The full architecture with only ``role``'s parts materialised (blocks uninitialised: fill them next)."""
    from ..models.video.wan_build import build_wan_transformer  # noqa: PLC0415

    settings = {k: v for k, v in config.items() if not k.startswith("_")}
    top = build_wan_transformer({**settings, "num_layers": 0}, device=device, dtype=dtype, seed=seed)
    from diffusers import WanTransformer3DModel  # noqa: PLC0415

    with torch.device("meta"):
        full = WanTransformer3DModel.from_config(settings)
    for name in (*EMBEDDING_MODULES, *HEAD_MODULES, "rope"):
        setattr(full, name, getattr(top, name))
    full.scale_shift_table = top.scale_shift_table
    for index in range(len(full.blocks)):
        if index in role.blocks:
            full.blocks[index] = full.blocks[index].to_empty(device=device).to(dtype)
    model = CausalWanTransformer(full.eval().requires_grad_(False))
    return prune(model, role)


def _seed_owned_blocks(model: CausalWanTransformer, role: StageRole, seed: int) -> None:
    """Random weights for each owned block, seeded by its index (PyTorch's default init; modulation ~ N(0, 1/dim))."""
    for index in role.blocks:
        block = model.transformer.blocks[index]
        generator_seed = seed * 1_000_003 + index
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(generator_seed)
            for module in block.modules():
                if module is block:
                    continue
                reset = getattr(module, "reset_parameters", None)
                if callable(reset):
                    reset()
                else:
                    for name, parameter in module.named_parameters(recurse=False):
                        torch.nn.init.ones_(parameter) if name == "weight" else torch.nn.init.zeros_(parameter)
            table = block.scale_shift_table
            table.copy_(torch.randn(table.shape) / table.shape[-1] ** 0.5)


def read_config(folder: Path) -> dict[str, Any]:
    import json  # noqa: PLC0415

    path = folder / "config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"cannot read the transformer config {path}: {error}") from None


def _safetensors_state(folder: Path, role: StageRole) -> dict[str, torch.Tensor]:
    """The stage's tensors from the folder's ``.safetensors`` files, read one by one (nothing else is loaded)."""
    from safetensors import safe_open  # noqa: PLC0415

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{folder} has no .safetensors weights; pipeline stages read only safetensors folders")
    state: dict[str, torch.Tensor] = {}
    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():
                if role.owns(key):
                    state[key] = handle.get_tensor(key)
    return state


def _load_owned(model: CausalWanTransformer, role: StageRole, state: dict[str, torch.Tensor]) -> None:
    tr = model.transformer
    expected = {name for name, _ in tr.named_parameters() if not name.startswith("rope.")}
    missing = sorted(expected - state.keys())
    if missing:
        raise ModelLoadError(f"the weights lack {len(missing)} tensor(s) of stage {role.index}, e.g. {missing[:3]}")
    with torch.no_grad():
        for name, parameter in tr.named_parameters():
            if name in state:
                parameter.copy_(state[name].to(parameter.dtype))


# ---------------------------------------------------------------------- the VAE
VAE_HALVES = {"encoder": ("encoder", "quant_conv"), "decoder": ("decoder", "post_quant_conv")}


def keep_vae_half(vae: StreamingWanVAE, half: str) -> StreamingWanVAE:
    """Drop the other half of the VAE (in place): rank 0 only encodes, the last rank only decodes."""
    for other, modules in VAE_HALVES.items():
        if other != half:
            for name in modules:
                setattr(vae.vae, name, None)
    return vae


def build_stage_vae(source: StageSource, device: torch.device, dtype: torch.dtype) -> StreamingWanVAE:
    """The decoding half of ``source``'s VAE, for the last rank (the same weights rank 0's model was built with)."""
    from ..models.loading.components import place  # noqa: PLC0415
    from ..models.video.tiny_video import seeded_build, tiny_wan_vae  # noqa: PLC0415

    if source.model == "tiny-video":  # built first under seed + 1, as build_tiny_video_model builds it
        vae = seeded_build(source.seed + 1, tiny_wan_vae)
        return keep_vae_half(StreamingWanVAE(place(vae, device, dtype)), "decoder")
    from diffusers import AutoencoderKLWan  # noqa: PLC0415

    from ..models.loading.video_presets import VIDEO_PRESETS, wan_snapshot  # noqa: PLC0415

    if source.weights == "dummy":  # as build_dummy_video_model seeds it
        from ..models.video.wan_build import building_on, seeded  # noqa: PLC0415

        with seeded(source.seed + 1, device), building_on(device, dtype):
            vae = AutoencoderKLWan()
        return keep_vae_half(StreamingWanVAE(place(vae, device, dtype)), "decoder")
    folder = wan_snapshot(VIDEO_PRESETS[source.model], dtype) / "vae"
    try:
        vae = AutoencoderKLWan.from_pretrained(folder, torch_dtype=torch.float32 if dtype == torch.float16 else dtype)
    except (OSError, ValueError, RuntimeError) as error:
        raise ModelLoadError(f"loading the Wan VAE in {folder} failed: {error}") from error
    return keep_vae_half(StreamingWanVAE(place(vae, device, vae.dtype)), "decoder")


def build_stage_shard(source: StageSource, role: StageRole, device: torch.device, dtype: torch.dtype) -> StageShard:
    """A rank's whole part (ranks 1..): its blocks, and on the last rank the head and the VAE decoder."""
    model = build_stage_transformer(source, role, device, dtype)
    return StageShard(model, role.blocks, build_stage_vae(source, device, dtype) if role.head else None)
