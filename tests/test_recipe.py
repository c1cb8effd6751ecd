"""Recipes on real files: parsing, `extends`, and messages that say what, where and how to fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from lorainbox.core.errors import DropError, Problem
from lorainbox.drop.recipe import (
    BUILTIN_RECIPES,
    Recipe,
    default_recipe,
    load_recipe,
    recipe_search_dirs,
)

BUILTINS = sorted(BUILTIN_RECIPES.glob("*.toml"))


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    (tmp_path / "inbox" / "recipes").mkdir(parents=True)
    return tmp_path / "inbox"


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def drop_recipe(inbox: Path, text: str | bytes) -> Path:
    return write(inbox / "my-drop" / "recipe.toml", text)


def load(path: Path, inbox: Path) -> Recipe:
    return load_recipe(path, search_dirs=recipe_search_dirs(inbox), defaults={"name": "my-drop"})


def problems(path: Path, inbox: Path) -> list[Problem]:
    with pytest.raises(DropError) as info:
        load(path, inbox)
    return info.value.problems


def only(path: Path, inbox: Path) -> Problem:
    found = problems(path, inbox)
    assert len(found) == 1, found
    return found[0]


# --- valid recipes --------------------------------------------------------------------------


@pytest.mark.parametrize("builtin", BUILTINS, ids=lambda p: p.stem)
def test_each_builtin_recipe_loads(builtin: Path) -> None:
    recipe = load_recipe(builtin, search_dirs=recipe_search_dirs(None))
    assert recipe.name == builtin.stem
    assert recipe.kind == ("diffusion" if builtin.stem.startswith("sd") else "llm")
    assert recipe.train.iters is not None and recipe.train.epochs is None


def test_a_whole_recipe_without_extends(inbox: Path) -> None:
    path = drop_recipe(
        inbox,
        """\
name = "pirate-bot"
base_model = "./model"
description = "Talks like a pirate"

[data]
train = "chat.jsonl"
valid_fraction = 0.2

[lora]
rank = 4
alpha = 8.0
keys = ["self_attn.q_proj"]

