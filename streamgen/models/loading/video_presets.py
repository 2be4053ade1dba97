"""Named causal video models and :func:`load_video_model`.

- ``tiny-video``: the Wan architecture at toy size, random weights, built in
  code (tests, CI, offline demos; its output is noise-like);
- ``wan-causal-1.3b`` / ``wan-causal-14b``: Wan2.1 T2V in the diffusers
  layout (``Wan-AI/Wan2.1-T2V-*-Diffusers``: transformer, vae,
  text_encoder, tokenizer), run block-causally. A causal student
  (StreamDiffusionV2, Self-Forcing, CausVid) is given as ``checkpoint=`` a
  local ``.pt``/``.safetensors`` file and loaded over the base transformer
  (:mod:`streamgen.models.video.wan_checkpoint`); without one the bidirectional
  base weights run causally, which works but looks worse;
- ``weights="dummy"`` builds the 1.3B/14B architectures with random weights
  from the shipped configs (benchmarks of speed, no download). The dummy
  text encoder is a one-layer UMT5 of the DiT's text width instead of
  UMT5-XXL (5.7 B parameters, 11 GB even random): prompts are encoded once
  per change, so it does not change the stream's speed.

``lora={file: scale}`` puts LoRAs on the DiT (:mod:`streamgen.models.loading.video_lora`),
merged into its weights unless ``fuse_lora=False``.

Hub access goes through :mod:`streamgen.models.loading.hub`: cache first; with
``HF_HUB_OFFLINE=1`` a missing model fails at once with a
:class:`~streamgen.errors.ModelLoadError` saying how to download it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ...config import ModelSpec
from ...errors import ConfigError, ModelLoadError
from ...preset_names import presets_hint
from .device import resolve_device, resolve_dtype
from .hub import SnapshotRequest, download_command, fetch_file, fetch_snapshot
from ..video.stream_vae import StreamingWanVAE
from ..video.tiny_video import ByteTokenizer, seeded_build, tiny_umt5_encoder, tiny_wan_vae
from .components import place
from ..video.causal_recipe import CAUSVID, KREA_REALTIME, LONGLIVE, SELF_FORCING, STREAMDIFFUSION_V2, CausalRecipe
from ..video.video_model import VideoModel
from .weight_files import choose_weight_files, select_folder_files

WAN_FOLDERS = ("transformer", "vae", "text_encoder", "tokenizer")
WAN_TEXT_LENGTH = 512
TINY_VIDEO_SIZE = (128, 128)
WEIGHT_KINDS = ("pretrained", "dummy", "tiny")
SPEC_KEYS = ("weights", "device", "dtype", "seed", "checkpoint", "checkpoint_key", "vae", "lora", "fuse_lora")


@dataclass(frozen=True)
class HubFile:
    """One file of a hub repository: where an author publishes a student's weights or its LoRA."""

    repo: str
    filename: str


@dataclass(frozen=True)
class VideoPreset:
    """A named causal video model: its base Wan weights, the student's own weights and how it was trained."""

    name: str
    description: str
    repo: str | None
    dummy_config: str | None  # streamgen/models/configs/<name> (transformer config)
    default_size: tuple[int, int] = (832, 480)
    default_params: dict[str, Any] = field(default_factory=dict)
    recipe: CausalRecipe = STREAMDIFFUSION_V2
    checkpoint: HubFile | None = None  # the student's weights, loaded over the base unless checkpoint= names a file
    lora: HubFile | None = None  # a LoRA the student is published as (LongLive), applied at scale 1 unless lora= names others

    @property
    def stream_defaults(self) -> dict[str, Any]:
        """Live defaults of a stream on this model: the recipe's step count, then the preset's own."""
        steps = self.recipe.default_steps
        return {**({"num_inference_steps": steps} if steps is not None else {}), **self.default_params}


