"""Whether a job's earlier training and GGUF still match what its recipe and data ask for.

A finished drop carries its work folder along. When a person edits its recipe or data and
trains it again (moved back into the inbox, or ``lorainbox train``), the old adapter and GGUF
are not what the drop now asks for: they are forgotten and made again, and the log says why.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from lorainbox.core import atomic
from lorainbox.core.layout import (
    CHECKPOINTS_DIR,
    KEYS_FILE,
    METRICS_FILE,
    SAMPLES_FILE,
    TRAINED_MARKER,
)
from lorainbox.drop.recipe import Recipe

TRAINING_FIELDS = {"kind", "base_model", "trainer", "data", "lora", "train", "diffusion"}
"""The recipe's parts that change what training makes (not its schedule, memory or Ollama)."""


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def data_digest(path: Path) -> str:
    """The content of a prepared data file (the examples, or the images' listing and captions)."""
    if not path.is_file():
        return "absent"
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def keys(recipe: Recipe, data: list[Path]) -> dict[str, str]:
    """What the training and the GGUF were made from, as digests."""
    training = _digest(
        [recipe.model_dump(mode="json", include=TRAINING_FIELDS), [data_digest(p) for p in data]]
    )
    return {
        "training": training,
        "export": _digest([training, recipe.export.model_dump(mode="json")]),
    }


def forget_stale(work_dir: Path, now: dict[str, str], gguf: Path) -> str | None:
    """Remove what no longer matches ``now``; say what was forgotten (``None``: nothing).

    A work folder from before these keys were kept is trusted as it is."""
    path = work_dir / KEYS_FILE
    before = json.loads(path.read_text()) if path.exists() else now
    said = None
    if before.get("training") != now["training"]:
        for stale in (TRAINED_MARKER, METRICS_FILE, SAMPLES_FILE):
            (work_dir / stale).unlink(missing_ok=True)
        shutil.rmtree(work_dir / CHECKPOINTS_DIR, ignore_errors=True)
        gguf.unlink(missing_ok=True)
        said = "the recipe or data changed since this drop was trained: training it again"
    elif before.get("export") != now["export"] and gguf.exists():
        gguf.unlink()
        said = "the recipe's [export] changed since the GGUF was written: writing it again"
    work_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, json.dumps(now))
    return said
