"""The worker process end to end with the MLX trainer: pause and resume, memory, broken models."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from lorainbox.drop.recipe import Recipe
from lorainbox.models.tinymodel import copy_model
from lorainbox.trainers.memory import estimate_gb, longest_example_tokens, read_model_shape
from lorainbox.worker.main import JobSpec
from lorainbox.worker.outcome import EXIT_DROP_ERROR, EXIT_OK, EXIT_OUT_OF_MEMORY, EXIT_PAUSED

from tests.models import REPO, TINY_FACT, read_lines, tiny_fact_recipe, tiny_llama  # noqa: F401

QUICK = {
    "export__gguf": False,
    "train__steps_per_report": 1,
    "train__steps_per_eval": 1000,
    "train__save_every": 1000,
}


def make_job(
    tmp_path: Path, recipe: Recipe, *, budget: float = 8.0, footprint: dict[str, Any] | None = None
) -> Path:
    job = tmp_path / "job"
    job.mkdir()
    train = job / "train.jsonl"
    train.write_bytes((TINY_FACT / "train.jsonl").read_bytes())
    JobSpec(
        job_id=1,
        recipe=recipe,
        train_file=train,
        memory_budget_gb=budget,
        footprint=footprint,
    ).save(job)
    return job


def start(job: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "lorainbox.worker", str(job)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=open(job / "worker.log", "a"),  # noqa: SIM115
        text=True,
    )


def run_worker(job: Path, timeout: float = 180) -> tuple[int, list[dict[str, Any]]]:
    proc = start(job)
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, read_lines(out)


def of(lines: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [m for m in lines if m["type"] == kind]


def test_sigterm_pauses_at_a_checkpoint_and_the_next_run_resumes(
    tmp_path: Path,
    tiny_llama: Path,  # noqa: F811
) -> None:
    total = 30
    job = make_job(tmp_path, tiny_fact_recipe(train__iters=total, **QUICK))
    proc = start(job)
    assert proc.stdout is not None
    first: list[dict[str, Any]] = []
    for line in proc.stdout:
        first.extend(read_lines(line))
        if first[-1]["type"] == "progress" and first[-1]["step"] >= 5:
            proc.send_signal(signal.SIGTERM)
            break
    first.extend(read_lines(proc.stdout.read()))
    assert proc.wait(timeout=60) == EXIT_PAUSED, (job / "worker.log").read_text()[-2000:]
    paused = of(first, "paused")[0]["step"]
    assert 5 <= paused < total
    assert of(first, "checkpoint")[-1]["step"] == paused
    assert (job / ".lorainbox" / "checkpoints" / f"step-{paused:08d}" / "state.json").is_file()
    footprint = of(first, "footprint")[0]
    assert (footprint["batch_size"], footprint["changes"]) == (4, [])
    assert JobSpec.load(job).footprint == {
        "batch_size": 4,
        "max_seq_length": 256,
        "grad_checkpoint": False,
        "changes": [],
    }

    code, second = run_worker(job)
    assert code == EXIT_OK, (job / "worker.log").read_text()[-2000:]
    assert of(second, "resumed")[0]["step"] == paused
    steps = [m["step"] for m in of(second, "progress")]
    assert steps[0] > paused
    assert steps[-1] == total
    assert of(second, "trained")[0]["steps"] == total
    assert (job / "adapters" / "adapters.safetensors").is_file()
    assert json.loads((job / "adapters" / "adapter_config.json").read_text())["num_layers"] == -1


def test_over_budget_plan_shrinks_and_is_kept_for_retries(
    tmp_path: Path,
    tiny_llama: Path,  # noqa: F811
) -> None:
    recipe = tiny_fact_recipe(train__iters=2, **QUICK)
    seq = min(256, longest_example_tokens([TINY_FACT / "train.jsonl"]) or 256)
    budget = estimate_gb(read_model_shape(tiny_llama), recipe.lora, 2, seq, True) + 0.001
    job = make_job(tmp_path, recipe, budget=budget)
    code, lines = run_worker(job)
    assert code == EXIT_OK, (job / "worker.log").read_text()[-2000:]
    changes = of(lines, "footprint")[0]["changes"]
    assert [c.split(":")[0] for c in changes] == ["grad checkpointing on", "batch 4 -> 2"]
    assert f"over the {budget:g} GB budget" in changes[1]
    spec = JobSpec.load(job)
    assert spec.footprint is not None
    assert (spec.footprint["batch_size"], spec.footprint["grad_checkpoint"]) == (2, True)


def test_nothing_fits_exits_65_with_the_reason(tmp_path: Path, tiny_llama: Path) -> None:  # noqa: F811
    job = make_job(tmp_path, tiny_fact_recipe(**QUICK), budget=0.3)
    code, lines = run_worker(job)
    assert code == EXIT_DROP_ERROR
    problem = of(lines, "error")[0]["problems"][0]
    assert "needs at least" in problem["what"] and "the budget is 0.3 GB" in problem["what"]
    assert "raise [memory] max_gb" in problem["fix"]


def test_peak_over_budget_while_training_exits_71_after_a_checkpoint(
    tmp_path: Path,
    tiny_llama: Path,  # noqa: F811
) -> None:
    """A footprint kept from an earlier run is trusted as is; the guard then catches the peak."""
    recipe = tiny_fact_recipe(train__iters=5, **QUICK)
    job = make_job(
        tmp_path,
        recipe,
        budget=0.65,
        footprint={"batch_size": 16, "max_seq_length": 256, "grad_checkpoint": False},
    )
    words = (REPO / "daemon" / "lorainbox" / "models" / "tinymodel.py").read_text().split()
    with open(job / "train.jsonl", "w") as f:
        for i in range(16):
            f.write(json.dumps({"text": " ".join(words[i * 7 : i * 7 + 400])}) + "\n")
    code, lines = run_worker(job)
    assert code == EXIT_OUT_OF_MEMORY, (job / "worker.log").read_text()[-2000:]
    assert "went over" in of(lines, "oom")[0]["message"]
    assert of(lines, "checkpoint")[0]["step"] == 1


@pytest.mark.parametrize(
    ("damage", "file", "what"),
    [
        (
            lambda d: (d / "config.json").write_text('{"model_type": '),
            "config.json",
            "not valid JSON",
        ),
        (
            lambda d: (d / "model.safetensors").write_bytes(
                (d / "model.safetensors").read_bytes()[:100_000]
            ),
            "model.safetensors",
            "cut short",
        ),
    ],
    ids=["bad-config", "truncated-weights"],
)
def test_corrupt_base_model_exits_65_naming_the_file(
    tmp_path: Path,
    tiny_llama: Path,  # noqa: F811
    damage,
    file: str,
    what: str,
) -> None:
    model = copy_model(tiny_llama, tmp_path / "broken-model")
    damage(model)
    job = make_job(tmp_path, tiny_fact_recipe(base_model=str(model), **QUICK))
    code, lines = run_worker(job)
    assert code == EXIT_DROP_ERROR, (job / "worker.log").read_text()[-2000:]
    problem = of(lines, "error")[0]["problems"][0]
    assert what in problem["what"]
    assert problem["where"] == str(model / file)
    assert "download the model again" in problem["fix"]


def test_an_mlx_worker_does_not_load_torch(tiny_llama: Path) -> None:  # noqa: F811
    """transformers imports torch whenever it is installed; an MLX job only needs its tokenizer."""
    code = f"""