VIDEO_PRESETS: dict[str, VideoPreset] = {
    p.name: p
    for p in (
        VideoPreset(
            name="tiny-video",
            description="built-in random-weight causal video model for tests and offline demos (noise-like output)",
            repo=None,
            dummy_config=None,
            default_size=TINY_VIDEO_SIZE,
        ),
        VideoPreset(
            name="wan-causal-1.3b",
            description="Wan2.1 T2V 1.3B run block-causally (pass checkpoint= a causal student .pt), 480x832",
            repo="Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
            dummy_config="wan-1.3b",
        ),
        VideoPreset(
            name="wan-causal-14b",
            description="Wan2.1 T2V 14B run block-causally (pass checkpoint= a causal student .pt), 480x832",
            repo="Wan-AI/Wan2.1-T2V-14B-Diffusers",
            dummy_config="wan-14b",
        ),
        VideoPreset(
            name="self-forcing-1.3b",
            description="Self-Forcing (Wan2.1-T2V-1.3B student): 3-frame chunks, 4 steps, text to video at 832x480, 16 fps",
            repo="Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
            dummy_config="wan-1.3b",
            recipe=SELF_FORCING,
            checkpoint=HubFile("gdhe17/Self-Forcing", "checkpoints/self_forcing_dmd.pt"),
        ),
        VideoPreset(
            name="causvid-1.3b",
            description="CausVid (Wan2.1-T2V-1.3B block-causal DMD student): 3-frame chunks, 3 steps, 832x480, 16 fps",
            repo="Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
            dummy_config="wan-1.3b",
            recipe=CAUSVID,
            checkpoint=HubFile("tianweiy/CausVid", "autoregressive_checkpoint/model.pt"),
        ),
        VideoPreset(
            name="longlive-1.3b",
            description="LongLive (Wan2.1-T2V-1.3B, base + LoRA): frame sink + short window, KV re-cache on prompt switch, 832x480, 16 fps",
            repo="Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
            dummy_config="wan-1.3b",
            recipe=LONGLIVE,
            default_params={"prompt_switch": "recache"},
            checkpoint=HubFile("Efficient-Large-Model/LongLive-1.3B", "models/longlive_base.pt"),
            lora=HubFile("Efficient-Large-Model/LongLive-1.3B", "models/lora.pt"),
        ),
        VideoPreset(
            name="krea-realtime-14b",
            description="Krea Realtime Video (Self-Forcing on Wan2.1-T2V-14B): 3-frame chunks, 4 steps; 576x320 fits 32 GB, 832x480 needs >40 GB",
            repo="Wan-AI/Wan2.1-T2V-14B-Diffusers",
            dummy_config="wan-14b",
            default_size=(576, 320),
            recipe=KREA_REALTIME,
            checkpoint=HubFile("krea/krea-realtime-video", "krea-realtime-video-14b.safetensors"),
        ),
    )
}


@dataclass(frozen=True)
class VideoSpec:
    """What :func:`load_video_model` was asked for, validated."""

    preset: VideoPreset
    weights: str = "pretrained"
    device: str = "auto"
    dtype: str = "auto"
    seed: int = 0
    checkpoint: str | None = None
    checkpoint_key: str | None = None
    lora: dict[str, float] = field(default_factory=dict)
    fuse_lora: bool = True


def load_video_model(model: str | ModelSpec, **spec: Any) -> VideoModel:
    """Load the :class:`VideoModel` a preset names (see module docstring)."""
    from .video_lora import apply_video_loras, resolve_video_lora_files  # noqa: PLC0415

    video_spec = _video_spec(model, spec)
    loras = preset_loras(video_spec)
    lora_files = resolve_video_lora_files(loras)  # a missing LoRA fails before the model is built
    model_out = _build_video_model(video_spec)
    apply_video_loras(model_out.transformer, loras, fuse=video_spec.fuse_lora, files=lora_files)
    return model_out


def _build_video_model(video_spec: VideoSpec) -> VideoModel:
    device = resolve_device(video_spec.device)
    dtype = resolve_dtype(video_spec.dtype, device, family="video")
    preset = video_spec.preset
    if preset.repo is None:
        return build_tiny_video_model(seed=video_spec.seed, device=device, dtype=dtype)
    checkpoint = video_spec.checkpoint
    if video_spec.weights == "tiny":  # the preset's recipe on the tiny DiT: its plumbing, offline
        model_out = with_recipe(build_tiny_video_model(seed=video_spec.seed, device=device, dtype=dtype), preset, f"{preset.name}-tiny")
    elif video_spec.weights == "dummy":
        model_out = build_dummy_video_model(preset, seed=video_spec.seed, device=device, dtype=dtype)
    else:
        folder = wan_snapshot(preset, dtype)
        model_out = load_wan_folder(folder, preset, device=device, dtype=dtype)
        if checkpoint is None and preset.checkpoint is not None:
            checkpoint = str(fetch_file(preset.checkpoint.repo, preset.checkpoint.filename, f"video preset {preset.name!r}: the student's weights"))
    if checkpoint is not None:
        from ..video.wan_checkpoint import load_causal_weights  # noqa: PLC0415

        load_causal_weights(model_out.transformer, checkpoint, key=video_spec.checkpoint_key)
    return model_out


def preset_loras(video_spec: VideoSpec) -> dict[str, float]:
    """The LoRAs to apply: the user's, or the one a student is published as (LongLive's, at scale 1) with its pretrained weights."""
    preset = video_spec.preset
    if video_spec.lora or preset.lora is None or video_spec.weights != "pretrained":
        return dict(video_spec.lora)
    path = fetch_file(preset.lora.repo, preset.lora.filename, f"video preset {preset.name!r}: its LoRA")
    return {str(path): 1.0}