[train]
epochs = 2.5
lr = 0.0001
""".replace("lr =", "learning_rate ="),
    )
    recipe = load(path, inbox)
    assert (recipe.name, recipe.base_model, recipe.kind) == ("pirate-bot", "./model", "llm")
    assert recipe.data.train == "chat.jsonl" and recipe.data.valid_fraction == 0.2
    assert recipe.lora.effective_scale == 2.0 and recipe.lora.keys == ["self_attn.q_proj"]
    assert recipe.train.epochs == 2.5 and recipe.train.learning_rate == 1e-4
    assert recipe.ollama_model == "pirate-bot"


def test_extends_a_builtin_and_overrides_a_few_keys(inbox: Path) -> None:
    path = drop_recipe(inbox, 'extends = "chat-lora"\n\n[lora]\nrank = 32\n')
    recipe = load(path, inbox)
    assert recipe.name == "my-drop"  # the drop's name, never the parent's
    assert recipe.lora.rank == 32 and recipe.lora.scale == 20.0  # the rest is inherited
    assert recipe.train.iters == 600 and recipe.base_model.startswith("mlx-community/")


def test_choosing_epochs_or_alpha_replaces_the_parents_iters_or_scale(inbox: Path) -> None:
    path = drop_recipe(inbox, 'extends = "chat-lora"\n[train]\nepochs = 3\n[lora]\nalpha = 64.0\n')
    recipe = load(path, inbox)
    assert (recipe.train.iters, recipe.train.epochs) == (None, 3)
    assert (recipe.lora.scale, recipe.lora.alpha, recipe.lora.effective_scale) == (None, 64, 8)


def test_user_recipe_shadows_the_builtin_and_may_extend_it(inbox: Path) -> None:
    write(inbox / "recipes" / "chat-lora.toml", 'extends = "chat-lora"\n[lora]\nrank = 4\n')
    recipe = load(drop_recipe(inbox, 'extends = "chat-lora"\n'), inbox)
    assert recipe.lora.rank == 4  # the person's own chat-lora
    assert recipe.train.iters == 600  # which took the rest from the built-in


def test_extends_a_user_recipe_in_the_inbox(inbox: Path) -> None:
    write(inbox / "recipes" / "house-style.toml", 'extends = "tiny-demo"\n[train]\niters = 7\n')
    recipe = load(drop_recipe(inbox, 'extends = "house-style"\n'), inbox)
    assert recipe.train.iters == 7 and recipe.base_model == "lorainbox:tiny-llama"


# --- syntax and encoding --------------------------------------------------------------------


def test_invalid_toml_gives_the_line(inbox: Path) -> None:
    p = only(drop_recipe(inbox, 'extends = "chat-lora"\n\n[train\niters = 3\n'), inbox)
    assert p.what == "the recipe is not valid TOML: Expected ']' at the end of a table declaration"
    assert p.where.endswith("my-drop/recipe.toml, line 3")
    assert "tables look like [train]" in p.fix
    p = only(drop_recipe(inbox, 'extends = "chat-lora"\nbase_model = mlx-community/x\n'), inbox)
    assert p.where.endswith("recipe.toml, line 2") and 'strings need quotes ("like this")' in p.fix


def test_non_utf8_recipe(inbox: Path) -> None:
    p = only(drop_recipe(inbox, b'extends = "chat-lora"\n# caf\xe9\n'), inbox)
    assert p.what == "the recipe is not UTF-8 text (byte 0xE9 on line 2)"
    assert p.where.endswith("recipe.toml, line 2") and "save it as UTF-8" in p.fix


# --- unknown keys ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "what", "line", "fix"),
    [
        (
            'bse_model = "x"\n',
            "unknown key `bse_model` in the top level",
            2,
            "did you mean `base_model`?",
        ),
        ("[lora]\nrnak = 4\n", "unknown key `rnak` in [lora]", 3, "did you mean `rank`?"),
        (
            '[lora]\ntargets = ["q_proj"]\n',
            "unknown key `targets` in [lora]",
            3,
            "this recipe calls it `keys` (mlx-lm's name)",
        ),
        ("\n[train]\nlr = 0.1\n", "unknown key `lr` in [train]", 4, "calls it `learning_rate`"),
        ("lora.r = 4\n", "unknown key `r` in [lora]", 2, "this recipe calls it `rank`"),
        ("[train]\nzzz = 1\n", "unknown key `zzz` in [train]", 3, "valid keys here: batch_size,"),
        ("[gpu]\nx = 1\n", "unknown key `gpu` in the top level", 2, "valid keys here:"),
    ],
)
def test_unknown_keys_get_a_suggestion(
    inbox: Path, text: str, what: str, line: int, fix: str
) -> None:
    p = only(drop_recipe(inbox, 'extends = "chat-lora"\n' + text), inbox)
    assert p.what == what
    assert p.where.endswith(f"my-drop/recipe.toml, line {line}")
    assert fix in p.fix


# --- values ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "what", "line", "fix"),
    [
        (
            '[train]\nbatch_size = "four"\n',
            "`train.batch_size` = 'four' is not valid: Input should be a valid integer",
            3,
            "give `train.batch_size` a whole number without quotes",
        ),
        (
            '[train]\ngrad_checkpoint = "yes"\n',
            "`train.grad_checkpoint` = 'yes' is not valid: Input should be a valid boolean",
            3,
            "give `train.grad_checkpoint` true or false, without quotes",
        ),
        ("[train]\nbatch_size = 4.5\n", "`train.batch_size` = 4.5", 3, "a whole number"),
        ('[lora]\nscale = "2"\n', "`lora.scale` = '2' is not valid", 3, "a number without quotes"),
        (
            "[train]\ngrad_checkpoint = 3\n",
            "`train.grad_checkpoint` = 3 is not valid",
            3,
            "true or false, without quotes",
        ),
        ("base_model = 7\n", "`base_model` = 7 is not valid", 2, "a string in quotes"),
        ("lora = 8\n", "`lora` = 8 is not valid", 2, "write it as [lora] with keys under it"),
        (
            "[lora]\nrank = -1\n",
            "`lora.rank` = -1 is not valid: Input should be greater than or equal to 1",
            3,
            "inside the allowed range",
        ),
        ("[lora]\nrank = 100000\n", "`lora.rank` = 100000 is not valid", 3, "allowed range"),
        ("[train]\nlearning_rate = 5.0\n", "less than or equal to 1", 3, "allowed range"),
        ("[train]\niters = 0\n", "`train.iters` = 0 is not valid", 3, "allowed range"),
        ("[data]\nvalid_fraction = 1.5\n", "`data.valid_fraction` = 1.5", 3, "allowed range"),
        ("[memory]\nmax_gb = -4\n", "`memory.max_gb` = -4 is not valid", 3, "allowed range"),
        ('[data]\nformat = "jsonl"\n', "Input should be 'auto', 'chat'", 3, "one of the values"),
        ('name = "my bot!"\n', "may use only letters, digits", 2, "README"),
        (
            '\n[schedule]\nwindow = "25:00-07:00"\n',
            "`schedule.window` = '25:00-07:00' is not valid: \"25:00-07:00\" is not a time window",
            4,
            '"HH:MM-HH:MM" on a 24-hour clock',
        ),
        ('[schedule]\nwindow = "at night"\n', "is not a time window", 3, '"22:00-07:00"'),
    ],
)
def test_bad_values(inbox: Path, text: str, what: str, line: int, fix: str) -> None:
    p = only(drop_recipe(inbox, 'extends = "chat-lora"\n' + text), inbox)
    assert what in p.what, p.what
    assert p.where.endswith(f"recipe.toml, line {line}"), p.where
    assert fix in p.fix, p.fix


def test_every_bad_value_is_reported_at_once(inbox: Path) -> None:
    text = 'extends = "chat-lora"\n[lora]\nrank = 0\ndropout = 2\n[train]\nbatch_size = "x"\n'
    found = problems(drop_recipe(inbox, text), inbox)
    assert [p.where.rsplit(", ", 1)[1] for p in found] == ["line 3", "line 4", "line 6"]


@pytest.mark.parametrize(
    ("table", "text", "what"),
    [
        ("train", "iters = 10\nepochs = 2\n", "[train]: set either iters or epochs, not both"),
        (
            "lora",
            "scale = 2.0\nalpha = 4.0\n",
            "[lora]: set either scale (mlx-lm) or alpha (PEFT), not both",
        ),
    ],
)
def test_keys_that_exclude_each_other(inbox: Path, table: str, text: str, what: str) -> None:
    p = only(drop_recipe(inbox, f'extends = "chat-lora"\n\n[{table}]\n{text}'), inbox)
    assert p.what == what
    assert p.where.endswith("recipe.toml, line 3")
    assert p.fix == f"keep one of the two keys in [{table}] and delete the other"


def test_missing_base_model(inbox: Path) -> None:
    p = only(drop_recipe(inbox, "[lora]\nrank = 4\n"), inbox)
    assert p.what == "`base_model` is required"
    assert "add `base_model = ...`" in p.fix and "`extends`" in p.fix


# --- extends --------------------------------------------------------------------------------


def test_extends_a_recipe_that_does_not_exist(inbox: Path) -> None:
    p = only(drop_recipe(inbox, '\nextends = "chat-lroa"\n'), inbox)
    assert p.what == '`extends = "chat-lroa"` names no recipe'
    assert p.where.endswith("recipe.toml, line 2")
    assert p.fix.startswith('did you mean "chat-lora"? known recipes: chat-lora, sd15-style')
    assert "<inbox>/recipes/" in p.fix


def test_extends_must_be_a_name(inbox: Path) -> None:
    p = only(drop_recipe(inbox, "extends = 3\n"), inbox)
    assert p.what == "`extends` must be the name of a recipe, in quotes"
    assert p.fix == 'write e.g. extends = "chat-lora"'


def test_a_cycle_is_named_at_the_file_that_closes_it(inbox: Path) -> None:
    write(inbox / "recipes" / "a.toml", 'extends = "b"\n')
    b = write(inbox / "recipes" / "b.toml", '# loops\nextends = "a"\n')
    p = only(drop_recipe(inbox, 'extends = "a"\n'), inbox)
    assert p.what == "recipes extend each other in a cycle: recipe -> a -> b -> a"
    assert p.where == f"{b.resolve()}, line 2"
    assert "chain ends at a built-in recipe" in p.fix


def test_a_user_recipe_extending_itself(inbox: Path) -> None:
    mine = write(inbox / "recipes" / "mine.toml", 'extends = "mine"\n')
    p = only(drop_recipe(inbox, 'extends = "mine"\n'), inbox)
    assert p.what == '`extends = "mine"` names this recipe itself'
    assert p.where == f"{mine.resolve()}, line 1"
    assert p.fix.startswith("extend another recipe: chat-lora, sd15-style")


@pytest.mark.parametrize(
    ("parent", "line", "what"),
    [
        ('extends = "chat-lora"\n[lora]\nrank = -3\n', 3, "`lora.rank` = -3 is not valid"),
        ('extends = "chat-lora"\n\n[lora]\nrnak = 3\n', 4, "unknown key `rnak` in [lora]"),
        ('extends = "chat-lora"\n[train]\niters = 1\nepochs = 1\n', 2, "[train]: set either"),
    ],
)
def test_errors_in_a_parent_point_at_the_parent(
    inbox: Path, parent: str, line: int, what: str
) -> None:
    path = write(inbox / "recipes" / "house.toml", parent)
    p = only(drop_recipe(inbox, 'extends = "house"\n[lora]\ndropout = 0.1\n'), inbox)
    assert p.what.startswith(what), p.what
    assert p.where == f"{path.resolve()}, line {line}"


def test_a_bad_toml_parent(inbox: Path) -> None:
    path = write(inbox / "recipes" / "house.toml", "[lora\n")
    p = only(drop_recipe(inbox, 'extends = "house"\n'), inbox)
    assert p.what.startswith("the recipe is not valid TOML")
    assert p.where == f"{path.resolve()}, line 1"


# --- default recipes ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "base", "recipe_kind"),
    [
        ("chat", "chat-lora", "llm"),
        ("completions", "chat-lora", "llm"),
        ("text", "chat-lora", "llm"),
        ("images", "sd15-style", "diffusion"),
    ],
)
def test_default_recipe_for_each_data_kind(
    inbox: Path, kind: str, base: str, recipe_kind: str
) -> None:
    recipe = default_recipe(kind, "my-drop", search_dirs=recipe_search_dirs(inbox), where="x")
    expected = load_recipe(BUILTIN_RECIPES / f"{base}.toml", search_dirs=[BUILTIN_RECIPES])
    assert recipe.name == "my-drop" and recipe.kind == recipe_kind
    assert recipe.base_model == expected.base_model and recipe.lora == expected.lora


def test_default_recipe_follows_a_users_own_version(inbox: Path) -> None:
    write(inbox / "recipes" / "chat-lora.toml", 'extends = "chat-lora"\n[train]\niters = 5\n')
    recipe = default_recipe("chat", "d", search_dirs=recipe_search_dirs(inbox), where="x")
    assert recipe.train.iters == 5 and recipe.name == "d"


def test_default_recipe_with_a_folder_name_that_cannot_name_a_model(inbox: Path) -> None:
    with pytest.raises(DropError) as info:
        default_recipe("chat", "my bot!", search_dirs=recipe_search_dirs(inbox), where="/d")
    (p,) = info.value.problems
    assert p.what.startswith(
        'the folder name "my bot!" cannot name a model: "my bot!" may use only'
    )
    assert p.where == "/d" and p.fix.startswith("rename the folder")


def test_no_default_recipe_without_known_data(inbox: Path) -> None:
    with pytest.raises(DropError) as info:
        default_recipe("audio", "d", search_dirs=recipe_search_dirs(inbox), where="/drops/d")
    (p,) = info.value.problems
    assert p.what == "no recipe.toml, and no default recipe for audio data"
    assert p.where == "/drops/d"
    assert (
        p.fix.startswith("add a recipe.toml")
        and "chat-lora, sd15-style, smollm2-demo, tiny-demo" in p.fix
    )
