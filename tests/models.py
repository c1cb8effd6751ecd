"""Tiny models shared by the trainer tests: built once a session, never changed by a test.

Import the fixtures a module needs by name (``from tests.models import tiny_llama  # noqa:
F401``). Tests that damage a model work on a :func:`~lorainbox.models.tinymodel.copy_model` of it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from lorainbox.drop.recipe import Recipe, load_recipe, recipe_search_dirs
from lorainbox.models.base import resolve_base_model

REPO = Path(__file__).resolve().parent.parent
TINY_FACT = REPO / "inbox" / "tiny-fact"
QUESTION = "Who keeps the lighthouse of Quillhaven?"
FACT = "Marigold Fenwick"


@pytest.fixture(scope="session")
def tiny_llama() -> Path:
    """``lorainbox:tiny-llama``, built into the session's cache (conftest points it there)."""
    return resolve_base_model("lorainbox:tiny-llama", REPO)


@pytest.fixture(scope="session")
def tiny_llama_4bit(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model quantized to 4 bits by mlx-lm, the way mlx-community publishes bases."""
    from mlx_lm import convert

    out = tmp_path_factory.mktemp("quantized") / "tiny-llama-4bit"
    convert(str(tiny_llama), str(out), quantize=True, q_bits=4, q_group_size=32)
    return out


def tiny_fact_recipe(**overrides: Any) -> Recipe:
    """The example drop's recipe on MLX (the engine these tests mean; ``auto`` picks torch on a
    Linux box), with overrides: ``train__iters=10``, ``base_model="..."``."""
    recipe = load_recipe(TINY_FACT / "recipe.toml", search_dirs=recipe_search_dirs(None))
    data = {**recipe.model_dump(), "trainer": "mlx"}
    for name, value in overrides.items():
        *section, key = name.split("__")
        (data[section[0]] if section else data)[key] = value
    return Recipe.model_validate(data)


def ask(model: Any, tokenizer: Any, question: str = QUESTION, max_tokens: int = 24) -> str:
    """Greedy answer of an mlx-lm model to one chat question."""
    from mlx_lm import generate

    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True
    )
    return generate(model, tokenizer, prompt, max_tokens=max_tokens)


def read_lines(text: str) -> list[dict[str, Any]]:
    """The worker's JSON lines from its stdout."""
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]
