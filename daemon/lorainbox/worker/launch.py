"""The training stage in several data-parallel processes, under the framework's own launcher.

The supervisor still starts one worker per job and reads its JSON lines; when a recipe's
``[distributed]`` asks for more than one process, the worker runs only the training stage as
N ranks (``python -m lorainbox.worker.rank JOBDIR``) under ``torch.distributed.run`` (gloo on
the CPU, NCCL on CUDA) or ``mlx.launch`` (ring over TCP, NCCL on CUDA), then fuses and exports
alone, as for one process. Rank 0's stdout passes through the launcher to the supervisor;
checkpoints hold the global step and data position, so a paused job may resume with another
number of processes.

A stop (SIGTERM from the supervisor) reaches the ranks as a file in the job's work folder,
not as a signal through the launcher (torch's gives its workers 30 s, mlx's none): rank 0 sees
it at its next step, all ranks agree on it and stop after the same step, rank 0 checkpoints.
The launchers' exit codes do not say how a rank ended (mlx.launch's is always 0), so each rank
leaves a file saying it, and the worker raises what rank 0 (or a failing rank) met.

Several machines (``hosts``): each needs ssh access, the same Python environment and the job
folder at the same path; this machine is the first host and runs rank 0. MLX reaches the others
through ``mlx.launch``; torch's launcher runs on every host (started over ssh here) with a
static rendezvous at the first host.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from lorainbox.core.errors import DropError
from lorainbox.drop.recipe import DistributedSpec
from lorainbox.trainers.base import OutOfMemory, Paused, TrainContext, TrainResult

STOP_FILE = "stop-requested"
WORKER_PID = "LORAINBOX_WORKER_PID"
"""Set for the ranks of this machine: a rank whose worker is gone (killed) pauses."""
RANKS_DIR = "ranks"
TORCH_PORT = 29_500
POLL_S = 0.2


def rank_file(work: Path, rank: int) -> Path:
    return work / RANKS_DIR / f"rank-{rank}.json"


def spreads(spec: DistributedSpec) -> bool:
    return spec.world_size > 1


def check(ctx: TrainContext, trainer: str) -> None:
    if ctx.recipe.kind != "llm":
        raise DropError.one(
            "[distributed] trains language models only",
            "recipe.toml, [distributed]",
            "remove the [distributed] section, or set processes = 1",
        )
    names = [h for h in ctx.recipe.distributed.hosts if not _is_ip(h)]
    if trainer == "mlx" and names:
        raise DropError.one(
            f"MLX's ring backend reaches machines by IP address, not by name ({', '.join(names)})",
            "recipe.toml, [distributed] hosts",
            "write each host as its IP address, this machine first",
        )


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def worker_gone() -> bool:
    """True once the worker that launched this rank has died (SIGKILL leaves no stop file).
    A dead worker may linger as a zombie while the supervisor still reads the ranks' output."""
    pid = os.environ.get(WORKER_PID)
    if not pid:
        return False
    try:
        return psutil.Process(int(pid)).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def free_port(count: int = 1) -> int:
    """A port the OS just had free (and the next ``count - 1``, which ring ranks take)."""
    for _ in range(20):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + count < 65_536:
            return port
    raise OSError("no free port for the training processes")


def torch_commands(job_dir: Path, spec: DistributedSpec) -> list[list[str]]:
    """torchrun on this machine, and over ssh on each further host (static rendezvous)."""
    run = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={spec.processes}"]
    rank = ["-m", "lorainbox.worker.rank", str(job_dir)]
    if not spec.hosts or len(spec.hosts) == 1:
        return [[*run, "--standalone", *rank]]
    port = TORCH_PORT
    nodes = [
        f"--nnodes={len(spec.hosts)}",
        f"--master-addr={spec.hosts[0]}",
        f"--master-port={port}",
        "--rdzv-backend=static",
    ]
    commands = [[*run, *nodes, "--node-rank=0", *rank]]
    for i, host in enumerate(spec.hosts[1:], 1):
        remote = shlex.join([*run, *nodes, f"--node-rank={i}", *rank])
        env = _remote_env()
        commands.append(["ssh", host, f"cd {shlex.quote(os.getcwd())} && {env}{remote}"])
    return commands


