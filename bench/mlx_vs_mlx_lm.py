"""Our MLX trainer against mlx-lm's own ``mlx_lm lora``: same model, data and settings.

    .venv/bin/python bench/mlx_vs_mlx_lm.py [--iters 60] [--repeat 1]

Builds (once, into the lorainbox cache) a random LLaMA-shaped model bigger than the tests' one,
writes a few hundred chat examples of varied length, then runs, one after the other, mlx-lm's
CLI and our worker (``python -m lorainbox.worker.main``) as child processes. For each it prints the
training throughput in loss tokens per second (the tokens mlx-lm also counts: answer tokens,
as both mask the prompt), the child's peak RSS (psutil, polled), MLX's own peak allocation,
and the ratios ours / mlx-lm.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lorainbox.drop.recipe import Recipe  # noqa: E402
from lorainbox.models.base import cache_dir  # noqa: E402
from lorainbox.models.tinymodel import _CORPUS, build_tiny_model  # noqa: E402
from lorainbox.worker.main import JobSpec  # noqa: E402

SHAPE = {
    "hidden_size": 512,
    "num_layers": 4,
    "num_heads": 8,
    "num_kv_heads": 4,
    "intermediate_size": 1408,
}
MLX_LM_CHILD = """
import atexit, sys
import mlx.core as mx
atexit.register(lambda: print(f"MLX_PEAK_BYTES {mx.get_peak_memory()}", flush=True))
from mlx_lm.cli import main
sys.argv = ["mlx_lm", "lora", *sys.argv[1:]]
main()
"""
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_MLX_LM_REPORT = re.compile(r"^\s*(\d+)\s+([\d.]+) [▼▲]\s+([\d,]+)\s+([\d.]+)k\s*$")


@dataclass
class Result:
    name: str
    seconds: float = 0.0
    windows: list[tuple[int, float]] = field(default_factory=list)
    """(loss tokens, tokens per second) of each report window."""
    peak_rss_gb: float = 0.0
    mlx_peak_gb: float | None = None
    final_loss: float | None = None

    @property
    def tokens(self) -> int:
        return sum(n for n, _ in self.windows)

    @property
    def tokens_per_second(self) -> float:
        busy = sum(n / r for n, r in self.windows if r > 0)
        return self.tokens / busy if busy else 0.0


def bench_model() -> Path:
    out = cache_dir() / "models" / "bench-h512-l4"
    if not (out / "config.json").is_file():
        tmp = Path(tempfile.mkdtemp(dir=out.parent if out.parent.exists() else None))
        build_tiny_model(tmp, **SHAPE)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(out)
    return out


def write_data(folder: Path, n: int, seed: int = 0) -> Path:
    """Chat examples from 8 to ~320 words, in random order, as a person's data would be."""
    rng = np.random.default_rng(seed)
    words = _CORPUS.split()
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "train.jsonl", "w") as f:
        for _ in range(n):
            q = " ".join(rng.choice(words, int(rng.integers(4, 30))))
            a = " ".join(rng.choice(words, int(rng.lognormal(3.5, 0.9)) % 320 + 8))
            messages = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            f.write(json.dumps({"messages": messages}) + "\n")
    return folder


def watch_rss(proc: subprocess.Popen[str], result: Result) -> threading.Thread:
    def poll() -> None:
        try:
            p = psutil.Process(proc.pid)
            while proc.poll() is None:
                rss = sum(c.memory_info().rss for c in [p, *p.children(recursive=True)])
                result.peak_rss_gb = max(result.peak_rss_gb, rss / 1e9)
                time.sleep(0.05)
        except psutil.NoSuchProcess:
            pass

    t = threading.Thread(target=poll, daemon=True)
    t.start()
    return t


def run_child(cmd: list[str], result: Result, *, cwd: Path, stderr: Any) -> tuple[str, int]:
    """One arm as a child process, its RSS polled into ``result``: (stdout, exit code)."""
    tic = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=cwd)
    watcher = watch_rss(proc, result)
    out, _ = proc.communicate()
    watcher.join()
    result.seconds = time.perf_counter() - tic
    return out, proc.returncode


def run_mlx_lm(model: Path, data: Path, work: Path, a: argparse.Namespace) -> Result:
    config = work / "mlx_lm.yaml"
    config.write_text(f"lora_parameters:\n  rank: {a.rank}\n  scale: 20.0\n  dropout: 0.0\n")
    args = [
        "--model", str(model), "--train", "--data", str(data), "--iters", str(a.iters),
        "--batch-size", str(a.batch), "--num-layers", "-1", "--learning-rate", "1e-4",
        "--max-seq-length", str(a.seq), "--steps-per-report", str(a.report),
        "--steps-per-eval", "1000000", "--save-every", "1000000", "--mask-prompt",
        "--adapter-path", str(work / "mlx_lm_adapters"), "-c", str(config),
    ]  # fmt: skip
    result = Result("mlx_lm lora")
    out, code = run_child(
        [sys.executable, "-c", MLX_LM_CHILD, *args], result, cwd=work, stderr=subprocess.STDOUT
    )
    if code != 0:
        raise SystemExit(f"mlx_lm lora failed:\n{out[-3000:]}")
    previous = 0.0
    for line in _ANSI.sub("", out).splitlines():
        if m := _MLX_LM_REPORT.match(line):
            trained = float(m[4]) * 1000
            result.windows.append((int(trained - previous), float(m[3].replace(",", ""))))
            previous, result.final_loss = trained, float(m[2])
        elif line.startswith("MLX_PEAK_BYTES"):
            result.mlx_peak_gb = int(line.split()[1]) / 1e9
    return result


