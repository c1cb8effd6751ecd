"""One data-parallel rank of a job's training stage: ``python -m lorainbox.worker.rank JOBDIR``.

torch's or MLX's launcher starts one per process (see :mod:`lorainbox.worker.launch`). Rank 0
writes the job's JSON lines to its stdout, which the launcher passes on to the worker's;
the other ranks' stdout goes to stderr (train.log), so nothing else can break a JSON line.
A rank stops when it is sent SIGTERM or when the worker leaves the stop file; the ranks agree
on it each step. Every rank leaves how it ended in ``.lorainbox/ranks/rank-N.json`` and exits
0 when it trained or paused, 1 otherwise, so the launcher ends the others at once.
"""

from __future__ import annotations

import io
import json
import logging
import os
import sys
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any

from lorainbox.core import atomic
from lorainbox.core.errors import DropError
from lorainbox.core.layout import METRICS_FILE, WORK_DIR
from lorainbox.drop.recipe import DistributedSpec
from lorainbox.models.base import resolve_base_model
from lorainbox.trainers.base import Emitter, OutOfMemory, Paused, StopFlag
from lorainbox.trainers.distributed import World
from lorainbox.worker.launch import STOP_FILE, rank_file, worker_gone
from lorainbox.worker.main import context, pick_trainer
from lorainbox.worker.spec import JobSpec, initial_footprint
from lorainbox.worker.trainlog import Narrator

log = logging.getLogger("lorainbox.worker.rank")  # not "__main__" under -m


def join(trainer: str, spec: DistributedSpec) -> World:
    if trainer == "torch":
        from lorainbox.trainers.torch_dist import join as join_torch

        return join_torch(spec)
    from lorainbox.trainers.mlx_dist import join as join_mlx

    return join_mlx(spec)


def train(job_dir: Path, world: World, trainer: Any, stop: StopFlag) -> dict[str, Any]:
    """Train this rank's share; returns how it went, for its rank file."""
    spec = JobSpec.load(job_dir)
    work = job_dir / WORK_DIR
    emitter = (
        Emitter(sys.stdout, work / METRICS_FILE, narrate=Narrator(log))
        if world.writes
        else Emitter(io.StringIO())
    )
    stop_file = work / STOP_FILE
    agreed = world.agreed(lambda: stop() or stop_file.exists() or worker_gone())
    base = resolve_base_model(spec.recipe.base_model, job_dir)
    ctx = replace(
        context(spec, job_dir, emitter, agreed, initial_footprint(spec), base),
        memory_budget_gb=spec.process_budget_gb,
        world=world,
    )
    result = trainer.train(ctx)
    return {
        "outcome": "trained",
        "steps": result.steps,
        "adapter": str(result.adapter_dir),
        "final_train_loss": result.final_train_loss,
        "final_valid_loss": result.final_valid_loss,
        "extra": result.extra,
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m lorainbox.worker.rank JOBDIR", file=sys.stderr)
        return 2
    job_dir = Path(argv[0]).resolve()
    rank_env = os.environ.get("RANK") or os.environ.get("MLX_RANK") or "0"
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s %(levelname)s rank {rank_env} %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if rank_env != "0":
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    stop = StopFlag().install()
    ended: dict[str, Any]
    world: World | None = None
    try:
        spec = JobSpec.load(job_dir)
        trainer = pick_trainer(spec.recipe)
        world = join(trainer.name, spec.recipe.distributed)
        ended = train(job_dir, world, trainer, stop)
    except Paused as p:
        ended = {"outcome": "paused", "step": p.step}
    except DropError as e:
        ended = {"outcome": "error", "problems": e.to_json()}
    except (OutOfMemory, MemoryError) as e:
        ended = {"outcome": "oom", "message": str(e)}
    except Exception as e:
        from lorainbox.trainers.memory import is_out_of_memory

        if is_out_of_memory(e):
            ended = {"outcome": "oom", "message": str(e)}
        else:
            traceback.print_exc()
            ended = {"outcome": "crash", "message": f"{type(e).__name__}: {e}"}
    rank = world.rank if world is not None else int(rank_env)
    atomic.write_text(rank_file(job_dir / WORK_DIR, rank), json.dumps(ended, default=str))
    if ended["outcome"] in ("trained", "paused"):
        if world is not None and world.backend.startswith("torch"):
            from lorainbox.trainers.torch_dist import leave

            leave()
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
