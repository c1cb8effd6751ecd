"""Inputs encoded once: each image's latent distribution (its mean and spread, so every step
still samples), kept on disk across runs and resumes, and while the text encoder is frozen
the captions' embeddings, so that a training step runs only the UNet.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from lorainbox.drop.imagelist import ImageItem
from lorainbox.trainers.diffusion.data import Prepared, prepare_image
from lorainbox.trainers.diffusion.loss import encode_text
from lorainbox.trainers.diffusion.model import Parts
from lorainbox.trainers.torch_common import DeviceSetup

Latent = tuple[torch.Tensor, torch.Tensor, Prepared | None]
"""The latent distribution's mean and spread, and the image's size conditioning (no pixels)."""
Embedding = tuple[torch.Tensor, torch.Tensor | None]
"""A caption's embeddings, and SDXL's pooled one."""


def cache_key(
    base: Path,
    resolution: int,
    dtype: torch.dtype,
    items: Sequence[ImageItem],
    buckets: Sequence[tuple[int, int]],
) -> str:
    """The identity of the encoded inputs: the model, the size, and every image as stored."""
    h = hashlib.sha256()
    h.update(json.dumps([str(base), resolution, str(dtype)]).encode())
    for item, bucket in zip(items, buckets, strict=True):
        stat = item.path.stat()
        h.update(json.dumps([str(item.path), stat.st_size, stat.st_mtime_ns, bucket]).encode())
    return h.hexdigest()[:16]


def encode_latents(
    parts: Parts,
    setup: DeviceSetup,
    items: Sequence[ImageItem],
    buckets: Sequence[tuple[int, int]],
    cache: Path,
    vae_dtype: torch.dtype,
) -> dict[int, Latent]:
    """Every image's latents, from ``cache`` when it is there, else encoded and written there;
    the VAE goes back to the CPU in the weights' dtype after."""
    from safetensors.torch import load_file, save_file

    device, vae = setup.device, parts.vae
    latents: dict[int, Latent] = {}
    meta_file = cache.with_suffix(".json")
    if cache.is_file() and meta_file.is_file():
        stored = load_file(cache)
        meta = json.loads(meta_file.read_text())
        for i in range(len(items)):
            o, c = meta[str(i)]
            cond = Prepared(torch.empty(0), tuple(o), tuple(c))  # type: ignore[arg-type]
            latents[i] = (stored[f"{i}.mean"], stored[f"{i}.std"], cond)
    else:
        vae.to(device, vae_dtype)
        tensors, meta = {}, {}
        with torch.no_grad():
            for i, (item, bucket) in enumerate(zip(items, buckets, strict=True)):
                prepared = prepare_image(item.path, bucket)
                pixels = prepared.pixels[None].to(device, vae.dtype)
                dist = vae.encode(pixels).latent_dist
                mean, std = (x[0].float().cpu() for x in (dist.mean, dist.std))
                tensors[f"{i}.mean"], tensors[f"{i}.std"] = mean, std
                meta[str(i)] = [prepared.original_size, prepared.crop_top_left]
                cond = Prepared(torch.empty(0), prepared.original_size, prepared.crop_top_left)
                latents[i] = (mean, std, cond)
        cache.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, cache.with_name(cache.name + ".partial"))
        meta_file.write_text(json.dumps(meta))
        cache.with_name(cache.name + ".partial").replace(cache)
    vae.to("cpu", setup.weight_dtype)
    return latents


def encode_captions(
    parts: Parts, device: torch.device, captions: Iterable[str]
) -> dict[str, Embedding]:
    """Each distinct caption's embeddings, on the CPU; the text encoders visit ``device``."""
    embeddings: dict[str, Embedding] = {}
    for encoder in parts.text_encoders:
        encoder.to(device)
    with torch.no_grad():
        for caption in sorted(set(captions)):
            embeds, pooled = encode_text(parts, [caption], device)
            embeddings[caption] = (embeds[0].cpu(), None if pooled is None else pooled[0].cpu())
    for encoder in parts.text_encoders:
        encoder.to("cpu")
    return embeddings
