"""What a drop's checked data is: the summary the intake records and writes the split from.

Its own module because both checkers (JSON Lines and images) return it and the entry that calls
them hands it on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from lorainbox.drop.imagelist import ImageItem

DataKind = Literal["chat", "completions", "text", "images"]


@dataclass
class DataSummary:
    kind: DataKind
    train: list[Path]
    """Data files (images: the folders or ``metadata.csv``) given by the recipe or found."""
    valid: list[Path]
    train_examples: int
    """For images: images times their repeats, what one epoch sees."""
    valid_examples: int
    stats: dict[str, float | int | str] = field(default_factory=dict)
    items: list[ImageItem] = field(default_factory=list)
