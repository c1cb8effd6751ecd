"""The worker: one job, in its own process (``python -m lorainbox.worker JOBDIR``).

Training loads gigabytes and may run out of memory or crash; in a subprocess it can never take
the daemon down. The worker speaks to the supervisor in JSON lines on stdout (see
:class:`~lorainbox.trainers.base.Emitter`) and with its exit code (``EXIT_*`` in ``worker.outcome``).
Every stage is restartable: training resumes from its last checkpoint, and a stage whose
output already exists is skipped.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from lorainbox.core.errors import DropError
from lorainbox.core.layout import GGUF, METRICS_FILE, TRAINED_MARKER, WORK_DIR
from lorainbox.drop.freshness import forget_stale, keys
from lorainbox.drop.recipe import Recipe
from lorainbox.models.base import check_model_dir, resolve_base_model
from lorainbox.trainers.base import (
    Emitter,
    Footprint,
    OutOfMemory,
    Paused,
    StopFlag,
    TrainContext,
    Trainer,
)
from lorainbox.trainers.engine import choose_engine, is_apple_silicon, quantized_for_mlx
from lorainbox.worker.launch import spreads, train_spread
from lorainbox.worker.outcome import EXIT_DROP_ERROR, EXIT_OK, EXIT_OUT_OF_MEMORY, EXIT_PAUSED
from lorainbox.worker.spec import JobSpec, disk_full_while, initial_footprint, is_disk_full
from lorainbox.worker.trainlog import Narrator

log = logging.getLogger(__name__)


def pick_trainer(recipe: Recipe, base: Path | None = None) -> Trainer:
    """The engine :func:`choose_trainer` picks, without its reason."""
    return choose_trainer(recipe, base)[0]


def choose_trainer(recipe: Recipe, base: Path | None = None) -> tuple[Trainer, str]:
    """The trainer for the recipe on this machine, and why (see ``trainers.engine``): MLX on
    Apple Silicon, PyTorch with CUDA or on the CPU elsewhere, diffusers for diffusion."""
    if recipe.kind == "diffusion":
        from lorainbox.trainers.diffusion.trainer import DiffusionTrainer

        return DiffusionTrainer(), "Stable Diffusion trains with diffusers on PyTorch"
    # MLX is tried only where it could be chosen: importing it pulls mlx-lm and transformers.
    mlx_usable = recipe.trainer == "mlx" or (
        recipe.trainer == "auto" and (is_apple_silicon() or quantized_for_mlx(base))
    )
    choice = choose_engine(recipe.trainer, base, mlx_usable=mlx_usable and _mlx_available())
    if choice.name == "mlx":
        if not _mlx_available():
            raise DropError.one(
                "the recipe asks for the MLX trainer, but MLX cannot run on this machine",
                "recipe.toml, `trainer`",
                'set trainer = "auto" or "torch" (MLX needs Apple Silicon, or Linux with mlx[cpu])',
            )
        from lorainbox.trainers.mlx import MLXTrainer

        return MLXTrainer(), choice.reason
    from lorainbox.trainers.torch_llm import TorchLLMTrainer

    return TorchLLMTrainer(), choice.reason


def _mlx_available() -> bool:
    try:
        import mlx.core  # noqa: F401

        _keep_torch_out_of_transformers()
        import mlx_lm  # noqa: F401
    except ImportError:
        return False
    return True


def _keep_torch_out_of_transformers() -> None:
    """An MLX job needs transformers only for its tokenizer, but transformers imports torch
    whenever torch is installed: 180 MB of the worker's memory for nothing. Telling it torch is
    absent (the way it runs on a Mac without torch) keeps the worker at mlx-lm's size or below.
    Only for a worker that has not loaded transformers yet (building the tiny demo model does)."""
    if "transformers" in sys.modules:
        return
    import transformers.utils as utils
    import transformers.utils.import_utils as import_utils

    utils.is_torch_available = import_utils.is_torch_available = lambda: False


def plan_memory(spec: JobSpec, job_dir: Path, base: Path, emitter: Emitter) -> Footprint:
    """The footprint to train with: planned once per job, then kept in job.json for retries."""
    from lorainbox.trainers.memory import estimate_for, longest_example_tokens, plan_footprint

    files = [f if f.is_absolute() else job_dir / f for f in (spec.train_file, spec.valid_file) if f]
    longest = longest_example_tokens(files)
    if spec.footprint:
        footprint = Footprint(**spec.footprint)
    else:
        footprint = plan_footprint(
            base, spec.recipe, spec.process_budget_gb, longest_example=longest
        )
        spec.footprint = asdict(footprint)
        spec.save(job_dir)
    estimate = estimate_for(base, spec.recipe, footprint, longest_example=longest)
    emitter.emit(
        "footprint",
        **asdict(footprint),
        budget_gb=spec.process_budget_gb,
        estimate_gb=round(estimate, 2),
    )
    return footprint


def context(
    spec: JobSpec,
    job_dir: Path,
    emitter: Emitter,
    stop: Callable[[], bool],
    footprint: Footprint,
    base: Path | None,
) -> TrainContext:
    return TrainContext(
        job_dir=job_dir,
        work_dir=job_dir / WORK_DIR,
        recipe=spec.recipe,
        train_file=spec.train_file,
        valid_file=spec.valid_file,
        footprint=footprint,
        memory_budget_gb=spec.memory_budget_gb,
        emitter=emitter,
        stop_requested=stop,
        base_model_dir=base,
    )


def run(job_dir: Path, emitter: Emitter, stop: StopFlag) -> int:
    spec = JobSpec.load(job_dir)
    work = job_dir / WORK_DIR
    data = [spec.train_file, *([spec.valid_file] if spec.valid_file else [])]
    now = keys(spec.recipe, [job_dir / p for p in data])  # an absolute path stays as it is
    if (forgot := forget_stale(work, now, job_dir / GGUF)) is not None:
        log.info(forgot)
    emitter.metrics_file = work / METRICS_FILE
    done_marker = work / TRAINED_MARKER
    footprint = initial_footprint(spec)
    base = None
    if spec.recipe.kind == "llm":
        base = resolve_base_model(spec.recipe.base_model, job_dir)
        check_model_dir(base)
    trainer, engine_reason = choose_trainer(spec.recipe, base)
    if base is not None and not done_marker.exists():
        footprint = plan_memory(spec, job_dir, base, emitter)
    ctx = context(spec, job_dir, emitter, stop, footprint, base)
    if not done_marker.exists():
        emitter.emit("stage", stage="training", trainer=trainer.name, reason=engine_reason)
        if spreads(spec.recipe.distributed):
            result = train_spread(ctx, trainer.name, stop)
        else:
            result = trainer.train(ctx)
        trained = {
            "steps": result.steps,
            "adapter": str(result.adapter_dir),
            "engine_reason": engine_reason,
            **result.extra,
        }
        done_marker.write_text(json.dumps(trained))
        emitter.emit("trained", **trained)
    recipe = spec.recipe
    if recipe.kind == "llm" and recipe.export.gguf and not (job_dir / GGUF).exists():
        emitter.emit("stage", stage="exporting")
        export(trainer, ctx, base)
    return EXIT_OK


def export(trainer: Trainer, ctx: TrainContext, base: Path | None) -> None:
    """Fuse and convert; a full disk becomes the person's problem, with the space it needs."""
    from lorainbox.export.gguf import convert_to_gguf

    gguf_path = ctx.job_dir / GGUF
    need = export_space_needed(base)
    free = shutil.disk_usage(ctx.job_dir).free
    if free < need:
        raise disk_full(ctx.job_dir, need, free)
    last: list[tuple[str, float | None]] = [("", None)]

    def stage(name: str, fraction: float | None = None) -> None:
        """Tell the supervisor how far the export is: each new stage, each further percent."""
        now = (name, None if fraction is None else round(fraction, 2))
        if now != last[0]:
            last[0] = now
            ctx.emitter.emit("export", stage=name, fraction=now[1])

    try:
        stage("fusing")
        fused = trainer.fuse(ctx)
        info = convert_to_gguf(
            fused,
            gguf_path,
            ctx.recipe.export.outtype,
            on_progress=stage,
            model_name=ctx.recipe.ollama_model,
            data_files=ctx.data_files,
            tokenizer_dir=base,
        )
    except (OSError, DropError) as e:
        if not is_disk_full(e):
            raise
        shutil.rmtree(ctx.fused_dir, ignore_errors=True)
        raise disk_full(ctx.job_dir, need, shutil.disk_usage(ctx.job_dir).free) from e
    shutil.rmtree(ctx.fused_dir, ignore_errors=True)  # a full copy of the model, no longer needed
    ask_gguf(ctx, gguf_path)
    # Named within the job's folder, which moves from Queue/ to Done/ after this.
    ctx.emitter.emit("exported", gguf=GGUF, info={**info.as_dict(), "path": GGUF})


def ask_gguf(ctx: TrainContext, gguf_path: Path) -> None:
    """The report's questions answered by the GGUF itself; a failure costs only that column."""
    from lorainbox.export.answers import gguf_replier
    from lorainbox.trainers import samples

    try:
        reply = gguf_replier(gguf_path, samples.MAX_TOKENS)
    except Exception:
        log.exception("llama.cpp could not load the GGUF to answer the report's questions")
        return
    samples.after_export(ctx.work_dir, reply)


def export_space_needed(base: Path | None) -> int:
    """Bytes the fused folder and the GGUF take together, from the base's safetensors headers."""
    if base is None:
        return 0
    from lorainbox.trainers.memory import read_model_shape

    shape = read_model_shape(base)
    fused = shape.weight_bytes * (4 if shape.quantized else 1)  # 4-bit weights come out as f16
    return int(fused * 2.1)


def disk_full(where: Path, need: int, free: int) -> DropError:
    return DropError.one(
        f"the disk is full: exporting the model needs about {need / 1e9:.2f} GB, "
        f"{free / 1e9:.2f} GB is free",
        str(where),
        "free some disk space, then run `lorainbox retry NAME`: training is kept and "
        "only the export runs again",
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m lorainbox.worker JOBDIR", file=sys.stderr)
        return 2
    job_dir = Path(argv[0]).resolve()
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    emitter = Emitter(sys.stdout, narrate=Narrator(log))
    stop = StopFlag().install()
    try:
        return run(job_dir, emitter, stop)
    except Paused as p:
        emitter.emit("paused", step=p.step)
        return EXIT_PAUSED
    except DropError as e:
        emitter.emit("error", problems=e.to_json())
        return EXIT_DROP_ERROR
    except (OutOfMemory, MemoryError) as e:
        emitter.emit("oom", message=str(e))
        return EXIT_OUT_OF_MEMORY
    except Exception as e:  # a crash: the supervisor retries from the checkpoint
        from lorainbox.trainers.memory import is_out_of_memory

        if is_out_of_memory(e):  # MLX says so with a plain RuntimeError, outside the step too
            emitter.emit("oom", message=str(e))
            return EXIT_OUT_OF_MEMORY
        if is_disk_full(e):  # retrying cannot help; the person frees space and retries
            emitter.emit("error", problems=disk_full_while(job_dir, e).to_json())
            return EXIT_DROP_ERROR
        emitter.emit("crash", message=f"{type(e).__name__}: {e}", trace=traceback.format_exc())
        raise


if __name__ == "__main__":
    sys.exit(main())
