"""[distributed]: the worker trains in two real processes (torch's gloo, MLX's ring over
loopback) and ends where one process training the same global batches ends, also when a pause
with two processes is resumed with one."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from lorainbox.drop.recipe import Recipe
from lorainbox.trainers.distributed import report_line
from lorainbox.worker.main import JobSpec
from lorainbox.worker.outcome import EXIT_OK, EXIT_OUT_OF_MEMORY, EXIT_PAUSED

from tests.models import read_lines, tiny_fact_recipe, tiny_llama  # noqa: F401
from tests.test_worker import QUICK, make_job, of, run_worker, start

LOSS_TOLERANCE = 1e-3
ADAPTER_TOLERANCE = 1e-3
"""Summation order differs between one process and two; the largest adapter weights are ~0.1."""


def recipe(trainer: str, iters: int, processes: int) -> Recipe:
    return tiny_fact_recipe(
        trainer=trainer, train__iters=iters, distributed__processes=processes, **QUICK
    )


def losses(lines: list[dict[str, Any]]) -> dict[int, float]:
    return {m["step"]: m["train_loss"] for m in of(lines, "progress") if "train_loss" in m}


def adapter(job: Path, trainer: str) -> dict[str, Any]:
    if trainer == "mlx":
        import mlx.core as mx
        import numpy as np

        loaded = mx.load(str(job / "adapters" / "adapters.safetensors"))
        return {k: np.array(v) for k, v in loaded.items()}
    from safetensors.numpy import load_file

    return load_file(job / "adapters" / "adapter_model.safetensors")


def largest_difference(a: dict[str, Any], b: dict[str, Any]) -> float:
    assert a.keys() == b.keys()
    return max(float(abs(a[k] - b[k]).max()) for k in a)


def pause_after(job: Path, step: int) -> list[dict[str, Any]]:
    """Run the worker until it reports ``step``, then stop it as the supervisor does."""
    proc = start(job)
    assert proc.stdout is not None
    lines: list[dict[str, Any]] = []
    for line in proc.stdout:
        lines.extend(read_lines(line))
        if lines and lines[-1]["type"] == "progress" and lines[-1]["step"] >= step:
            proc.send_signal(signal.SIGTERM)
            break
    lines.extend(read_lines(proc.stdout.read()))
    assert proc.wait(timeout=120) == EXIT_PAUSED, (job / "worker.log").read_text()[-3000:]
    return lines


def with_processes(job: Path, processes: int) -> None:
    spec = JobSpec.load(job)
    spec.recipe = spec.recipe.model_copy(
        update={"distributed": spec.recipe.distributed.model_copy(update={"processes": processes})}
    )
    spec.save(job)


def folder(tmp_path: Path, name: str) -> Path:
    (tmp_path / name).mkdir()
    return tmp_path / name


def one_process(tmp_path: Path, trainer: str, iters: int) -> tuple[Path, list[dict[str, Any]]]:
    job = make_job(folder(tmp_path, "one"), recipe(trainer, iters, 1))
    code, lines = run_worker(job, timeout=300)
    assert code == EXIT_OK, (job / "worker.log").read_text()[-3000:]
    return job, lines


@pytest.mark.parametrize(
    ("trainer", "before", "after"),
    [("torch", 1, 2), ("mlx", 2, 1)],  # MLX's CPU steps are slow here: fewer of them
)
def test_a_pause_resumed_with_another_process_count_ends_as_one_process(
    trainer: str,
    before: int,
    after: int,
    tmp_path: Path,
    tiny_llama: Path,  # noqa: F811
) -> None:
    iters = 40 if trainer == "torch" else 12
    alone, reference = one_process(tmp_path, trainer, iters)
    job = make_job(folder(tmp_path, "spread"), recipe(trainer, iters, before))

    first = pause_after(job, 2)
    paused = of(first, "paused")[0]["step"]
    assert 2 <= paused < iters, "the stop reached the ranks only after training ended"
    assert of(first, "checkpoint")[-1]["step"] == paused
    assert not (job / ".lorainbox" / "stop-requested").exists()

    with_processes(job, after)
    code, second = run_worker(job, timeout=300)
    assert code == EXIT_OK, (job / "worker.log").read_text()[-3000:]
    assert of(second, "resumed")[0]["step"] == paused
    both = {**losses(first), **losses(second)}
    assert both.keys() == losses(reference).keys()
    for step, loss in both.items():
        assert loss == pytest.approx(losses(reference)[step], abs=LOSS_TOLERANCE), step
    difference = largest_difference(adapter(job, trainer), adapter(alone, trainer))
    assert difference < ADAPTER_TOLERANCE

    assert len(of(second, "trained")) == 1, "only rank 0 speaks to the supervisor"
    spread = of(second, "trained")[0].get("distributed")
    if after == 1:
        assert spread is None
        return
    assert (spread["processes"], spread["backend"]) == (2, f"{trainer} gloo")
    assert [r["rank"] for r in spread["ranks"]] == [0, 1]
    assert all(r["tokens_per_second"] > 0 for r in spread["ranks"])
    line = report_line(spread)
    assert line.startswith(f"- **Data-parallel:** 2 processes on this machine ({trainer} gloo)")
    assert "rank 0 " in line and "rank 1 " in line


def test_a_rank_over_its_memory_budget_ends_the_job_as_out_of_memory(
    tmp_path: Path,
    tiny_llama: Path,  # noqa: F811
) -> None:
    """Each of the two processes gets half the machine's budget; the footprint kept from an
    earlier run is trusted, so the ranks' guards catch the peak and the worker exits 71."""
    footprint = {"batch_size": 4, "max_seq_length": 256, "grad_checkpoint": False, "changes": []}
    job = make_job(tmp_path, recipe("torch", 6, 2), budget=0.5, footprint=footprint)
    code, lines = run_worker(job, timeout=300)
    assert code == EXIT_OUT_OF_MEMORY, (job / "worker.log").read_text()[-3000:]
    assert "over its 0.25 GB budget" in of(lines, "oom")[0]["message"]
    leftover = subprocess.run(["pgrep", "-f", f"lorainbox.worker.rank {job}"], check=False)
    assert leftover.returncode == 1, "a rank outlived the worker"