def mlx_command(job_dir: Path, spec: DistributedSpec) -> list[str]:
    """mlx.launch with this machine's processes over loopback, or the hosts' over ssh."""
    from lorainbox.trainers.mlx_dist import backend

    hosts = ",".join(spec.hosts) if spec.hosts else "127.0.0.1"
    launch = "import sys; from mlx._distributed_utils.launch import main; sys.exit(main())"
    path = os.environ.get("PYTHONPATH")
    extra = [f"--env=PYTHONPATH={path}"] if spec.hosts and path else []
    return [
        sys.executable,
        "-c",
        launch,
        f"--backend={backend()}",
        f"--hosts={hosts}",
        f"--repeat-hosts={spec.processes}",
        f"--starting-port={free_port(spec.world_size)}",
        f"--cwd={os.getcwd()}",
        *extra,
        "--",
        sys.executable,
        "-m",
        "lorainbox.worker.rank",
        str(job_dir),
    ]


def _remote_env() -> str:
    path = os.environ.get("PYTHONPATH")
    return f"PYTHONPATH={shlex.quote(path)} " if path else ""


def train_spread(ctx: TrainContext, trainer: str, stop: Callable[[], bool]) -> TrainResult:
    """Run the training stage as the recipe's processes; what rank 0 trained, or raise what
    ended it (:class:`Paused`, :class:`OutOfMemory`, :class:`DropError`, a crash)."""
    check(ctx, trainer)
    spec = ctx.recipe.distributed
    work = ctx.work_dir
    shutil.rmtree(work / RANKS_DIR, ignore_errors=True)
    (work / RANKS_DIR).mkdir(parents=True)
    (work / STOP_FILE).unlink(missing_ok=True)
    if trainer == "torch":
        commands = torch_commands(ctx.job_dir, spec)
    else:
        commands = [mlx_command(ctx.job_dir, spec)]
    sys.stdout.flush()
    env = {**os.environ, WORKER_PID: str(os.getpid())}
    procs = [subprocess.Popen(c, stdin=subprocess.DEVNULL, env=env) for c in commands]
    try:
        while any(p.poll() is None for p in procs):
            if stop() and not (work / STOP_FILE).exists():
                (work / STOP_FILE).touch()
            time.sleep(POLL_S)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        (work / STOP_FILE).unlink(missing_ok=True)
    return ended(ctx, [p.returncode for p in procs])


def ended(ctx: TrainContext, codes: list[int]) -> TrainResult:
    """Rank 0's outcome, unless another rank met the cause of the end (out of memory, say)."""
    found: dict[int, dict[str, Any]] = {}
    for path in (ctx.work_dir / RANKS_DIR).glob("rank-*.json"):
        found[int(path.stem.split("-")[1])] = json.loads(path.read_text())
    for kind in ("error", "oom", "crash"):
        for rank, outcome in sorted(found.items()):
            if outcome["outcome"] != kind:
                continue
            if kind == "error":
                raise DropError.from_json(outcome["problems"])
            if kind == "oom":
                raise OutOfMemory(f"rank {rank}: {outcome['message']}")
            raise RuntimeError(f"training process {rank} failed: {outcome['message']}")
    first = found.get(0)
    if first is None:
        raise RuntimeError(
            f"the training processes ended without a word (launcher exit codes {codes}); "
            "see train.log"
        )
    if first["outcome"] == "paused":
        raise Paused(int(first["step"]))
    return TrainResult(
        Path(first["adapter"]),
        int(first["steps"]),
        first.get("final_train_loss"),
        first.get("final_valid_loss"),
        first.get("extra", {}),
    )
