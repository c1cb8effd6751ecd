"""The images of a drop as the VAE sees them: in aspect-ratio buckets, resized and cropped.

Images train at about the recipe's resolution in a few aspect ratios (buckets), each resized
to cover its bucket and centre-cropped, so no image is squashed and batches share a shape.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from lorainbox.core.errors import DropError
from lorainbox.drop.imagelist import IMAGE_FIX

BUCKET_STEP = 64


def bucket_sizes(resolution: int, step: int = BUCKET_STEP) -> list[tuple[int, int]]:
    """(width, height) pairs, multiples of ``step``, with about ``resolution``² pixels each.

    Sides range from half to twice the resolution; each width gets the tallest height that keeps
    the area within ``resolution``², so no bucket costs more memory than the square one.
    """
    area = resolution * resolution
    low = max(step, (resolution // 2) // step * step)
    high = max(step, resolution * 2 // step * step)
    buckets = set()
    for w in range(low, high + 1, step):
        h = min(high, area // w // step * step)
        if h >= low:
            buckets.add((w, h))
            buckets.add((h, w))
    return sorted(buckets)


def assign_bucket(size: tuple[int, int], buckets: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The bucket with the nearest aspect ratio (log scale); the larger one on a tie."""
    ratio = math.log(size[0] / size[1])
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - ratio), -b[0] * b[1]))


@dataclass(frozen=True)
class Prepared:
    """An image resized to cover its bucket and centre-cropped, with SDXL's size conditioning."""

    pixels: torch.Tensor
    """(3, h, w) in [-1, 1]."""
    original_size: tuple[int, int]
    """(height, width), SDXL's convention."""
    crop_top_left: tuple[int, int]


def prepare_image(path: Path, bucket: tuple[int, int]) -> Prepared:
    import numpy as np
    from PIL import Image

    width, height = bucket
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
    except (OSError, ValueError) as e:
        raise DropError.one(f"cannot read the image ({e})", str(path), IMAGE_FIX) from None
    scale = max(width / img.width, height / img.height)
    resized = (max(width, round(img.width * scale)), max(height, round(img.height * scale)))
    img = img.resize(resized, Image.Resampling.LANCZOS)
    left, top = (resized[0] - width) // 2, (resized[1] - height) // 2
    img = img.crop((left, top, left + width, top + height))
    array = torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1)
    return Prepared(array / 127.5 - 1.0, (resized[1], resized[0]), (top, left))
