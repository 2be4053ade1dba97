"""Tiny real components for the loading tests: saved to disk, then loaded back by streamgen.

Everything is a real diffusers/transformers class at a tiny size, written with
the libraries' own ``save_pretrained`` (or, for single files, in the original
Stable Diffusion key layout), so the loaders are tested exactly as they are
used on real checkpoints.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from diffusers import LCMScheduler, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from streamgen.models.image.image_model import ImageModel
from streamgen.models.image.numerics import DEFAULT_SCHEDULE, make_numerics
from streamgen.models.loading.shipped_configs import read_json, shipped_config_dir
from streamgen.models.image.tiny import tiny_vae
from streamgen.models.loading.tokenizer import CLIP_MAX_LENGTH, OFFLINE_VOCAB_SIZE, offline_clip_tokenizer

FRAME_SIZE = 64


def frame(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (FRAME_SIZE, FRAME_SIZE, 3), dtype=np.uint8)


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))


def save_diffusers_dir(model: ImageModel, folder: Path, *, scheduler_class: type = LCMScheduler) -> Path:
    """Write ``model``'s components in diffusers' directory layout (what `save_pretrained` pipelines do)."""
    model.unet.save_pretrained(folder / "unet")
    model.vae.save_pretrained(folder / "vae")
    for index, (encoder, tokenizer) in enumerate(zip(model.text_encoders, model.tokenizers)):
        suffix = "" if index == 0 else f"_{index + 1}"
        encoder.save_pretrained(folder / f"text_encoder{suffix}")
        tokenizer.save_pretrained(folder / f"tokenizer{suffix}")
    scheduler_class(**DEFAULT_SCHEDULE).save_pretrained(folder / "scheduler")
    pipeline = "StableDiffusionXLPipeline" if model.is_sdxl else "StableDiffusionPipeline"
    write_json(folder / "model_index.json", {"_class_name": pipeline, "unet": ["diffusers", "UNet2DConditionModel"]})
    return folder


def tiny_clip(hidden: int, projection: bool = False) -> torch.nn.Module:
    config = CLIPTextConfig(
        vocab_size=OFFLINE_VOCAB_SIZE,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=CLIP_MAX_LENGTH,
        projection_dim=hidden,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def tiny_sdxl_model(seed: int = 0) -> ImageModel:
    """An SDXL-shaped model: "text_time" added conditioning, CLIP + CLIP-with-projection encoders."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        first, second = tiny_clip(16), tiny_clip(16, projection=True)
        unet = UNet2DConditionModel(
            sample_size=32,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=8,
            norm_num_groups=16,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=16 + 6 * 8,
        )
        vae = tiny_vae()
    modules = [m.eval().requires_grad_(False) for m in (unet, vae, first, second)]
    return ImageModel(
        name="tiny-sdxl",
        unet=modules[0],
        vae=modules[1],
        text_encoders=modules[2:],
        tokenizers=[offline_clip_tokenizer(), offline_clip_tokenizer()],
        numerics=make_numerics("cpu", x0_formula="lcm"),
        default_size=(256, 256),
        is_sdxl=True,
    )


# ---- original (LDM / A1111) single-file layout ------------------------------------------

_RESNET_TO_LDM = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def _resnet_key(rest: str) -> str:
    head, _, tail = rest.partition(".")
    return f"{_RESNET_TO_LDM.get(head, head)}.{tail}"


