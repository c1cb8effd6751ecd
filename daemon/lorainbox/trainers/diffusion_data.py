"""The images of a drop: their list, their aspect-ratio buckets, their pixels for the VAE.

Images train at about the recipe's resolution in a few aspect ratios (buckets), each resized
to cover its bucket and centre-cropped, so no image is squashed and batches share a shape.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from lorainbox.core.errors import DropError

BUCKET_STEP = 64
IMAGE_FIX = "replace it with a valid PNG, JPEG or WebP image, or remove it and its caption"


@dataclass(frozen=True)
class ImageItem:
    path: Path
    caption: str
    repeats: int
    size: tuple[int, int]
    """(width, height) as stored."""


def read_images(path: Path) -> list[ImageItem]:
    """``images.jsonl`` as the intake wrote it; every image's header is read here, once."""
    from PIL import Image, UnidentifiedImageError

    items = []
    for i, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            image_path = Path(row["path"])
            caption = str(row.get("caption") or "")
            repeats = max(1, int(row.get("repeats", 1)))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise DropError.one(
                f"unreadable entry in the image list ({e})",
                f"{path}, line {i}",
                "run the drop through intake again (`lorainbox retry NAME`)",
            ) from None
        try:
            with Image.open(image_path) as img:
                size = img.size
        except FileNotFoundError:
            raise DropError.one(
                "the image is missing", str(image_path), "put it back, or remove its caption"
            ) from None
        except (UnidentifiedImageError, OSError) as e:
            raise DropError.one(
                f"cannot read the image ({e})", str(image_path), IMAGE_FIX
            ) from None
        items.append(ImageItem(image_path, caption, repeats, size))
    if not items:
        raise DropError.one("there are no images to train on", str(path), "add captioned images")
    return items


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
