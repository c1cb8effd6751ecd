"""The recipe's Ollama and export settings against the real server's rules, at intake.

Ollama refuses some settings only at create (a bad name, quantize type or template) and some
only at the first chat (a mistyped parameter); found after hours of training they cost the
run. Checked here, they send the drop to Failed/ before any training, each problem naming the
key, the file and its line (rules and their sources: ``export/ollama_rules.py``).
"""

from __future__ import annotations

from pathlib import Path

from lorainbox.core.errors import Problem
from lorainbox.core.layout import RECIPE_FILE
from lorainbox.drop.recipe import Recipe, line_of
from lorainbox.export.ollama_rules import (
    export_problems,
    name_problems,
    parameter_problems,
    template_problems,
)


def ollama_problems(recipe: Recipe, drop: Path) -> list[Problem]:
    """Everything Ollama would refuse in ``recipe``; empty when nothing goes to Ollama."""
    if recipe.kind != "llm" or not recipe.export.gguf or not recipe.ollama.enabled:
        return []

    def where(section: list[str], key: str) -> str:
        return _where(drop / RECIPE_FILE, section, key)

    named_by = (["ollama"], "model") if recipe.ollama.model else ([], "name")
    problems = name_problems(recipe.ollama_model, where(*named_by), allow_tag=False)
    problems += export_problems(
        recipe.export.outtype,
        recipe.export.quantize,
        where(["export"], "outtype"),
        where(["export"], "quantize"),
    )
    problems += parameter_problems(recipe.ollama.parameters, where(["ollama"], "parameters"))
    if recipe.ollama.template is not None:
        problems += template_problems(recipe.ollama.template, where(["ollama"], "template"))
    return problems


def _where(path: Path, section: list[str], key: str) -> str:
    """``recipe.toml, line 7``; the key's name where this file does not set it (it came from
    the recipe it extends, or a default)."""
    named = f"[{'.'.join(section)}] {key}" if section else key
    if not path.is_file():
        return f"{RECIPE_FILE} {named}"
    line = line_of(path, section, key)
    return f"{path}, line {line}" if line else f"{path}, {named} (inherited or default)"