def run_ours(model: Path, data: Path, work: Path, a: argparse.Namespace) -> Result:
    job = work / "job"
    recipe = Recipe.model_validate(
        {
            "name": "bench",
            "base_model": str(model),
            "lora": {"rank": a.rank, "scale": 20.0, "num_layers": -1},
            "train": {
                "iters": a.iters,
                "batch_size": a.batch,
                "learning_rate": 1e-4,
                "max_seq_length": a.seq,
                "steps_per_report": a.report,
                "steps_per_eval": 1_000_000,
                "save_every": 1_000_000,
                "mask_prompt": True,
            },
            "export": {"gguf": False},
        }
    )
    JobSpec(job_id=1, recipe=recipe, train_file=data / "train.jsonl", memory_budget_gb=16).save(job)
    result = Result("lorainbox (ours)")
    with open(work / "worker.log", "w") as log:
        out, code = run_child(
            [sys.executable, "-m", "lorainbox.worker", str(job)], result, cwd=REPO, stderr=log
        )
    if code != 0:
        raise SystemExit(f"worker failed ({code}):\n{(work / 'worker.log').read_text()[-3000:]}")
    previous = 0
    for line in out.splitlines():
        msg = json.loads(line) if line.startswith("{") else {}
        if msg.get("type") == "progress" and "train_loss" in msg:
            result.windows.append((msg["trained_tokens"] - previous, msg["tokens_per_second"]))
            previous = msg["trained_tokens"]
            result.final_loss = msg["train_loss"]
            result.mlx_peak_gb = max(result.mlx_peak_gb or 0.0, msg["peak_memory_gb"])
    return result


def report(results: list[Result]) -> None:
    print(
        f"\n{'trainer':<18} {'tok/s':>8} {'tokens':>8} {'wall s':>7} {'RSS GB':>7} {'MLX GB':>7} {'loss':>6}"
    )
    for r in results:
        mlx = f"{r.mlx_peak_gb:.3f}" if r.mlx_peak_gb is not None else "-"
        print(
            f"{r.name:<18} {r.tokens_per_second:>8.0f} {r.tokens:>8} {r.seconds:>7.1f} "
            f"{r.peak_rss_gb:>7.3f} {mlx:>7} {r.final_loss or float('nan'):>6.3f}"
        )
    theirs = [r for r in results if r.name.startswith("mlx_lm")]
    ours = [r for r in results if not r.name.startswith("mlx_lm")]
    if theirs and ours:

        def mean(rs: list[Result], f) -> float:
            return sum(f(r) for r in rs) / len(rs)

        speed = mean(ours, lambda r: r.tokens_per_second) / mean(
            theirs, lambda r: r.tokens_per_second
        )
        rss = mean(ours, lambda r: r.peak_rss_gb) / mean(theirs, lambda r: r.peak_rss_gb)
        print(f"\nours / mlx-lm: tokens/s x{speed:.2f}, peak RSS x{rss:.2f}", end="")
        if all(r.mlx_peak_gb for r in results):
            mlx = mean(ours, lambda r: r.mlx_peak_gb) / mean(theirs, lambda r: r.mlx_peak_gb)
            print(f", MLX peak x{mlx:.2f}", end="")
        print()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--iters", type=int, default=40)
    p.add_argument("--examples", type=int, default=300)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--report", type=int, default=10)
    p.add_argument("--repeat", type=int, default=1, help="alternate the two this many times")
    a = p.parse_args()
    model = bench_model()
    results = []
    with tempfile.TemporaryDirectory(prefix="lorainbox-bench-") as tmp:
        data = write_data(Path(tmp) / "data", a.examples)
        print(f"model {model} ({SHAPE}), {a.examples} examples, batch {a.batch}, {a.iters} iters")
        for i in range(a.repeat):
            for runner in (run_mlx_lm, run_ours):
                work = Path(tmp) / f"{runner.__name__}-{i}"
                work.mkdir()
                r = runner(model, data, work, a)
                print(f"  {r.name}: {r.tokens_per_second:.0f} tok/s, {r.seconds:.1f} s", flush=True)
                results.append(r)
    report(results)


if __name__ == "__main__":
    main()
