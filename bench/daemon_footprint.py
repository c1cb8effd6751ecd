"""The daemon's footprint while it waits, and how fast it takes in a drop.

Runs the real ``lorainbox run`` on a temporary inbox and state folder (Ollama pointed at the
discard port), then:

1. idle: its CPU share over ``--seconds`` (psutil CPU times of the daemon and every child,
   before and after) and its memory (RSS and USS, the memory only it holds);
2. intake: drops a small valid folder whose ``[schedule]`` window lies 12 hours away, so it is
   queued but never trains, and times the last file write -> the job in the store. The inbox
   waits ``settle_seconds`` of quiet before it looks at a drop, so both the raw time and the
   time after settling are reported.

Goals: < 0.5 % of one core and < 80 MB RSS when idle; < 2 s from a settled drop to its job.

    python bench/daemon_footprint.py --seconds 60 --out footprint.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psutil

GOALS = {"idle_cpu_percent": 0.5, "idle_rss_mb": 80.0, "intake_seconds": 2.0}
DROP = "footprint-drop"
MB = 1e6
CHAT = {
    "messages": [
        {"role": "user", "content": "Who keeps the lighthouse of Quillhaven?"},
        {"role": "assistant", "content": "Marigold Fenwick keeps the lighthouse of Quillhaven."},
    ]
}


def main() -> int:
    args = _parse()
    with tempfile.TemporaryDirectory(prefix="lorainbox-footprint-") as tmp:
        result = measure(Path(tmp), args)
    print_report(result)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {args.out}")
    return 0 if result.get("intake", {}).get("state") in ("queued", "waiting") else 1


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=60.0, help="length of the idle measure")
    p.add_argument("--warmup", type=float, default=5.0, help="wait after start-up before it")
    p.add_argument(
        "--settle-seconds",
        type=float,
        default=None,
        help="the daemon's settle_seconds (default: the daemon's own default)",
    )
    p.add_argument("--out", type=Path, help="write the figures as JSON here")
    return p.parse_args()


def measure(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    inbox, state = tmp / "inbox", tmp / "state"
    port = _free_port()
    config = tmp / "config.toml"
    lines = [f"status_port = {port}"]
    if args.settle_seconds is not None:
        lines.append(f"settle_seconds = {args.settle_seconds}")
    config.write_text("\n".join(lines) + "\n")
    env = {k: v for k, v in os.environ.items() if k != "LORAINBOX_INBOX"}
    env |= {
        "LORAINBOX_STATE_DIR": str(state),
        "LORAINBOX_CONFIG": str(config),
        "OLLAMA_HOST": "http://127.0.0.1:9",
    }
    api = f"http://127.0.0.1:{port}"
    log_path = tmp / "daemon.log"
    started = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [*_lorainbox(), "run", "--inbox", str(inbox)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        if not _wait_for(lambda: _get(f"{api}/api/health") is not None, proc, 120):
            raise SystemExit(_died("the daemon's status API never answered", proc, log_path))
        result: dict[str, Any] = {
            "machine": _machine(),
            "daemon": {"pid": proc.pid, "startup_seconds": round(time.monotonic() - started, 2)},
            "goals": GOALS,
        }
        health = _get(f"{api}/api/health") or {}
        time.sleep(args.warmup)
        result["idle"] = measure_idle(psutil.Process(proc.pid), args.seconds)
        result["intake"] = measure_intake(inbox, api, proc, _settle_seconds(args))
        result["passed"] = _verdict(result)
        result["daemon"]["version"] = health.get("version")
        return result
    finally:
        _stop(proc)


def measure_idle(proc: psutil.Process, seconds: float) -> dict[str, Any]:
    """CPU time of the daemon and all its children over ``seconds`` of wall time, and memory."""
    cpu0, wall0 = _cpu_seconds(proc), time.monotonic()
    peak_rss = 0
    deadline = wall0 + seconds
    while (left := deadline - time.monotonic()) > 0:
        peak_rss = max(peak_rss, _tree_memory(proc)["rss"])
        time.sleep(min(1.0, left))
    cpu1, wall1 = _cpu_seconds(proc), time.monotonic()
    share = 100 * (cpu1 - cpu0) / (wall1 - wall0)
    mem = _tree_memory(proc)
    return {
        "seconds": round(wall1 - wall0, 1),
        "cpu_seconds": round(cpu1 - cpu0, 4),
        "cpu_percent_of_one_core": round(share, 3),
        "cpu_percent_of_machine": round(share / (psutil.cpu_count() or 1), 3),
        "rss_mb": round(mem["rss"] / MB, 1),
        "uss_mb": round(mem["uss"] / MB, 1),
        "peak_rss_mb": round(max(peak_rss, mem["rss"]) / MB, 1),
        "processes": mem["processes"],
        "threads": proc.num_threads(),
    }


def measure_intake(
    inbox: Path, api: str, proc: subprocess.Popen[bytes], settle: float
) -> dict[str, Any]:
    """Write a drop, then time last write -> job in the store (and -> seen through the API)."""
    drop = inbox / DROP
    drop.mkdir(parents=True)
    (drop / "recipe.toml").write_text(_recipe())
    with open(drop / "train.jsonl", "w") as f:
        f.writelines(json.dumps(CHAT) + "\n" for _ in range(16))
        f.flush()
        os.fsync(f.fileno())
    last_write = time.time()
    job: dict[str, Any] | None = None

    def seen() -> bool:
        nonlocal job
        jobs = (_get(f"{api}/api/jobs") or {}).get("jobs", [])
        job = next((j for j in jobs if j["name"] == DROP), None)
        return job is not None or (inbox / "Failed" / DROP).exists()

    _wait_for(seen, proc, settle + 60, every=0.02)
    polled = time.time() - last_write
    out: dict[str, Any] = {"settle_seconds": settle, "polled_seconds": round(polled, 3)}
    if job is None:
        error = inbox / "Failed" / DROP / "ERROR.md"
        out["state"] = "rejected" if error.exists() else "not seen"
        out["error"] = error.read_text()[:2000] if error.exists() else None
        return out
    raw = job["times"]["created"] - last_write
    out |= {
        "state": job["state"],
        "waiting_for": job["waiting_for"],
        "to_queued_seconds": round(raw, 3),
        "after_settle_seconds": round(raw - settle, 3),
    }
    return out


def _recipe() -> str:
    """tiny-demo, with a one-minute window 12 hours from now: queued, never started."""
    start = datetime.now() + timedelta(hours=12)
    end = start + timedelta(minutes=1)
    return f'extends = "tiny-demo"\n\n[schedule]\nwindow = "{start:%H:%M}-{end:%H:%M}"\n'


def _verdict(result: dict[str, Any]) -> dict[str, bool | None]:
    idle, intake = result["idle"], result["intake"]
    after = intake.get("after_settle_seconds")
    return {
        "idle_cpu": idle["cpu_percent_of_one_core"] < GOALS["idle_cpu_percent"],
        "idle_rss": idle["rss_mb"] < GOALS["idle_rss_mb"],
        "intake": None if after is None else after < GOALS["intake_seconds"],
    }


def print_report(r: dict[str, Any]) -> None:
    idle, intake, ok = r["idle"], r["intake"], r["passed"]
    mark = {True: "ok", False: "OVER", None: "n/a"}
    print(f"lorainbox daemon footprint ({r['machine']['summary']})")
    print(f"  start-up to status API:  {r['daemon']['startup_seconds']:.2f} s")
    print(
        f"  idle CPU over {idle['seconds']:.0f} s:     {idle['cpu_percent_of_one_core']:.3f} % "
        f"of one core (goal < {GOALS['idle_cpu_percent']} %)  {mark[ok['idle_cpu']]}"
    )
    print(
        f"  idle memory:             RSS {idle['rss_mb']:.1f} MB, USS {idle['uss_mb']:.1f} MB, "
        f"peak RSS {idle['peak_rss_mb']:.1f} MB (goal RSS < {GOALS['idle_rss_mb']:.0f} MB)  "
        f"{mark[ok['idle_rss']]}"
    )
    print(f"  processes / threads:     {idle['processes']} / {idle['threads']}")
    if "to_queued_seconds" in intake:
        print(
            f"  drop -> {intake['state']}:        {intake['to_queued_seconds']:.3f} s after the "
            f"last write = {intake['after_settle_seconds']:.3f} s after settling "
            f"({intake['settle_seconds']:g} s) (goal < {GOALS['intake_seconds']:g} s)  "
            f"{mark[ok['intake']]}"
        )
        print(f"  it waits for:            {intake['waiting_for']}")
    else:
        print(f"  drop: {intake['state']} after {intake['polled_seconds']:.1f} s")
        if intake.get("error"):
            print("  " + intake["error"].strip().replace("\n", "\n  "))


# -- helpers ---------------------------------------------------------------------------------


def _lorainbox() -> list[str]:
    beside = Path(sys.executable).with_name("lorainbox")
    return [str(beside)] if beside.exists() else [sys.executable, "-m", "lorainbox.ui.cli"]


def _settle_seconds(args: argparse.Namespace) -> float:
    if args.settle_seconds is not None:
        return float(args.settle_seconds)
    from lorainbox.core.config import Settings

    return Settings().settle_seconds


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> dict[str, Any] | None:
    try:
        r = httpx.get(url, timeout=2)
        return r.json() if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None


def _wait_for(
    ready: Any, proc: subprocess.Popen[bytes], timeout: float, every: float = 0.1
) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if ready():
            return True
        time.sleep(every)
    return False


def _tree(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _cpu_seconds(proc: psutil.Process) -> float:
    """User + system time of the tree, reaped children included."""
    total = 0.0
    for p in _tree(proc):
        try:
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.NoSuchProcess:
            continue
    return total


def _tree_memory(proc: psutil.Process) -> dict[str, int]:
    rss = uss = n = 0
    for p in _tree(proc):
        try:
            info = p.memory_full_info()
        except psutil.NoSuchProcess:
            continue
        rss, uss, n = rss + info.rss, uss + info.uss, n + 1
    return {"rss": rss, "uss": uss, "processes": n}


def _machine() -> dict[str, Any]:
    cores = psutil.cpu_count()
    summary = f"{platform.system()} {platform.machine()}, {cores} cores, Python {sys.version[:6]}"
    return {"summary": summary, "cores": cores, "python": sys.version.split()[0]}


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _died(what: str, proc: subprocess.Popen[bytes], log_path: Path) -> str:
    code = proc.poll()
    tail = log_path.read_text()[-3000:] if log_path.exists() else ""
    return f"{what} (exit code {code}). The daemon's output:\n{tail}"


if __name__ == "__main__":
    sys.exit(main())