def unet_to_ldm(unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    """The UNet's weights under the original Stable Diffusion key names (``model.diffusion_model.*``).

    Written from the layout's definition: input block 0 is conv_in, each
    down level contributes ``layers_per_block`` (resnet, attention) blocks and
    one downsampler, the middle block is resnet/attention/resnet, and each up
    level ``layers_per_block + 1`` blocks whose last one carries the upsampler.
    """
    per_level = unet.config.layers_per_block
    out: dict[str, torch.Tensor] = {}
    fixed = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2", "conv_norm_out": "out.0", "conv_out": "out.2"}
    up_has_attention = {i: len(block.attentions) > 0 if hasattr(block, "attentions") else False for i, block in enumerate(unet.up_blocks)}
    for key, value in unet.state_dict().items():
        parts = key.split(".")
        name = None
        for prefix, ldm in fixed.items():
            if key.startswith(prefix + "."):
                name = ldm + key[len(prefix) :]
        if parts[0] == "down_blocks":
            level, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
            block = 1 + level * (per_level + 1) + index
            if kind == "resnets":
                name = f"input_blocks.{block}.0.{_resnet_key(rest)}"
            elif kind == "attentions":
                name = f"input_blocks.{block}.1.{rest}"
            else:  # downsamplers.0.conv
                name = f"input_blocks.{1 + level * (per_level + 1) + per_level}.0.op.{parts[-1]}"
        elif parts[0] == "mid_block":
            kind, index, rest = parts[1], int(parts[2]), ".".join(parts[3:])
            name = f"middle_block.{2 * index}.{_resnet_key(rest)}" if kind == "resnets" else f"middle_block.1.{rest}"
        elif parts[0] == "up_blocks":
            level, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
            block = level * (per_level + 1) + index
            if kind == "resnets":
                name = f"output_blocks.{block}.0.{_resnet_key(rest)}"
            elif kind == "attentions":
                name = f"output_blocks.{block}.1.{rest}"
            else:  # upsamplers.0.conv
                last = level * (per_level + 1) + per_level
                name = f"output_blocks.{last}.{2 if up_has_attention[level] else 1}.conv.{parts[-1]}"
        assert name is not None, f"no original-layout name for {key}"
        out[f"model.diffusion_model.{name}"] = value.clone()
    return out


def clip_to_ldm(encoder: torch.nn.Module) -> dict[str, torch.Tensor]:
    """An SD 1.x text encoder under its original names (``cond_stage_model.transformer.text_model.*``)."""
    out = {}
    for key, value in encoder.state_dict().items():
        key = key if key.startswith("text_model.") else f"text_model.{key}"
        out[f"cond_stage_model.transformer.{key}"] = value.clone()
    return out


def save_single_file(model: ImageModel, folder: Path, name: str = "tiny.safetensors") -> Path:
    """One original-layout checkpoint (UNet + text encoder) with its configs and tokenizer beside it."""
    save_diffusers_dir(model, folder / "reference")
    for component in ("unet", "text_encoder"):
        write_json(folder / component / "config.json", read_json(folder / "reference" / component / "config.json"))
    model.tokenizers[0].save_pretrained(folder / "tokenizer")
    write_json(folder / "scheduler" / "scheduler_config.json", read_json(folder / "reference" / "scheduler" / "scheduler_config.json"))
    path = folder / name
    save_file({**unet_to_ldm(model.unet), **clip_to_ldm(model.text_encoders[0])}, str(path))
    return path


# ---- scaled-down copies of the shipped configs ------------------------------------------


def scaled_down_config_dir(preset_config: str, folder: Path) -> Path:
    """The shipped config folder with the same structure but widths/depths small enough for a CPU test.

    Block types, attention layout (linear projections, heads per level,
    transformer depth pattern), "text_time" conditioning and the VAE block
    structure stay; channel widths, layer counts and vocab shrink.
    """
    source = shipped_config_dir(preset_config)
    unet = read_json(source / "unet" / "config.json")
    levels = len(unet["block_out_channels"])
    unet["block_out_channels"] = [16 * 2 ** min(i, 2) for i in range(levels)]
    heads = unet["attention_head_dim"]
    unet["attention_head_dim"] = [2] * levels if isinstance(heads, list) else 4
    unet["norm_num_groups"] = 8
    unet["layers_per_block"] = 1
    if "transformer_layers_per_block" in unet:
        unet["transformer_layers_per_block"] = [min(d, 2) for d in unet["transformer_layers_per_block"]]
    encoders = sorted(p.name for p in source.iterdir() if p.name.startswith("text_encoder"))
    widths = []
    for name in encoders:
        config = read_json(source / name / "config.json")
        config.update(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, projection_dim=16)
        widths.append(16)
        write_json(folder / name / "config.json", config)
    unet["cross_attention_dim"] = sum(widths)
    if unet.get("addition_embed_type") == "text_time":
        unet["addition_time_embed_dim"] = 8
        unet["projection_class_embeddings_input_dim"] = widths[-1] + 6 * 8
    write_json(folder / "unet" / "config.json", unet)
    vae = read_json(source / "vae" / "config.json")
    vae.update(block_out_channels=[8, 8, 16, 16], norm_num_groups=8, layers_per_block=1)
    write_json(folder / "vae" / "config.json", vae)
    write_json(folder / "scheduler" / "scheduler_config.json", read_json(source / "scheduler" / "scheduler_config.json"))
    return folder


def save_tiny_configs_root(root: Path) -> Path:
    """A stand-in for ``streamgen/models/configs``: every shipped config scaled down (TAESD: same blocks, narrower).

    Point :data:`streamgen.models.loading.shipped_configs.CONFIGS_ROOT` at it (monkeypatch) and
    presets build/convert through their shipped configs at CPU-test size.
    """
    for name in ("sd-turbo", "sd15", "sdxl-turbo"):
        scaled_down_config_dir(name, root / name)
    for name in ("taesd", "taesdxl"):
        config = read_json(shipped_config_dir(name) / "config.json")
        config.update(encoder_block_out_channels=[16] * 4, decoder_block_out_channels=[16] * 4)
        write_json(root / name / "config.json", config)
    return root


def save_bare_single_file(model: ImageModel, folder: Path, name: str = "model.safetensors") -> Path:
    """An SD 1.x-layout checkpoint with only its tokenizer beside it (no configs: the shipped ones are used)."""
    model.tokenizers[0].save_pretrained(folder / "tokenizer")
    path = folder / name
    save_file({**unet_to_ldm(model.unet), **clip_to_ldm(model.text_encoders[0])}, str(path))
    return path


# ---- VAEs ----------------------------------------------------------------------------------


def tiny_kl_vae(seed: int = 0) -> torch.nn.Module:
    """A small AutoencoderKL with the real one's structure (4 levels: 8x downscale, 4 latent channels)."""
    from diffusers import AutoencoderKL  # noqa: PLC0415

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKL(
            block_out_channels=(8, 8, 16, 16),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4,
            norm_num_groups=8,
            layers_per_block=1,
        )
    return vae.eval().requires_grad_(False)


# ---- LoRA ------------------------------------------------------------------------------------

UNET_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
CLIP_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def save_tiny_lora(model: ImageModel, folder: Path, *, seed: int = 1, rank: int = 4, text_encoder: bool = True) -> Path:
    """A random LoRA for ``model`` in diffusers' format (``pytorch_lora_weights.safetensors``), as trainers write it.

    peft adapters (random A and B, alpha = rank so each delta is exactly B @ A)
    are injected into copies of the UNet and first text encoder; their state
    dicts are converted to diffusers' names and saved by diffusers itself.
    ``model`` is not modified.
    """
    import copy  # noqa: PLC0415

    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline  # noqa: PLC0415
    from diffusers.utils import convert_state_dict_to_diffusers  # noqa: PLC0415
    from peft import LoraConfig, inject_adapter_in_model  # noqa: PLC0415
    from peft.utils import get_peft_model_state_dict  # noqa: PLC0415

    def lora_of(module: torch.nn.Module, targets: tuple[str, ...]) -> dict[str, torch.Tensor]:
        module = inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=list(targets), init_lora_weights=False), copy.deepcopy(module))
        return convert_state_dict_to_diffusers(get_peft_model_state_dict(module))

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers = {"unet_lora_layers": lora_of(model.unet, UNET_LORA_TARGETS)}
        if text_encoder:
            layers["text_encoder_lora_layers"] = lora_of(model.text_encoders[0], CLIP_LORA_TARGETS)
    pipeline = StableDiffusionXLPipeline if model.is_sdxl else StableDiffusionPipeline
    pipeline.save_lora_weights(folder, **layers)
    return folder / "pytorch_lora_weights.safetensors"


