"""``lorainbox recipes``: what a drop can extend, what each is for, and where it comes from."""

from __future__ import annotations

import subprocess
from pathlib import Path

from lorainbox.drop.recipe import BUILTIN_RECIPES, load_recipe, recipe_search_dirs, recipe_summary

from tests.daemon_proc import lorainbox


def recipes(inbox: Path) -> subprocess.CompletedProcess[str]:
    return lorainbox("recipes", timeout=120, columns=400, LORAINBOX_INBOX=str(inbox))


def rows(out: str) -> dict[str, list[str]]:
    found = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip("│").split("│")]
        if len(cells) == 5 and cells[0] not in ("", "name"):
            found[cells[0]] = cells[1:]
    return found


def test_recipes_lists_yours_beside_the_built_in_ones_with_what_each_is_for(
    tmp_path: Path,
) -> None:
    mine = tmp_path / "inbox" / "recipes"
    mine.mkdir(parents=True)
    (mine / "house-style.toml").write_text(
        'extends = "tiny-demo"\ndescription = "Our support bot\'s voice"\n'
    )
    (mine / "broken.toml").write_text("[train\n")
    done = recipes(tmp_path / "inbox")
    assert done.returncode == 0, done.stderr
    table = rows(done.stdout)
    assert table["chat-lora"] == [
        "llm",
        "mlx-community/Qwen2.5-0.5B-Instruct-4bit",
        "Chat LoRA on a small instruct model: the default for a drop of chat JSONL with no recipe.",
        "built-in",
    ]
    assert table["house-style"][:3] == ["llm", "lorainbox:tiny-llama", "Our support bot's voice"]
    assert table["house-style"][3].endswith("house-style.toml")
    assert table["broken"][0] == "invalid" and "broken.toml" in table["broken"][2]
    assert {"sd15-style", "tiny-demo", "torch-chat-lora"} <= set(table)


def test_every_built_in_recipe_says_what_it_is_for_in_one_sentence() -> None:
    for path in sorted(BUILTIN_RECIPES.glob("*.toml")):
        recipe = load_recipe(path, search_dirs=recipe_search_dirs(None))
        summary = recipe_summary(path, recipe)
        assert summary.endswith(".") and summary.count(". ") == 0 and len(summary) > 30, path


def test_a_narrow_terminal_gets_a_block_per_recipe_not_a_cramped_table(tmp_path: Path) -> None:
    done = lorainbox("recipes", timeout=120, columns=80, LORAINBOX_INBOX=str(tmp_path / "inbox"))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "│" not in done.stdout and all(len(line.rstrip()) <= 80 for line in lines)
    at = lines.index("chat-lora (llm, built-in)")
    assert lines[at + 1].strip() == "mlx-community/Qwen2.5-0.5B-Instruct-4bit"
    assert lines[at + 2].startswith("  Chat LoRA on a small instruct model")
