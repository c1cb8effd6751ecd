"""The finished LoRA's files: diffusers' own, the kohya file image UIs load, and its copy.

The copy goes where the recipe's ``copy_to`` says (ComfyUI's ``models/loras``, say); that folder
is checked before training, so hours of work never end in a folder that cannot be written.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from lorainbox.core.errors import DropError
from lorainbox.drop.recipe import Recipe
from lorainbox.trainers.diffusion import kohya
from lorainbox.trainers.diffusion.model import Parts

DIFFUSERS_FILE = "pytorch_lora_weights.safetensors"
COPY_WHERE = "recipe.toml, [diffusion] copy_to"


def write_lora(
    folder: Path,
    parts: Parts,
    recipe: Recipe,
    *,
    alpha: float,
    resolution: int,
    steps: int,
    text_encoder: bool,
    kohya_name: str,
) -> None:
    """Both files of the trained adapters into ``folder``."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    unet_state = get_peft_model_state_dict(parts.unet)
    te_states = (
        tuple(get_peft_model_state_dict(e) for e in parts.text_encoders) if text_encoder else ()
    )
    kohya_state = kohya.to_kohya(
        unet_state,
        alpha,
        text_encoders=te_states,
        sdxl=parts.xl,
        layers_per_block=parts.unet.config.layers_per_block,
    )
    sd2 = not parts.xl and parts.text_encoders[0].config.hidden_size == 1024
    metadata = kohya.kohya_metadata(
        name=recipe.name,
        rank=recipe.lora.rank,
        alpha=alpha,
        sdxl=parts.xl,
        resolution=resolution,
        steps=steps,
        text_encoder=text_encoder,
        extra={"ss_v2": sd2, "lorainbox.base_model": recipe.base_model},
    )
    layers: dict[str, Any] = {"unet_lora_layers": convert_state_dict_to_diffusers(unet_state)}
    names = ["text_encoder_lora_layers", "text_encoder_2_lora_layers"]
    for name, state in zip(names, te_states, strict=False):
        layers[name] = convert_state_dict_to_diffusers(state)
    cls: Any = StableDiffusionXLPipeline if parts.xl else StableDiffusionPipeline
    cls.save_lora_weights(folder, weight_name=DIFFUSERS_FILE, **layers)
    kohya.save_kohya(folder / kohya_name, kohya_state, metadata)


def copy_target(recipe: Recipe, job_dir: Path) -> Path | None:
    if not recipe.diffusion.copy_to:
        return None
    path = Path(recipe.diffusion.copy_to).expanduser()
    return path if path.is_absolute() else job_dir / path


def check_writable(folder: Path) -> None:
    """Fail before hours of training, not after, when the copy cannot be made."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".lorainbox-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise DropError.one(
            f"cannot write to the copy_to folder {folder} ({e.strerror or e})",
            COPY_WHERE,
            "give a folder you can write to (e.g. ComfyUI's models/loras), or remove copy_to",
        ) from None


def copy_lora(kohya_file: Path, copy_to: Path, adapter_dir: Path) -> None:
    try:
        copy_to.mkdir(parents=True, exist_ok=True)
        shutil.copy2(kohya_file, copy_to / kohya_file.name)
    except OSError as e:
        raise DropError.one(
            f"could not copy the LoRA into {copy_to} ({e.strerror or e})",
            COPY_WHERE,
            "give a folder you can write to, or remove copy_to; the LoRA itself is in "
            f"{adapter_dir}",
        ) from None
