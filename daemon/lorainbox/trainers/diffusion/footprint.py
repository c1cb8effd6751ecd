"""How much memory a diffusion step takes, and the footprint that keeps it in the budget."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from lorainbox.core.errors import DropError
from lorainbox.trainers.base import Footprint
from lorainbox.trainers.torch_common import GB

ACT_BYTES_PER_PARAM = 6.0
"""Activation bytes per UNet parameter for one 512x512 image in 16-bit precision without
checkpointing: SD 1.5 (860M parameters) needs ~5 GB there. Scales with pixels and precision."""
CHECKPOINTED_SHARE = 0.25
"""Gradient checkpointing keeps roughly a quarter of those activations."""


def estimate_diffusion_gb(
    weight_bytes: int,
    unet_params: int,
    compute_bytes: int,
    resolution: int,
    batch_size: int,
    grad_checkpoint: bool,
    lora_params: int,
) -> float:
    """Rough peak of one step: weights, LoRA with its Adam state, activations, overhead."""
    pixels = (resolution / 512) ** 2
    acts = ACT_BYTES_PER_PARAM * unet_params * pixels * batch_size * compute_bytes / 2
    if grad_checkpoint:
        acts *= CHECKPOINTED_SHARE
    return (weight_bytes + 16 * lora_params + acts) / GB + 0.8


def plan_diffusion_footprint(
    start: Footprint, budget_gb: float, estimate: Callable[[Footprint], float]
) -> tuple[Footprint, float]:
    """Checkpointing first, then halve the batch, until the estimate fits (as for LLMs)."""
    fp = replace(start, changes=list(start.changes))
    while (gb := estimate(fp)) > budget_gb:
        if not fp.grad_checkpoint:
            fp = replace(fp, grad_checkpoint=True, changes=[*fp.changes, "grad checkpointing on"])
        elif fp.batch_size > 1:
            b = fp.batch_size // 2
            fp = replace(fp, batch_size=b, changes=[*fp.changes, f"batch {fp.batch_size} -> {b}"])
        else:
            raise DropError.one(
                f"training needs about {gb:.1f} GB even with batch 1 and checkpointing; the "
                f"budget is {budget_gb:g} GB",
                "recipe.toml, [memory] max_gb and [diffusion] resolution",
                "raise [memory] max_gb, or lower [diffusion] resolution",
            )
        fp.changes[-1] += f": estimated {gb:.1f} GB over the {budget_gb:g} GB budget"
    return fp, gb