import sys, psutil
from lorainbox.worker.main import pick_trainer
from tests.models import tiny_fact_recipe
trainer = pick_trainer(tiny_fact_recipe())
from mlx_lm import load
model, tokenizer = load({str(tiny_llama)!r})
ids = tokenizer.apply_chat_template([{{"role": "user", "content": "hi"}}], add_generation_prompt=True)
print(trainer.name, "torch" in sys.modules, len(ids), psutil.Process().memory_info().rss // 2**20)
"""
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    name, torch_loaded, n_ids, rss_mb = out[-4:]
    assert (name, torch_loaded) == ("mlx", "False")
    assert int(n_ids) > 3 and int(rss_mb) < 200


def test_the_export_reports_each_stage_and_how_far_the_gguf_is_written(
    tmp_path: Path,
    tiny_llama: Path,  # noqa: F811
) -> None:
    recipe = tiny_fact_recipe(train__iters=2, **{**QUICK, "export__gguf": True})
    code, lines = run_worker(make_job(tmp_path, recipe))
    assert code == EXIT_OK
    stages = [(m["stage"], m["fraction"]) for m in of(lines, "export")]
    names = [name for name, _ in stages]
    assert names[:2] == ["fusing", "loading"] and stages[-1] == ("done", 1.0)
    written = [f for name, f in stages if name == "writing"]
    assert written and written == sorted(written) and written[-1] == 1.0
    assert len(stages) == len(set(stages))  # each stage and percent once, not each log line
    assert lines.index(of(lines, "export")[-1]) < lines.index(of(lines, "exported")[0])
    check = of(lines, "exported")[0]["info"]["self_check"]  # an MLX worker compares logits too
    assert check["examples"] == 8 and check["max_logit_diff"] is not None
