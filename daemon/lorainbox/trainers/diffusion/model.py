"""The Stable Diffusion base a LoRA trains on: found, loaded, and given its adapters.

SD 1.x, 2.x and XL, as a diffusers folder, a single checkpoint file or a Hugging Face id
(found by :func:`lorainbox.models.base.resolve_diffusion_base`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lorainbox.core.errors import DropError
from lorainbox.drop.recipe import LoraSpec
from lorainbox.models.base import BASE_WHERE, safetensors_header
from lorainbox.trainers.diffusion import kohya

UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def load_pipeline(base: Path, dtype: torch.dtype) -> Any:
    """The pipeline, its components on the CPU in ``dtype``; SD 1.x/2.x and SDXL."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as hf_logging

    diffusers_logging.disable_progress_bar()
    hf_logging.disable_progress_bar()
    if base.is_file():
        return _load_single_file(base, dtype)
    index = json.loads((base / "model_index.json").read_text(encoding="utf-8"))
    name = str(index.get("_class_name", ""))
    try:
        if "XL" in name:
            return StableDiffusionXLPipeline.from_pretrained(base, dtype=dtype)
        if name.startswith("StableDiffusion") and "3" not in name:
            return StableDiffusionPipeline.from_pretrained(
                base, dtype=dtype, safety_checker=None, requires_safety_checker=False
            )
    except (OSError, ValueError) as e:
        raise DropError.one(
            f"the diffusers model could not be loaded ({e})",
            str(base),
            "download the model again; a file is missing or damaged",
        ) from None
    raise DropError.one(
        f"{name or 'this pipeline'} is not a Stable Diffusion 1.x, 2.x or XL model",
        BASE_WHERE,
        "use an SD 1.5, SD 2.x or SDXL base model",
    )


def _load_single_file(path: Path, dtype: torch.dtype) -> Any:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    xl = path.suffix == ".safetensors" and any(
        k.startswith("conditioner.embedders.1") for k in safetensors_header(path)
    )
    cls: Any = StableDiffusionXLPipeline if xl else StableDiffusionPipeline
    try:
        return cls.from_single_file(path, dtype=dtype, local_files_only=True)
    except Exception as e:  # any failure here leaves the person the same fix
        raise DropError.one(
            "a single-file checkpoint needs its model's configuration files, which are not on "
            f"this machine (loading it offline failed: {type(e).__name__}: {str(e)[:300]})",
            f"{BASE_WHERE} ({path})",
            "use the model as a diffusers folder (model_index.json, unet/, vae/...): download "
            "it in that form, or convert the file once with diffusers' "
            "convert_original_stable_diffusion_to_diffusers.py",
        ) from None


@dataclass
class Parts:
    """The pipeline's components the trainer drives directly."""

    pipe: Any
    unet: Any
    vae: Any
    text_encoders: list[Any]
    tokenizers: list[Any]
    noise_scheduler: Any
    xl: bool

    @property
    def prediction_type(self) -> str:
        return str(self.noise_scheduler.config.prediction_type)


def split_pipeline(pipe: Any) -> Parts:
    """The pipeline's parts, frozen, with a fresh training noise scheduler."""
    from diffusers import DDPMScheduler

    xl = hasattr(pipe, "text_encoder_2")
    encoders = [pipe.text_encoder, *([pipe.text_encoder_2] if xl else [])]
    tokenizers = [pipe.tokenizer, *([pipe.tokenizer_2] if xl else [])]
    noise = DDPMScheduler.from_config(pipe.scheduler.config)
    for module in (pipe.unet, pipe.vae, *encoders):
        module.requires_grad_(False)
    return Parts(pipe, pipe.unet, pipe.vae, encoders, tokenizers, noise, xl)


def add_lora(module: Any, lora: LoraSpec, alpha: float, targets: list[str]) -> None:
    from peft import LoraConfig

    module.add_adapter(
        LoraConfig(
            r=lora.rank,
            lora_alpha=alpha,
            lora_dropout=lora.dropout,
            init_lora_weights="gaussian",
            target_modules=targets,
        )
    )


def check_sdxl_targets(unet: Any) -> None:
    """SDXL's kohya names cover only the attention blocks: other adapted modules fail here."""
    from peft.utils import get_peft_model_state_dict

    for module in kohya.split_lora_state(get_peft_model_state_dict(unet)):
        try:
            kohya.sgm_module_name(module, unet.config.layers_per_block)
        except ValueError:
            raise DropError.one(
                f"[lora] keys adapt {module}, outside the UNet's attention blocks; the "
                "kohya SDXL format carries only those",
                "recipe.toml, [lora] keys",
                "adapt attention modules only (to_q, to_k, to_v, to_out.0, proj_in, "
                "proj_out, ff.net.0.proj, ff.net.2), or leave keys out",
            ) from None


def vae_encode_dtype(weight_dtype: torch.dtype, force_upcast: bool) -> torch.dtype:
    """The VAE encodes in float32 when the weights are float16 and its config says it
    overflows there (``force_upcast``: SDXL's VAE gives NaN latents in float16; diffusers'
    SDXL scripts keep it float32 "to avoid NaN losses"). It is small: ~0.3 GB in float32."""
    if weight_dtype == torch.float16 and force_upcast:
        return torch.float32
    return weight_dtype