def with_recipe(model: VideoModel, preset: VideoPreset, name: str | None = None) -> VideoModel:
    """``model`` run the way ``preset``'s student was trained: its flow shift, chunk, window, schedule and stream defaults."""
    model.recipe = preset.recipe
    model.flow_shift = preset.recipe.flow_shift
    model.default_params = preset.stream_defaults
    if name is not None:
        model.name = name
    return model


def _video_spec(model: str | ModelSpec, spec: Mapping[str, Any]) -> VideoSpec:
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise ConfigError(f"unknown model option(s) {', '.join(unknown)} for a video model; known: {', '.join(SPEC_KEYS)}")
    values = dict(spec)
    if isinstance(model, ModelSpec):
        values = {"weights": model.weights, "device": model.device, "dtype": model.dtype, "seed": model.seed,
                  "vae": model.vae, "lora": model.lora, "fuse_lora": model.fuse_lora, **values}
        model = model.source
    preset = VIDEO_PRESETS.get(model) if isinstance(model, str) else None
    if preset is None:
        raise ConfigError(f"unknown video model {model!r}. {presets_hint()}")
    weights = values.get("weights", "pretrained")
    if weights not in WEIGHT_KINDS:
        raise ConfigError(f"weights must be one of {', '.join(WEIGHT_KINDS)}; got {weights!r}")
    from .video_lora import check_lora_option  # noqa: PLC0415

    lora = check_lora_option(values.get("lora"))
    fuse_lora = values.get("fuse_lora", True)
    if not isinstance(fuse_lora, bool):
        raise ConfigError(f"fuse_lora must be true or false, got {fuse_lora!r}")
    if values.get("vae", "tiny") not in ("tiny", "full", "auto"):
        raise ConfigError(f"video models use their own Wan VAE; vae must be tiny, full or auto, got {values['vae']!r}")
    seed = values.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    checkpoint = values.get("checkpoint")
    if checkpoint is not None:
        if preset.repo is None:
            raise ConfigError(f"{preset.name} is built in code; checkpoint= applies to the Wan presets")
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise ModelLoadError(f"causal checkpoint {str(path)!r} does not exist (pass a local .pt or .safetensors file)")
        checkpoint = str(path)
    return VideoSpec(
        preset=preset,
        weights=weights,
        device=values.get("device", "auto"),
        dtype=values.get("dtype", "auto"),
        seed=seed,
        checkpoint=checkpoint,
        checkpoint_key=values.get("checkpoint_key"),
        lora=lora,
        fuse_lora=fuse_lora,
    )


# ------------------------------------------------------------------- builders
def build_tiny_video_model(
    seed: int = 0, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, layers: int | None = None,
    dit: dict[str, int] | None = None,
) -> VideoModel:
    """The ``tiny-video`` preset, deterministic for ``seed``.

    ``layers``: another number of DiT blocks than 2; ``dit``: other DiT sizes
    (e.g. ``{"num_attention_heads": 8, "attention_head_dim": 64, "ffn_dim": 2048}``),
    for benchmarks that need the DiT to weigh what it weighs in Wan.
    """
    from ..video.tiny_video_dit import tiny_causal_wan  # noqa: PLC0415

    device = torch.device(device)
    overrides = {**(dit or {}), **({} if layers is None else {"num_layers": layers})}
    transformer = tiny_causal_wan(seed=seed, device=device, dtype=dtype, **overrides)
    vae, text_encoder = seeded_build(seed + 1, lambda: (tiny_wan_vae(), tiny_umt5_encoder(transformer.text_dim)))
    return VideoModel(
        name="tiny-video",
        transformer=transformer,
        vae=StreamingWanVAE(place(vae, device, dtype)),
        text_encoder=place(text_encoder, device, dtype),
        tokenizer=ByteTokenizer(),
        text_length=ByteTokenizer().model_max_length,
        default_size=TINY_VIDEO_SIZE,
    )


