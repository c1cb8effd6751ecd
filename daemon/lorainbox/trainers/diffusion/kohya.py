"""PEFT/diffusers LoRA weights -> the kohya (sd-scripts) format AUTOMATIC1111, ComfyUI and Draw Things load.

The format names each adapted module by its path with dots turned into underscores, prefixed
``lora_unet_`` or ``lora_te_`` (``lora_te1_``/``lora_te2_`` for SDXL's two text encoders), and
stores ``lora_down.weight`` (PEFT's ``lora_A``), ``lora_up.weight`` (``lora_B``) and a scalar
``alpha`` (the update is scaled by alpha / rank, as in PEFT). SD 1.x UNets keep diffusers' module
names, as sd-scripts does; SDXL UNets use Stability's names (``input_blocks.4.1...``), which is
what sd-scripts writes for SDXL and what AUTOMATIC1111 expects.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch

UNET_PREFIX = "lora_unet"
SD1_TEXT_PREFIXES = ("lora_te",)
SDXL_TEXT_PREFIXES = ("lora_te1", "lora_te2")
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<part>[AB])(?:\.[^.]+)?\.weight$")
_ATTENTION = re.compile(
    r"^(?:(?P<down>down_blocks)\.(?P<di>\d+)\.attentions\.(?P<dj>\d+)"
    r"|(?P<mid>mid_block)\.attentions\.0"
    r"|(?P<up>up_blocks)\.(?P<ui>\d+)\.attentions\.(?P<uj>\d+))\.(?P<rest>.+)$"
)


def sgm_module_name(diffusers_name: str, layers_per_block: int) -> str:
    """Stability's (SGM/LDM) name of a module inside an SDXL UNet attention block.

    ``down_blocks.i.attentions.j`` is ``input_blocks.{i*(L+1)+j+1}.1``, the mid block's attention
    is ``middle_block.1`` and ``up_blocks.i.attentions.j`` is ``output_blocks.{i*(L+1)+j}.1``,
    where L is the UNet's ``layers_per_block`` (each down block also holds a downsampler, each up
    block one extra layer). Names inside the transformer blocks are the same in both.
    """
    m = _ATTENTION.match(diffusers_name)
    if m is None:
        raise ValueError(
            f"{diffusers_name}: the kohya SDXL format is written for LoRA on attention blocks only"
        )
    per = layers_per_block + 1
    if m["down"]:
        block = f"input_blocks.{int(m['di']) * per + int(m['dj']) + 1}.1"
    elif m["mid"]:
        block = "middle_block.1"
    else:
        block = f"output_blocks.{int(m['ui']) * per + int(m['uj'])}.1"
    return f"{block}.{m['rest']}"


def split_lora_state(state: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """``{module: {"A": down, "B": up}}`` from a PEFT state dict (adapter names dropped)."""
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        m = _LORA_KEY.match(key)
        if m is None:
            raise ValueError(f"{key}: not a LoRA weight (expected *.lora_A/lora_B.weight)")
        module = m["module"].removeprefix("base_model.model.")
        modules.setdefault(module, {})[m["part"]] = value
    incomplete = [k for k, v in modules.items() if set(v) != {"A", "B"}]
    if incomplete:
        raise ValueError(f"LoRA modules without both halves: {', '.join(incomplete[:3])}")
    return modules


def _module_alpha(alpha: float | Mapping[str, float], module: str) -> float:
    if isinstance(alpha, Mapping):
        return float(alpha.get(module, alpha.get("", 0.0)))
    return float(alpha)


def to_kohya(
    unet: Mapping[str, torch.Tensor],
    alpha: float | Mapping[str, float],
    *,
    text_encoders: tuple[Mapping[str, torch.Tensor], ...] = (),
    text_alpha: float | Mapping[str, float] | None = None,
    sdxl: bool = False,
    layers_per_block: int = 2,
    dtype: torch.dtype = torch.float16,
) -> dict[str, torch.Tensor]:
    """The kohya state dict of a UNet LoRA and optional text-encoder LoRAs (PEFT state dicts)."""
    out: dict[str, torch.Tensor] = {}

    def put(name: str, halves: dict[str, torch.Tensor], a: float) -> None:
        base = name.replace(".", "_")
        out[f"{base}.lora_down.weight"] = halves["A"].detach().to("cpu", dtype).contiguous()
        out[f"{base}.lora_up.weight"] = halves["B"].detach().to("cpu", dtype).contiguous()
        out[f"{base}.alpha"] = torch.tensor(a, dtype=dtype)

    for module, halves in split_lora_state(unet).items():
        module = module.removeprefix("unet.")
        name = sgm_module_name(module, layers_per_block) if sdxl else module
        put(f"{UNET_PREFIX}.{name}", halves, _module_alpha(alpha, module))
    prefixes = SDXL_TEXT_PREFIXES if sdxl else SD1_TEXT_PREFIXES
    if len(text_encoders) > len(prefixes):
        raise ValueError(f"{len(text_encoders)} text encoders; this model has {len(prefixes)}")
    for prefix, state in zip(prefixes, text_encoders, strict=False):
        for module, halves in split_lora_state(state).items():
            module = re.sub(r"^text_encoder(?:_2)?\.", "", module)
            if not module.startswith("text_model."):
                module = f"text_model.{module}"  # transformers 5 dropped the wrapper's name
            a = _module_alpha(alpha if text_alpha is None else text_alpha, module)
            put(f"{prefix}.{module}", halves, a)
    return out


def kohya_metadata(
    *,
    name: str,
    rank: int,
    alpha: float,
    sdxl: bool,
    resolution: int,
    steps: int,
    text_encoder: bool,
    extra: Mapping[str, object] | None = None,
) -> dict[str, str]:
    """sd-scripts' ``ss_*`` keys and the ModelSpec keys that UIs show (all strings)."""
    arch = "stable-diffusion-xl-v1-base/lora" if sdxl else "stable-diffusion-v1/lora"
    meta: dict[str, object] = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": rank,
        "ss_network_alpha": alpha,
        "ss_base_model_version": "sdxl_base_v1-0" if sdxl else "sd_v1",
        "ss_v2": False,
        "ss_resolution": f"({resolution}, {resolution})",
        "ss_steps": steps,
        "ss_network_train_unet_only": not text_encoder,
        "ss_output_name": name,
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": arch,
        "modelspec.implementation": "https://github.com/huggingface/diffusers",
        "modelspec.title": name,
        "modelspec.resolution": f"{resolution}x{resolution}",
        **(extra or {}),
    }
    return {k: v if isinstance(v, str) else str(v) for k, v in meta.items()}


def save_kohya(path: Path, state: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> Path:
    """Write the file under a temporary name and rename it: a reader never sees half of it."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    save_file(dict(state), tmp, metadata=dict(metadata))
    tmp.replace(path)
    return path
