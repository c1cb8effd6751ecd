"""One line per problem, for notifications and the log."""

from pathlib import Path

from lorainbox.core.errors import DropError, Problem


def test_a_problem_reads_as_one_sentence_without_doubled_stops() -> None:
    asked = Problem("unknown key `iter`; did you mean `iters`?", "recipe.toml, line 3", "rename it")
    assert (
        asked.line()
        == "recipe.toml, line 3: unknown key `iter`; did you mean `iters`? Fix: rename it"
    )
    plain = Problem("the file is empty", "train.jsonl", "add examples")
    assert plain.line() == "train.jsonl: the file is empty. Fix: add examples"
    assert str(DropError([asked, plain])) == f"{asked.line()}; {plain.line()}"


def test_a_drop_without_recipe_toml_is_told_of_the_default_recipe(tmp_path: Path) -> None:
    error = DropError(
        [
            Problem("cannot fetch the base model", "recipe.toml, `base_model`", "work offline"),
            Problem("empty", "train.jsonl", "add examples"),
        ]
    )
    told = error.in_folder(tmp_path).problems
    assert told[0].where == (
        "the built-in default recipe (this folder has no recipe.toml; add one to change "
        "`base_model`)"
    )
    assert told[1].where == "train.jsonl"
    (tmp_path / "recipe.toml").write_text("")
    assert error.in_folder(tmp_path) is error
