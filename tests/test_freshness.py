"""A drop trained before and changed since trains again; one that did not change does not."""

from __future__ import annotations

import json
from pathlib import Path

from lorainbox.drop.freshness import forget_stale, keys
from lorainbox.drop.recipe import Recipe

from tests.daemon_proc import lorainbox
from tests.drops import fast_drop


def recipe(**changes: object) -> Recipe:
    return Recipe.model_validate({"name": "r", "base_model": "lorainbox:tiny-llama", **changes})


def trained_work(tmp_path: Path) -> tuple[Path, Path]:
    """A work folder as a finished job leaves it, and its GGUF."""
    work = tmp_path / ".lorainbox"
    (work / "checkpoints" / "0000010").mkdir(parents=True)
    for name in ("trained.json", "metrics.jsonl", "samples.json"):
        (work / name).write_text("{}")
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    return work, gguf


def test_what_changes_the_training_and_what_only_the_export(tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text('{"text": "a"}\n')
    base = keys(recipe(), [data])
    assert keys(recipe(), [data]) == base
    assert keys(recipe(train={"iters": 7}), [data])["training"] != base["training"]
    assert keys(recipe(lora={"rank": 4}), [data])["training"] != base["training"]
    assert keys(recipe(ollama={"system": "Be brief."}), [data]) == base
    assert keys(recipe(schedule={"when": "now"}), [data]) == base
    quantized = keys(recipe(export={"outtype": "q8_0"}), [data])
    assert quantized["training"] == base["training"] and quantized["export"] != base["export"]
    data.write_text('{"text": "b"}\n')
    assert keys(recipe(), [data])["training"] != base["training"]


def test_a_changed_recipe_forgets_training_and_gguf(tmp_path: Path) -> None:
    work, gguf = trained_work(tmp_path)
    old = {"training": "t1", "export": "e1"}
    assert forget_stale(work, old, gguf) is None  # the first time: trusted as it is
    said = forget_stale(work, {"training": "t2", "export": "e2"}, gguf)
    assert said is not None and "training it again" in said
    assert not gguf.exists() and not (work / "checkpoints").exists()
    assert not any((work / n).exists() for n in ("trained.json", "metrics.jsonl", "samples.json"))
    assert json.loads((work / "keys.json").read_text()) == {"training": "t2", "export": "e2"}


def test_a_changed_export_forgets_only_the_gguf(tmp_path: Path) -> None:
    work, gguf = trained_work(tmp_path)
    forget_stale(work, {"training": "t1", "export": "e1"}, gguf)
    said = forget_stale(work, {"training": "t1", "export": "e2"}, gguf)
    assert said is not None and "[export]" in said
    assert (
        not gguf.exists() and (work / "trained.json").exists() and (work / "checkpoints").exists()
    )
    assert forget_stale(work, {"training": "t1", "export": "e2"}, gguf) is None


def test_train_again_after_editing_the_recipe_retrains_and_unchanged_does_not(
    tmp_path: Path,
) -> None:
    drop = fast_drop(tmp_path, "edited", iters=12)
    assert lorainbox("train", drop).returncode == 0
    recipe_file = drop / "recipe.toml"
    recipe_file.write_text(recipe_file.read_text().replace("iters = 12", "iters = 6"))
    again = lorainbox("train", drop)
    assert again.returncode == 0, again.stdout + again.stderr
    log = (drop / "train.log").read_text()
    assert log.count("training it again") == 1
    assert "step 6/6" in log and "- **Trained:** 6 steps" in (drop / "report.md").read_text()
    steps = [json.loads(line)["step"] for line in (drop / ".lorainbox" / "metrics.jsonl").open()]
    assert max(steps) == 6  # the old run's metrics are gone from the loss curve
    assert lorainbox("train", drop).returncode == 0
    assert (drop / "train.log").read_text().count("training it again") == 1
