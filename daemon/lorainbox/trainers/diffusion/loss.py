"""What a training step computes: the captions' conditioning and the noise-prediction loss."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from lorainbox.core.errors import DropError
from lorainbox.models.base import BASE_WHERE
from lorainbox.trainers.diffusion.model import Parts
from lorainbox.trainers.torch_common import DeviceSetup


def encode_text(
    parts: Parts, captions: Sequence[str], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Caption embeddings (and SDXL's pooled one) as the pipelines compute them."""
    embeds, pooled = [], None
    for tokenizer, encoder in zip(parts.tokenizers, parts.text_encoders, strict=True):
        ids = tokenizer(
            list(captions),
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(device)
        if not parts.xl:
            return encoder(ids)[0], None
        out = encoder(ids, output_hidden_states=True)
        embeds.append(out.hidden_states[-2])
        pooled = out.text_embeds if hasattr(out, "text_embeds") else out[0]
    return torch.cat(embeds, dim=-1), pooled


def time_ids(
    prepared: Sequence[tuple[tuple[int, int], tuple[int, int], tuple[int, int]]],
) -> torch.Tensor:
    """SDXL's size conditioning: original size, crop corner, target size per image."""
    return torch.tensor([[*o, *c, *t] for o, c, t in prepared], dtype=torch.float32)


def diffusion_loss(
    parts: Parts,
    latents: torch.Tensor,
    embeds: torch.Tensor,
    added: dict[str, torch.Tensor] | None,
    setup: DeviceSetup,
) -> torch.Tensor:
    """Noise-prediction MSE at a uniformly drawn timestep (epsilon or v target)."""
    sched = parts.noise_scheduler
    noise = torch.randn_like(latents)
    steps = torch.randint(
        0, sched.config.num_train_timesteps, (latents.shape[0],), device=latents.device
    )
    noisy = sched.add_noise(latents, noise, steps)
    if parts.prediction_type == "v_prediction":
        target = sched.get_velocity(latents, noise, steps)
    elif parts.prediction_type == "epsilon":
        target = noise
    else:
        raise DropError.one(
            f"the model's scheduler predicts {parts.prediction_type!r}",
            BASE_WHERE,
            "use a model that predicts epsilon or v (SD 1.x, 2.x, XL)",
        )
    if setup.autocast_dtype is None:  # half frozen weights without autocast (MPS) take half
        noisy = noisy.to(setup.weight_dtype)
    with setup.autocast():
        pred = parts.unet(noisy, steps, embeds, added_cond_kwargs=added).sample
    return F.mse_loss(pred.float(), target.float())
