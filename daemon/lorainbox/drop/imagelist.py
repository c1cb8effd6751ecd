"""The image list: ``images.jsonl``, which the intake writes for the diffusion trainer."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from lorainbox.core.atomic import replacing

IMAGES_FILE = "images.jsonl"


@dataclass(frozen=True)
class ImageItem:
    path: Path
    caption: str
    repeats: int = 1
    """How often an epoch shows the image (kohya's ``10_name`` folders)."""


def write_images(path: Path, items: Iterable[ImageItem]) -> None:
    with replacing(path) as f:
        for item in items:
            row = {"path": str(item.path.resolve()), "caption": item.caption}
            f.write(json.dumps({**row, "repeats": item.repeats}, ensure_ascii=False) + "\n")
