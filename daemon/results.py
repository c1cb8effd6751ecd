"""The results folder a person opens: report.md, loss.png and a ready Modelfile.

Written when training and export finish (before registration, so the Modelfile is there while
Ollama is away) and again when the job is done, to add how it was registered.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from daemon.jobs import Job, JobStore
from daemon.recipe import Recipe
from daemon.worker import WORK_DIR

log = logging.getLogger("lorainbox.results")

REPORT = "report.md"
LOSS_PNG = "loss.png"
MODELFILE = "Modelfile"


def read_metrics(job_dir: Path) -> list[dict[str, Any]]:
    path = job_dir / WORK_DIR / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def loss_series(
    metrics: list[dict[str, Any]],
) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(step, train loss) and (step, valid loss), last value per step (a resume may repeat one)."""
    train: dict[int, float] = {}
    valid: dict[int, float] = {}
    for m in metrics:
        step = m.get("step")
        if step is None:
            continue
        if m.get("train_loss") is not None:
            train[int(step)] = float(m["train_loss"])
        if m.get("valid_loss") is not None:
            valid[int(step)] = float(m["valid_loss"])
    return sorted(train.items()), sorted(valid.items())


def plot_loss(job_dir: Path, title: str) -> Path | None:
    train, valid = loss_series(read_metrics(job_dir))
    if not train and not valid:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train, strict=True), label="train", color="#2b6cb0", linewidth=1.6)
    if valid:
        ax.plot(
            *zip(*valid, strict=True), label="valid", color="#dd6b20", marker="o", linewidth=1.6
        )
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"{title}: loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = job_dir / LOSS_PNG
    fig.savefig(out)
    plt.close(fig)
    return out


def write_modelfile(job_dir: Path, recipe: Recipe) -> Path | None:
    gguf = job_dir / "model.gguf"
    if not gguf.exists():
        return None
    from daemon.export.gguf import inspect_gguf, modelfile_text, stop_tokens
    from daemon.export.templates import ollama_template

    info = inspect_gguf(gguf)
    params = dict(recipe.ollama.parameters)
    if "stop" not in params and (stops := stop_tokens(info)):
        params["stop"] = stops
    template = recipe.ollama.template or ollama_template(info.chat_template)
    out = job_dir / MODELFILE
    out.write_text(modelfile_text(gguf.name, recipe.ollama.system, params, template))
    return out


def write_results(job: Job, recipe: Recipe, store: JobStore, *, final: bool = False) -> None:
    """Write what a person reads; a failure here is logged, never fails the job."""
    job_dir = job.folder
    try:
        if not final:
            write_modelfile(job_dir, recipe)
            plot_loss(job_dir, job.name)
        (job_dir / REPORT).write_text(report_text(job, recipe, store))
    except Exception:
        log.exception("could not write the results of job %d", job.id)


def report_text(job: Job, recipe: Recipe, store: JobStore) -> str:
    job = store.get(job.id)
    job_dir = job.folder
    lines = [f"# {job.name}\n"]
    lines += _summary(job, recipe)
    lines += _data_section(job_dir)
    lines += _memory_section(job)
    lines += _stage_times(store.history(job.id))
    lines += _loss_section(job_dir)
    extra = job_dir / WORK_DIR / "report-extra.md"
    if extra.exists():
        lines.append(extra.read_text())
    lines += ["## Recipe as resolved\n", "```json", recipe.model_dump_json(indent=2), "```\n"]
    return "\n".join(lines)


def _summary(job: Job, recipe: Recipe) -> list[str]:
    out = [f"- **State:** {job.state.value}", f"- **Base model:** `{recipe.base_model}`"]
    if trained := trained_text(job.result.get("trained", {})):
        out.append(f"- **Trained:** {trained}")
    reg = job.result.get("ollama")
    if reg:
        out.append(f"- **Ollama:** `{reg.get('latest')}` (also `{reg.get('version')}`)")
        out.append(f"- **Try it:** `ollama run {recipe.ollama_model}`")
    elif job.result.get("registered") is False:
        out.append(
            f"- **Ollama:** not registered ({job.result.get('ollama_error', 'not answering')}). "
            f"Once Ollama runs: `lorainbox register {job_dir_name(job)}/model.gguf "
            f"--name {recipe.ollama_model}` or `ollama create {recipe.ollama_model} -f Modelfile`"
        )
    if (job.folder / "model.gguf").exists():
        size = (job.folder / "model.gguf").stat().st_size / 1e6
        out.append(f"- **GGUF:** `model.gguf` ({size:.1f} MB, {recipe.export.outtype})")
    return [*out, ""]


def trained_text(result: dict[str, Any]) -> str:
    """ "1000 steps with torch on mps, layers compiled": how the worker trained, from its result."""
    if "steps" not in result or "trainer" not in result:
        return ""
    text = f"{result['steps']} steps with {result['trainer']} on {result.get('device', '?')}"
    return text + (", layers compiled" if result.get("compiled") else "")


def job_dir_name(job: Job) -> str:
    return str(job.folder)


def _data_section(job_dir: Path) -> list[str]:
    path = job_dir / WORK_DIR / "data-summary.json"
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    out = [
        "## Data\n",
        f"- kind: {data.get('kind')}",
        f"- train examples: {data.get('train_examples')}",
        f"- valid examples: {data.get('valid_examples')}",
    ]
    out += [f"- {k}: {v}" for k, v in (data.get("stats") or {}).items()]
    return [*out, ""]


def _memory_section(job: Job) -> list[str]:
    fp = job.result.get("footprint") or {}
    changes = fp.get("changes") or []
    out = ["## Memory\n"]
    if fp.get("budget_gb"):
        out.append(
            f"- budget: {fp['budget_gb']} GB; estimated peak: {fp.get('estimate_gb', '?')} GB"
        )
    peak = job.progress.get("peak_memory_gb")
    if peak is not None:
        out.append(f"- measured peak: {peak:.2f} GB")
    out += [f"- changed: {c}" for c in changes] or [
        "- the recipe's settings fitted; nothing changed"
    ]
    if job.oom_retries:
        out.append(f"- out-of-memory retries: {job.oom_retries}")
    return [*out, ""]


def _stage_times(history: list[tuple[str, float, str | None]]) -> list[str]:
    if not history:
        return []
    out = ["## Timeline\n", "| state | at | for | note |", "|---|---|---|---|"]
    for i, (state, at, detail) in enumerate(history):
        nxt = history[i + 1][1] if i + 1 < len(history) else None
        took = f"{nxt - at:.0f} s" if nxt else ""
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
        out.append(f"| {state} | {stamp} | {took} | {(detail or '').replace('|', '/')[:120]} |")
    return [*out, ""]


def _loss_section(job_dir: Path) -> list[str]:
    train, valid = loss_series(read_metrics(job_dir))
    if not train and not valid:
        return []
    valid_at = dict(valid)
    steps = sorted({s for s, _ in train} | set(valid_at))
    if len(steps) > 20:
        keep = {steps[round(i * (len(steps) - 1) / 19)] for i in range(20)}
        steps = [s for s in steps if s in keep]
    train_at = dict(train)
    out = ["## Loss\n", "![loss](loss.png)\n", "| step | train | valid |", "|---:|---:|---:|"]
    for s in steps:
        t = f"{train_at[s]:.4f}" if s in train_at else ""
        v = f"{valid_at[s]:.4f}" if s in valid_at else ""
        out.append(f"| {s} | {t} | {v} |")
    return [*out, ""]
