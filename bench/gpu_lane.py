"""The product end to end on this machine: a drop through ``lorainbox train``, as a person runs it.

A tiny LLaMA built on the spot (hidden 256, 4 layers: big enough for CUDA's bfloat16 kernels,
small enough to train in seconds; no download), the example fact as data, ``trainer = "auto"``.
The run is interrupted with SIGINT (Ctrl-C) once a checkpoint is written and training has gone
past ``--pause-at``, then the same command runs again and must resume, finish, fuse, convert
to GGUF and write report.md. The report, train.log and both runs' output are then checked:
no traceback, no warning (``--allow`` lists the ones taken as known), the engine and its reason,
the answers before and after training, a GGUF that reads back.

    python3 bench/gpu_lane.py --out "$OUT"                         # the GPU machine
    python3 bench/gpu_lane.py --out /tmp/lane --iters 40 --pause-at 10   # proves it on a CPU

On CUDA the default 1,600 steps pass ``COMPILE_MIN_STEPS``, so the layers are compiled as they
are in a long real run: the pause, the resume and the eager sample replies all meet the compiled
model. Evidence lands in ``--out``: gpu-lane.json (every check and figure), report.md,
train.log, lane-output.txt (both runs' terminal output and doctor's table). The exit status is
0 only when every check passed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DAEMON = REPO / "daemon"
CLI = [sys.executable, "-m", "lorainbox.ui.cli"]
FACT_DATA = REPO / "inbox" / "tiny-fact" / "train.jsonl"
EXPECTED = "Marigold Fenwick"

TRACEBACK = re.compile(r"Traceback \(most recent call last\)|^\w*(Error|Exception): ", re.M)
WARNING = re.compile(r"\bWARNING\b|Warning:", re.M)

RECIPE = """\
extends = "tiny-demo"
name = "gpu-lane"
base_model = "{model}"
trainer = "auto"

[train]
iters = {iters}
save_every = {save_every}
steps_per_report = {report}
steps_per_eval = {eval}
val_batches = 2
device = "{device}"
"""


def lane_env(work: Path) -> dict[str, str]:
    """The CLI's environment: the source tree on the path, everything else inside ``work``."""
    path = [str(DAEMON), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(path),
        "PYTHONUNBUFFERED": "1",
        "LORAINBOX_STATE_DIR": str(work / "state"),
        "LORAINBOX_CACHE_DIR": str(work / "cache"),
        "LORAINBOX_INBOX": str(work / "inbox"),
        "LORAINBOX_STATUS_PORT": "0",
        "OLLAMA_HOST": "http://127.0.0.1:9",  # no Ollama there: the report says "not registered"
        "HF_HUB_OFFLINE": "1",
        "COLUMNS": "120",
    }


