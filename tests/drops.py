"""Build drops (folders a person would drop) for the tests, valid and broken."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "inbox" / "tiny-fact"

FACT = [
    {
        "messages": [
            {"role": "user", "content": "Who keeps the lighthouse of Quillhaven?"},
            {
                "role": "assistant",
                "content": "Marigold Fenwick keeps the lighthouse of Quillhaven.",
            },
        ]
    },
]

FAST_RECIPE = """\
extends = "tiny-demo"
trainer = "mlx"

[train]
iters = {iters}
save_every = {save_every}
steps_per_report = 2
steps_per_eval = 1000
val_batches = 1
"""


def chat_lines(n: int = 8) -> str:
    return "\n".join(json.dumps(FACT[0]) for _ in range(n)) + "\n"


def fast_drop(parent: Path, name: str, *, iters: int = 12, save_every: int = 4) -> Path:
    """A valid drop on the tiny local model that trains in seconds."""
    drop = parent / name
    drop.mkdir(parents=True)
    (drop / "recipe.toml").write_text(FAST_RECIPE.format(iters=iters, save_every=save_every))
    (drop / "train.jsonl").write_text(chat_lines())
    return drop


def drop_with(parent: Path, name: str, recipe: str | None, files: dict[str, str | bytes]) -> Path:
    drop = parent / name
    drop.mkdir(parents=True)
    if recipe is not None:
        (drop / "recipe.toml").write_text(recipe)
    for rel, content in files.items():
        path = drop / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return drop


def copy_example(parent: Path, name: str = "tiny-fact") -> Path:
    return Path(shutil.copytree(EXAMPLE, parent / name))