def build_dummy_video_model(
    preset: VideoPreset, *, seed: int, device: torch.device, dtype: torch.dtype, transformer: Any = None
) -> VideoModel:
    """The real Wan architecture with random weights (DiT and VAE); a small UMT5 stands in for UMT5-XXL.

    ``transformer``: use this one (a pipeline stage's part) instead of building the whole DiT.
    """
    from diffusers import AutoencoderKLWan  # noqa: PLC0415

    from ..video.wan_build import build_dummy_causal_wan, building_on, seeded  # noqa: PLC0415

    if transformer is None:
        transformer = build_dummy_causal_wan(preset.dummy_config, device=device, dtype=dtype, seed=seed)
    with seeded(seed + 1, device), building_on(device, dtype):
        vae = AutoencoderKLWan()  # diffusers' defaults are the Wan2.1 VAE
        text_encoder = tiny_umt5_encoder(transformer.text_dim)
    return VideoModel(
        name=f"{preset.name}-dummy",
        transformer=transformer,
        vae=StreamingWanVAE(place(vae, device, dtype)),
        text_encoder=place(text_encoder, device, dtype),
        tokenizer=ByteTokenizer(WAN_TEXT_LENGTH),
        text_length=WAN_TEXT_LENGTH,
        default_size=preset.default_size,
        default_params=preset.stream_defaults,
        recipe=preset.recipe,
        flow_shift=preset.recipe.flow_shift,
    )


def load_wan_folder(
    folder: Path, preset: VideoPreset | None = None, *, device: torch.device, dtype: torch.dtype, transformer: Any = None
) -> VideoModel:
    """A Wan T2V model from a diffusers-layout folder (transformer, vae, text_encoder, tokenizer).

    ``transformer``: use this one (a pipeline stage's part, :mod:`streamgen.parallel`) instead of loading the DiT.
    """
    from diffusers import AutoencoderKLWan, WanTransformer3DModel  # noqa: PLC0415
    from transformers import AutoTokenizer, UMT5EncoderModel  # noqa: PLC0415

    from ..video.causal_wan import CausalWanTransformer  # noqa: PLC0415

    missing = missing_wan_parts(folder)
    if missing:
        raise ModelLoadError(f"{folder} is not a complete Wan diffusers folder: missing {', '.join(missing)}")
    prefer_half = dtype in (torch.float16, torch.bfloat16)
    try:
        if transformer is None:
            transformer = WanTransformer3DModel.from_pretrained(folder / "transformer", torch_dtype=dtype, variant=_variant(folder / "transformer", prefer_half))
            transformer = CausalWanTransformer(place(transformer, device, dtype))
        vae = AutoencoderKLWan.from_pretrained(folder / "vae", torch_dtype=torch.float32 if dtype == torch.float16 else dtype)
        text_encoder = UMT5EncoderModel.from_pretrained(folder / "text_encoder", dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
    except (OSError, ValueError, RuntimeError) as error:
        raise ModelLoadError(f"loading the Wan model in {folder} failed: {error}") from error
    name = preset.name if preset is not None else folder.name
    return VideoModel(
        name=name,
        transformer=transformer,
        vae=StreamingWanVAE(place(vae, device, vae.dtype)),
        text_encoder=place(text_encoder, device, dtype),
        tokenizer=tokenizer,
        text_length=WAN_TEXT_LENGTH,
        default_size=preset.default_size if preset is not None else (832, 480),
        default_params=preset.stream_defaults if preset is not None else {},
        recipe=preset.recipe if preset is not None else STREAMDIFFUSION_V2,
        flow_shift=preset.recipe.flow_shift if preset is not None else STREAMDIFFUSION_V2.flow_shift,
    )


def missing_wan_parts(folder: Path) -> list[str]:
    """What a Wan diffusers folder lacks (configs and weights of each component; the tokenizer folder)."""
    missing = []
    for part in ("transformer", "vae", "text_encoder"):
        sub = folder / part
        if not (sub / "config.json").is_file():
            missing.append(f"{part}/config.json")
        elif choose_weight_files([p.name for p in sub.iterdir()], prefer_half=False) is None:
            missing.append(f"{part} weights")
    if not (folder / "tokenizer").is_dir():
        missing.append("tokenizer/")
    return missing


def _variant(folder: Path, prefer_half: bool) -> str | None:
    choice = choose_weight_files([p.name for p in folder.iterdir()], prefer_half)
    return choice.variant if choice is not None else None


def wan_snapshot(preset: VideoPreset, dtype: torch.dtype) -> Path:
    prefer_half = dtype in (torch.float16, torch.bfloat16)
    include = ("model_index.json", *(f"{f}/*" for f in WAN_FOLDERS))

    def select(files: list[str]) -> list[str]:
        return [f for f in ("model_index.json",) if f in files] + select_folder_files(files, WAN_FOLDERS, prefer_half)

    request = SnapshotRequest(
        repo=preset.repo or "",
        what=f"video preset {preset.name!r}: model",
        select=select,
        missing=missing_wan_parts,
        include=include,
    )
    try:
        return fetch_snapshot(request)
    except ModelLoadError as error:
        hint = f"Preset {preset.name!r} needs `{download_command(preset.repo or '', include)}`"
        raise ModelLoadError(f"{error}\n{hint}; or run it with weights='dummy' (random weights, for speed tests).") from error