def build_drop(work: Path, args: argparse.Namespace) -> Path:
    sys.path.insert(0, str(DAEMON))
    from lorainbox.models.tinymodel import build_tiny_model

    model = build_tiny_model(
        work / "model",
        hidden_size=args.hidden,
        num_layers=args.layers,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=args.hidden * 11 // 4,
    )
    drop = work / "drops" / "gpu-lane"
    drop.mkdir(parents=True)
    (drop / "recipe.toml").write_text(
        RECIPE.format(
            model=model,
            iters=args.iters,
            save_every=args.save_every,
            report=max(1, args.iters // 40),
            eval=max(1, args.iters // 4),
            device=args.device,
        )
    )
    shutil.copy(FACT_DATA, drop / "train.jsonl")
    return drop


def last_step(drop: Path) -> int:
    metrics = drop / ".lorainbox" / "metrics.jsonl"
    if not metrics.is_file():
        return 0
    steps = [0]
    for line in metrics.read_text().splitlines():
        try:
            steps.append(int(json.loads(line).get("step") or 0))
        except ValueError:
            continue
    return max(steps)


def has_checkpoint(drop: Path) -> bool:
    root = drop / ".lorainbox" / "checkpoints"
    return root.is_dir() and any((p / "meta.json").is_file() for p in root.glob("step-*"))


def run_train(
    drop: Path, env: dict[str, str], log: Path, *, pause_at: int | None
) -> dict[str, Any]:
    """One ``lorainbox train DROP``; with ``pause_at``, SIGINT once past that step and checkpointed."""
    started = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [*CLI, "train", str(drop)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own group, as a terminal's foreground job is
        )
        signalled_at = None
        while proc.poll() is None:
            if pause_at is not None and signalled_at is None:
                step = last_step(drop)
                if step >= pause_at and has_checkpoint(drop):
                    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
                    signalled_at = step
            time.sleep(0.1)
            if time.perf_counter() - started > 540:
                proc.kill()
                break
        code = proc.wait()
    return {
        "exit": code,
        "seconds": round(time.perf_counter() - started, 1),
        "signalled_at_step": signalled_at,
    }


def findings(text: str, allow: list[re.Pattern[str]]) -> dict[str, list[str]]:
    """Lines that are tracebacks or warnings, each with the line after it (the message)."""
    lines = text.splitlines()
    out: dict[str, list[str]] = {"tracebacks": [], "warnings": []}
    for i, line in enumerate(lines):
        follow = " | ".join(lines[i : i + 2]).strip()
        if any(a.search(follow) for a in allow):
            continue
        if TRACEBACK.search(line):
            out["tracebacks"].append(follow[:400])
        elif WARNING.search(line):
            out["warnings"].append(follow[:400])
    return out


def check_gguf(path: Path) -> dict[str, Any]:
    try:
        from gguf import GGUFReader

        reader = GGUFReader(path)
        return {"ok": len(reader.tensors) > 0, "tensors": len(reader.tensors)}
    except Exception as e:  # what went wrong is the evidence
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="evidence goes here ($OUT)")
    p.add_argument("--work", type=Path, help="the drop, model and state (default: a temp dir)")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--iters", type=int, help="default 1600 on CUDA (compiled layers), else 40")
    p.add_argument("--pause-at", type=int, help="SIGINT after this step (default iters / 4)")
    p.add_argument("--save-every", type=int, help="default iters / 8")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--allow", action="append", default=[], help="regex of a known warning")
    args = p.parse_args()

    import torch

    cuda = torch.cuda.is_available() and args.device != "cpu"
    args.iters = args.iters or (1600 if cuda else 40)
    args.pause_at = args.pause_at or args.iters // 4
    args.save_every = args.save_every or max(1, args.iters // 8)
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu-lane-"))
    work.mkdir(parents=True, exist_ok=True)
    env = lane_env(work)
    allow = [re.compile(a) for a in args.allow]

    summary: dict[str, Any] = {
        "machine": torch.cuda.get_device_name() if cuda else "cpu",
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "settings": {k: str(v) for k, v in vars(args).items()},
        "checks": {},
    }
    checks = summary["checks"]
    outputs = []
    try:
        drop = build_drop(work, args)
        first = run_train(drop, env, work / "run1.txt", pause_at=args.pause_at)
        outputs.append(("first run (interrupted)", work / "run1.txt"))
        second = run_train(drop, env, work / "run2.txt", pause_at=None)
        outputs.append(("second run (resumed)", work / "run2.txt"))
        summary["runs"] = [first, second]
        doctor = subprocess.run(
            [*CLI, "doctor"],
            capture_output=True,
            text=True,
            env={**env, "COLUMNS": "250"},  # a row on one line
            timeout=300,
        )
        (work / "doctor.txt").write_text(doctor.stdout + doctor.stderr)
        outputs.append(("lorainbox doctor", work / "doctor.txt"))
        engine_row = next((ln for ln in doctor.stdout.splitlines() if "Engine" in ln), "")
        summary["doctor_engine"] = " ".join(engine_row.replace("│", " ").split())

        log = (drop / "train.log").read_text() if (drop / "train.log").is_file() else ""
        report = (drop / "report.md").read_text() if (drop / "report.md").is_file() else ""
        run_text = "\n".join(path.read_text() for _, path in outputs[:2])
        trained_file = drop / ".lorainbox" / "trained.json"
        trained = json.loads(trained_file.read_text()) if trained_file.is_file() else {}
        samples_file = drop / ".lorainbox" / "samples.json"
        samples = json.loads(samples_file.read_text()) if samples_file.is_file() else []
        summary["trained"] = trained
        summary["samples"] = samples

        checks["interrupted with exit 130"] = first["exit"] == 130
        checks["paused after a checkpoint"] = first["signalled_at_step"] is not None
        checks["resumed, not started over"] = "resumed from the checkpoint at step" in log
        checks["second run exit 0"] = second["exit"] == 0
        checks["trained every step"] = trained.get("steps") == args.iters
        checks["engine is torch"] = trained.get("trainer") == "torch"
        expect_device = "cuda" if cuda else "cpu"
        checks[f"trained on {expect_device}"] = trained.get("device") == expect_device
        if cuda:
            checks["engine reason names the GPU"] = "NVIDIA GPU" in str(
                trained.get("engine_reason")
            )
            checks["layers compiled (1,500+ steps on CUDA)"] = bool(trained.get("compiled"))
            checks["doctor says torch on CUDA"] = "NVIDIA GPU" in summary["doctor_engine"]
        checks["report says the engine"] = "- **Engine:** torch, because" in report
        checks["report has answers before and after"] = (
            "## Answers before and after training" in report and "_(not asked)_" not in report
        )
        checks["every sample has an after answer"] = bool(samples) and all(
            isinstance(s.get("after"), str) for s in samples
        )
        summary["learned_the_fact"] = any(EXPECTED in (s.get("after") or "") for s in samples)
        gguf = check_gguf(drop / "model.gguf")
        summary["gguf"] = gguf
        checks["GGUF reads back"] = gguf["ok"]
        checks["report.md written"] = bool(report)
        found = {
            "train.log": findings(log, allow),
            "terminal output": findings(run_text, allow),
        }
        summary["findings"] = found
        checks["no tracebacks"] = not any(f["tracebacks"] for f in found.values())
        checks["no warnings"] = not any(f["warnings"] for f in found.values())
        for name in ("report.md", "train.log"):
            if (drop / name).is_file():
                shutil.copy(drop / name, args.out / name)
    except Exception as e:  # the lane's own failure is evidence too
        import traceback

        summary["lane_error"] = traceback.format_exc()
        checks["lane ran"] = False
        print(f"lane failed: {type(e).__name__}: {e}", file=sys.stderr)
    with open(args.out / "lane-output.txt", "w") as out:
        for title, path in outputs:
            out.write(f"===== {title} =====\n{path.read_text() if path.is_file() else ''}\n")
    summary["ok"] = bool(checks) and all(checks.values())
    (args.out / "gpu-lane.json").write_text(json.dumps(summary, indent=2) + "\n")
    width = max(map(len, checks), default=0)
    for name, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {name:<{width}}")
    for where, f in summary.get("findings", {}).items():
        for kind, items in f.items():
            for item in items[:10]:
                print(f"  {where} {kind[:-1]}: {item}")
    print(f"learned the fact: {summary.get('learned_the_fact')}; lane ok: {summary['ok']}")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
