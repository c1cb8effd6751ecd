"""The data in a drop: find it, check every example, and write the split the trainers read.

The entry the intake calls; finding the data is in :mod:`locate`, checking it in :mod:`jsonl`
(language models) and :mod:`images`, and reading files safely in :mod:`files`.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Literal

from lorainbox.drop.files import Problems, data_files
from lorainbox.drop.imagelist import IMAGES_FILE, write_images
from lorainbox.drop.images import find_images, inspect_images
from lorainbox.drop.jsonl import (
    TRAIN_FILE,
    VALID_FILE,
    JsonlFiles,
    inspect_jsonl,
    sniff_kind,
    valid_count,
    write_normalised,
    write_split,
)
from lorainbox.drop.locate import check_format_fits, locate
from lorainbox.drop.recipe import DataSpec
from lorainbox.drop.summary import DataSummary


def inspect_data(
    drop_dir: Path, spec: DataSpec, *, kind: Literal["llm", "diffusion"]
) -> DataSummary:
    """Find and check the drop's data; raise :class:`DropError` listing every problem found."""
    problems = Problems()
    check_format_fits(drop_dir, spec, kind, problems)
    source = locate(drop_dir, spec, kind, problems)
    if source is None:
        problems.raise_if_any()
        raise AssertionError("no data source and no problem recorded")
    if isinstance(source, JsonlFiles):
        summary = inspect_jsonl(drop_dir, source, spec, problems)
    else:
        summary = inspect_images(drop_dir, source, problems)
    problems.raise_if_any()
    return summary


def detect_kind(drop_dir: Path) -> str | None:
    """The kind of data in a drop without a recipe (to pick its default recipe); never raises."""
    for folder in (drop_dir, drop_dir / "data"):
        jsonl = [p for p in data_files(folder) if p.suffix == ".jsonl"]
        if jsonl:
            first = next((p for p in jsonl if p.name == TRAIN_FILE), jsonl[0])
            return sniff_kind(first) or "chat"
    for folder in (drop_dir, drop_dir / "data", drop_dir / "images"):
        if find_images(folder) is not None:
            return "images"
    return None


def prepare_split(
    summary: DataSummary, out_dir: Path, *, valid_fraction: float, seed: int
) -> tuple[Path, Path | None]:
    """Write what the trainer reads into ``out_dir``; returns the train and valid files.

    Language-model data becomes normalised ``train.jsonl`` / ``valid.jsonl``; without a valid
    file a seeded share of the examples is held out, the same one every time. Images become
    ``images.jsonl`` (path, caption, repeats). Files are replaced atomically and stale ones of
    an earlier run removed, so running it again gives the same folder. Updates the summary's
    example counts to what was written.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    train_out, valid_out, images_out = (
        out_dir / TRAIN_FILE,
        out_dir / VALID_FILE,
        out_dir / IMAGES_FILE,
    )
    if summary.kind == "images":
        write_images(images_out, summary.items)
        for stale in (train_out, valid_out):
            stale.unlink(missing_ok=True)
        return images_out, None

    images_out.unlink(missing_ok=True)
    if summary.valid:
        n_train = write_normalised(summary.kind, summary.train, train_out)
        n_valid = write_normalised(summary.kind, summary.valid, valid_out)
    else:
        total = summary.train_examples + summary.valid_examples
        held = set(random.Random(seed).sample(range(total), valid_count(total, valid_fraction)))
        n_train, n_valid = write_split(summary.kind, summary.train, train_out, valid_out, held)
    summary.train_examples, summary.valid_examples = n_train, n_valid
    if n_valid == 0:
        valid_out.unlink(missing_ok=True)
        return train_out, None
    return train_out, valid_out