# ---- a Hugging Face cache on disk ------------------------------------------------------------


def add_to_hub_cache(cache: Path, repo: str, folder: Path, revision: str = "0123456789abcdef0123456789abcdef01234567") -> Path:
    """Put ``folder`` into ``cache`` as the main-branch snapshot of ``repo`` (the layout `hf download` writes)."""
    import shutil  # noqa: PLC0415

    root = cache / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / revision
    shutil.copytree(folder, snapshot)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(revision)
    return snapshot


# ---- comparisons -----------------------------------------------------------------------------


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def stream_outputs(model: ImageModel, frames: int = 2, **params) -> list[np.ndarray]:
    """What an ImageStream on ``model`` returns for a fixed prompt, seed and input frames."""
    import streamgen  # noqa: PLC0415

    stream = streamgen.ImageStream(model, width=FRAME_SIZE, height=FRAME_SIZE, prompt="a red fox", seed=3, **params)
    return [stream(frame(k)) for k in range(frames)]


def use_hub_cache(monkeypatch, cache: Path) -> Path:
    """Make ``cache`` the Hugging Face hub cache for this test (env vars and huggingface_hub's constants)."""
    from huggingface_hub import constants  # noqa: PLC0415

    cache.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("HF_HOME", str(cache.parent))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache
