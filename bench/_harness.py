"""What the PyTorch benches share: arms in child processes, a step clock, the results.

Each arm runs in a fresh child process of the bench script, started with hidden ``--arm``
arguments, so that peak memory, compiled state and CUDA's caches never leak from one arm into
the next; the child prints one ``RESULT {json}`` line, which the parent reads back. Steps are
timed after warm-up (the first steps compile, autotune and fill caches), and the results go out
as a table and as the JSON that ``bench/results/`` holds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lorainbox.trainers.base import Footprint, TrainContext

RESULT = "RESULT "
"""The child's last word: this prefix, then its result as JSON on the same line."""
HIDDEN = ("--arm", "--settings", "--model", "--data", "--work")

COMPILE = {"ours+compile": {"compile": True}}
"""Compiling costs a minute or more up front: it pays on long runs, and where the step waits on
Python's dispatch (the LLM bench on CUDA runs it by default; the SD bench on --with-compile)."""

Result = dict[str, Any]


# --- the command line ------------------------------------------------------------------------


def bench_parser(doc: str | None, tiny_help: str) -> argparse.ArgumentParser:
    """The options every bench has first: --tiny, the device, steps and warm-up steps."""
    p = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tiny", action="store_true", help=tiny_help)
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"])
    p.add_argument("--steps", type=int)
    p.add_argument("--warmup", type=int)
    return p


def add_round_args(p: argparse.ArgumentParser) -> None:
    """Which arms run, and how often: ablations, the compile arm, a chosen few, rounds."""
    p.add_argument("--ablations", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument(
        "--with-compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run the torch.compile arm (default: where the bench says it pays)",
    )
    p.add_argument("--arms", help="comma-separated arms to run (default: all that apply)")
    p.add_argument(
        "--repeat", type=int, default=1, help="rounds over all arms; each arm reports its median"
    )


def resolve_device(requested: str, tiny: bool) -> str:
    """``auto``: CUDA when there is one, except for --tiny, which proves the bench on the CPU."""
    if requested != "auto":
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() and not tiny else "cpu"


def arms_to_run(
    args: argparse.Namespace,
    device: str,
    main: Sequence[str],
    ablations: Sequence[str],
    *,
    compile_on_cuda: bool = False,
) -> list[str]:
    """--arms as given; else the main arms, the ablations (by default on CUDA only, where the
    switches matter) and the compile arm (--with-compile, or on CUDA if ``compile_on_cuda``)."""
    if args.arms:
        return args.arms.split(",")
    with_ablations = args.ablations if args.ablations is not None else device == "cuda"
    with_compile = args.with_compile
    if with_compile is None:
        with_compile = compile_on_cuda and device == "cuda"
    return [*main, *(ablations if with_ablations else []), *(COMPILE if with_compile else [])]


# --- the child --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArmCall:
    """One child's task, as the parent's hidden arguments give it."""

    arm: str
    settings: dict[str, Any]
    """The bench's settings dataclass as a dict (the script rebuilds its own type)."""
    model: Path
    data: Path
    work: Path
    """A fresh folder for this arm alone, under the parent's work folder."""


def parse_or_run_arm(
    p: argparse.ArgumentParser, child: Callable[[ArmCall], Result]
) -> argparse.Namespace | None:
    """The parent's arguments; or, in a child (hidden ``--arm`` arguments), run its arm, report
    the result to the parent and return None."""
    for name in HIDDEN:
        p.add_argument(name, help=argparse.SUPPRESS)
    args = p.parse_args()
    if not args.arm:
        return args
    work = Path(tempfile.mkdtemp(prefix=f"{args.arm}-", dir=args.work))
    call = ArmCall(args.arm, json.loads(args.settings), Path(args.model), Path(args.data), work)
    print(RESULT + json.dumps(child(call)), flush=True)
    return None


def train_context(
    recipe: dict[str, Any], work: Path, train_file: Path, footprint: Footprint
) -> TrainContext:
    """Our trainer's context outside the daemon: no budget to plan memory against, no stop
    requests, progress lines dropped (the clock is what the bench measures)."""
    import io

    from lorainbox.drop.recipe import Recipe
    from lorainbox.trainers.base import Emitter, TrainContext

    return TrainContext(
        job_dir=work,
        work_dir=work / ".lorainbox",
        recipe=Recipe.model_validate(recipe),
        train_file=train_file,
        valid_file=None,
        footprint=footprint,
        memory_budget_gb=1e6,
        emitter=Emitter(io.StringIO()),
        stop_requested=lambda: False,
    )


def synchronize(device: str) -> None:
    """Wait for queued kernels, so that a clock read counts the work where it ran."""
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
    elif device == "mps":
        torch.mps.synchronize()


def peak_memory_gb(device: str) -> float:
    """CUDA's allocator peak, or (CPU, MPS) the process's peak RSS: what the arm needed."""
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 1e9
    from lorainbox.trainers.torch_common import process_peak_rss_gb

    return process_peak_rss_gb()


class StepClock:
    """Wall time from the end of the last warm-up step to the end of the last step.

    Warm-up steps are not timed: they compile, autotune and fill the allocator's caches. The
    time to the end of the first step (loading, caching, the first step) is kept as setup.
    """

    def __init__(self, device: str, steps: int, warmup: int):
        self.device, self.steps, self.warmup = device, steps, warmup
        self.began = self.start = self.end = time.perf_counter()
        self.first_step: float | None = None
        """Seconds from the clock's creation to the end of step 1."""

    def mark(self, step: int) -> None:
        """Call after every optimizer step with the number of steps done."""
        if step == 1:
            self.first_step = time.perf_counter() - self.began
        if step in (self.warmup, self.steps):
            synchronize(self.device)
            if step == self.warmup:
                self.start = time.perf_counter()
            else:
                self.end = time.perf_counter()

    @property
    def timed_steps(self) -> int:
        return self.steps - self.warmup

    @property
    def seconds(self) -> float:
        return self.end - self.start

    @property
    def seconds_per_step(self) -> float:
        return self.seconds / self.timed_steps

    def peak_memory_gb(self) -> float:
        return peak_memory_gb(self.device)


# --- the parent -------------------------------------------------------------------------------


def spawn_arm(
    script: str | Path, arm: str, settings: Any, model: Path, data: Path, work: Path, tiny: bool
) -> Result:
    """Run ``script`` on one arm in a child process: its result with the wall time, or why not."""
    env = dict(os.environ)
    if tiny:
        env["OMP_NUM_THREADS"] = "1"  # tiny matrices: a shared CPU's thread pool only adds spinning
    cmd = [sys.executable, str(script), "--arm", arm, "--settings", json.dumps(asdict(settings))]
    cmd += ["--model", str(model), "--data", str(data), "--work", str(work)]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT):
            result = json.loads(line[len(RESULT) :])
            return {**result, "wall_seconds": time.perf_counter() - started}
    return {"error": f"exit {proc.returncode}", "log_tail": (proc.stderr or proc.stdout)[-3000:]}


