"""The image list: ``images.jsonl``, which the intake writes and the diffusion trainer reads.

A row is what the person gave (path, caption, repeats). The size is not in it but read from the
image's header when the list is loaded, since the job may wait long after the check: reading it
is also what finds an image that has gone missing or broken meanwhile.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from lorainbox.core.atomic import replacing
from lorainbox.core.errors import DropError

IMAGES_FILE = "images.jsonl"
IMAGE_FIX = "replace it with a valid PNG, JPEG or WebP image, or remove it and its caption"


@dataclass(frozen=True)
class ImageItem:
    path: Path
    caption: str
    repeats: int = 1
    """How often an epoch shows the image (kohya's ``10_name`` folders)."""
    size: tuple[int, int] | None = field(default=None, compare=False)
    """(width, height) as stored, once the image has been read; a measurement of the file at
    ``path``, so not part of what makes two items the same."""


def write_images(path: Path, items: Iterable[ImageItem]) -> None:
    with replacing(path) as f:
        for item in items:
            row = {"path": str(item.path.resolve()), "caption": item.caption}
            f.write(json.dumps({**row, "repeats": item.repeats}, ensure_ascii=False) + "\n")


def read_images(path: Path) -> list[ImageItem]:
    """``images.jsonl`` as the intake wrote it; every image's header is read here, once."""
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