def test_commands_for_several_machines(tmp_path: Path) -> None:
    """Multi-machine runs cannot be tried here; their launch commands can be read."""
    from lorainbox.drop.recipe import DistributedSpec
    from lorainbox.worker.launch import mlx_command, torch_commands

    spec = DistributedSpec(processes=2, hosts=["10.0.0.1", "10.0.0.2"])
    here, there = torch_commands(tmp_path, spec)
    assert "--node-rank=0" in here and "--master-addr=10.0.0.1" in here
    assert there[:2] == ["ssh", "10.0.0.2"] and "--node-rank=1" in there[2]
    mlx = mlx_command(tmp_path, spec)
    assert "--hosts=10.0.0.1,10.0.0.2" in mlx and "--repeat-hosts=2" in mlx
    assert torch_commands(tmp_path, DistributedSpec(processes=2))[0][4] == "--standalone"


def test_mlx_hosts_by_name_and_diffusion_are_refused(tmp_path: Path) -> None:
    from lorainbox.core.errors import DropError
    from lorainbox.trainers.base import Emitter, Footprint, TrainContext
    from lorainbox.worker.launch import check

    def ctx(r: Recipe) -> TrainContext:
        fp = Footprint(4, 256, False)
        return TrainContext(tmp_path, tmp_path, r, tmp_path, None, fp, 8.0, Emitter(), bool)

    named = recipe("mlx", 2, 2).model_copy(deep=True)
    named.distributed.hosts = ["studio.local", "10.0.0.2"]
    with pytest.raises(DropError, match="by IP address, not by name \\(studio.local\\)"):
        check(ctx(named), "mlx")
    check(ctx(named), "torch")
    images = recipe("torch", 2, 2).model_copy(update={"kind": "diffusion"})
    with pytest.raises(DropError, match="language models only"):
        check(ctx(images), "torch")