def run_rounds(
    arms: Sequence[str], repeat: int, run: Callable[[str], Result]
) -> dict[str, list[Result]]:
    """Every arm ``repeat`` times, rounds interleaved: a slow spell of a shared GPU hits every
    arm alike instead of the one that happened to be running."""
    runs: dict[str, list[Result]] = {arm: [] for arm in arms}
    for round_ in range(repeat):
        for arm in arms:
            counter = f" ({round_ + 1}/{repeat})" if repeat > 1 else ""
            print(f"running {arm}{counter} ...", flush=True)
            result = run(arm)
            runs[arm].append(result)
            if "skipped" in result:
                print(f"  note: {arm} skipped: {result['skipped']}")
            elif "error" in result:
                print(f"  {arm} failed:\n{result['log_tail']}")
    return runs


def median_run(
    runs: list[Result], metric: str, *, higher_is_better: bool = True, digits: int | None = None
) -> Result:
    """The run with the median ``metric`` (of an even count, the worse middle one), with every
    run's figure beside it as ``runs_<metric>``, worst first; the last run if none was timed."""
    timed = sorted(
        (r for r in runs if metric in r), key=lambda r: r[metric], reverse=not higher_is_better
    )
    if not timed:
        return runs[-1]
    return {
        **timed[(len(timed) - 1) // 2],
        f"runs_{metric}": [round(r[metric], digits) for r in timed],
    }


# --- results ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """One numeric column of the results table."""

    title: str
    width: int
    value: Callable[[Result], float]
    spec: str
    """Format spec of the number, e.g. ``.3f``."""
    suffix: str = ""
    """Written after the number, within the width (``x`` for ratios)."""

    def cell(self, r: Result) -> str:
        return f"{format(self.value(r), self.spec):>{self.width - len(self.suffix)}}{self.suffix}"


def ratio_to(results: dict[str, Result], baseline: str, metric: str) -> Callable[[Result], float]:
    """A run's ``metric`` over the baseline arm's (NaN without a baseline figure)."""
    base = results.get(baseline, {}).get(metric)
    return lambda r: r[metric] / base if base else float("nan")


def results_table(
    results: dict[str, Result], columns: Sequence[Column], metric: str, arm_width: int
) -> str:
    """One row an arm; an arm without ``metric`` shows why (skipped, or its error)."""
    rows = [f"{'arm':<{arm_width}}" + "".join(f"{c.title:>{c.width}}" for c in columns)]
    for arm, r in results.items():
        if metric not in r:
            rows.append(f"{arm:<{arm_width}}  {r.get('skipped') or r.get('error')}")
        else:
            rows.append(f"{arm:<{arm_width}}" + "".join(c.cell(r) for c in columns))
    return "\n".join(rows)


def write_report(
    out: Path | None,
    settings: Any,
    model: str,
    device: str,
    results: dict[str, Result],
    summary: dict[str, Any],
) -> dict[str, Any]:
    """The report (settings, model, device, torch version, results, summary), written to
    ``out`` as JSON when given: ``bench/results/`` holds these and the README quotes them."""
    import torch

    report = {
        "settings": asdict(settings),
        "model": model,
        "device_name": torch.cuda.get_device_name() if device == "cuda" else device,
        "torch": torch.__version__,
        "results": results,
        "summary": summary,
    }
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {out}")
    return report
