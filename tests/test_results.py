"""What report.md says of how a job was trained, from the worker's result."""

from pathlib import Path

from lorainbox.pipeline.results import self_check_text, trained_text


def test_trained_line_names_steps_trainer_device_and_compiling() -> None:
    result = {"steps": 2000, "trainer": "torch", "device": "cuda", "compiled": True}
    assert trained_text(result) == "2000 steps with torch on cuda, layers compiled"
    assert trained_text({**result, "compiled": False}) == "2000 steps with torch on cuda"
    assert trained_text({"steps": 12, "trainer": "mlx"}) == "12 steps with mlx on ?"


def test_no_trained_line_before_training_has_a_result() -> None:
    assert trained_text({}) == ""
    assert trained_text({"registered": False}) == ""


def test_the_resolved_recipe_is_toml_that_trains_the_same_again(tmp_path: Path) -> None:
    from lorainbox.drop.recipe import BUILTIN_RECIPES, load_recipe
    from lorainbox.pipeline.results import resolved_toml

    drop = tmp_path / "pirates"
    drop.mkdir()
    (drop / "recipe.toml").write_text('extends = "tiny-demo"\n[train]\niters = 7\n')
    recipe = load_recipe(
        drop / "recipe.toml", search_dirs=[BUILTIN_RECIPES], defaults={"name": "pirates"}
    )
    text = resolved_toml(recipe)
    assert "null" not in text and "extends" not in text
    assert 'model = "pirates"' in text and "iters = 7" in text
    again = tmp_path / "again"
    again.mkdir()
    (again / "recipe.toml").write_text(text)
    assert load_recipe(
        again / "recipe.toml", search_dirs=[], defaults={"name": "x"}
    ) == recipe.model_copy(
        update={"extends": None, "ollama": recipe.ollama.model_copy(update={"model": "pirates"})}
    )


def test_self_check_line_says_tokens_and_logits() -> None:
    check = {"examples": 8, "max_logit_diff": 0.0123, "same_next_token": True}
    text = self_check_text(check)
    assert text.startswith("llama.cpp reads 8 of the drop's chats token for token as training")
    assert "at most 0.0123 (the same next token)" in text
    assert self_check_text(None) == ""
    assert "logits" not in self_check_text({"examples": 2, "max_logit_diff": None})
