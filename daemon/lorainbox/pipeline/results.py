"""The results folder a person opens: report.md, loss.png and a ready Modelfile.

Written when training and export finish (before registration, so the Modelfile is there while
Ollama is away) and again when the job is done, to add how it was registered.
"""

from __future__ import annotations

import bisect
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tomli_w

from lorainbox.core.humanize import loss_text
from lorainbox.core.layout import GGUF, LOSS_PNG, METRICS_FILE, MODELFILE, REPORT, WORK_DIR
from lorainbox.drop.recipe import Recipe
from lorainbox.pipeline.jobs import Job, JobStore
from lorainbox.trainers.distributed import report_line
from lorainbox.trainers.samples import quote_answer

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)


def read_metrics(job_dir: Path) -> list[dict[str, Any]]:
    path = job_dir / WORK_DIR / METRICS_FILE
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


LOG_SPAN = 20
"""Losses spanning more than this factor are plotted on a log scale: on a linear one a fall
from 5 to 0.001 is a flat line at zero after the first steps."""

LOSS_ROWS = 20
MAX_VALID_ROWS = 50
"""Validation rows the loss table keeps at most, so a run that evaluates every few steps
still gives a table a person reads."""


def y_scale(losses: list[float]) -> str:
    """``"log"`` when the losses span more than :data:`LOG_SPAN` (and are all above zero,
    which a log axis needs), else ``"linear"``."""
    if not losses or min(losses) <= 0:
        return "linear"
    return "log" if max(losses) / min(losses) > LOG_SPAN else "linear"


def loss_figure(
    train: list[tuple[int, float]], valid: list[tuple[int, float]], title: str
) -> Figure:
    """The loss curves; a plain Figure, not pyplot, since results are written from the daemon's
    threads and pyplot's global state is not thread-safe."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=110)
    ax = fig.add_subplot()
    if train:
        ax.plot(*zip(*train, strict=True), label="train", color="#2b6cb0", linewidth=1.6)
    if valid:
        # Markers and a higher z-order keep a few validation points visible over the train line.
        ax.plot(
            *zip(*valid, strict=True),
            label="valid",
            color="#dd6b20",
            marker="o",
            markersize=4,
            linewidth=1.6,
            zorder=3,
        )
    scale = y_scale([loss for _, loss in [*train, *valid]])
    ax.set_yscale(scale)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (log scale)" if scale == "log" else "loss")
    ax.set_title(f"{title}: loss")
    ax.grid(alpha=0.3, which="both" if scale == "log" else "major")
    ax.legend()
    fig.tight_layout()
    return fig


def plot_loss(job_dir: Path, title: str) -> Path | None:
    """Write loss.png from the job's metrics; None when there are none yet."""
    train, valid = loss_series(read_metrics(job_dir))
    if not train and not valid:
        return None
    out = job_dir / LOSS_PNG
    loss_figure(train, valid, title).savefig(out)
    return out


def write_modelfile(job_dir: Path, recipe: Recipe) -> Path | None:
    gguf = job_dir / GGUF
    if not gguf.exists():
        return None
    from lorainbox.export.gguf import inspect_gguf, modelfile_text, stop_tokens
    from lorainbox.export.templates import default_system_prompt, ollama_template

    info = inspect_gguf(gguf)
    params = dict(recipe.ollama.parameters)
    if "stop" not in params and (stops := stop_tokens(info)):
        params["stop"] = stops
    template = recipe.ollama.template or ollama_template(info.chat_template)
    system = recipe.ollama.system
    if system is None:  # as registering sends it: the prompt training used
        system = default_system_prompt(info.chat_template)
    out = job_dir / MODELFILE
    out.write_text(modelfile_text(gguf.name, system, params, template))
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
    lines += smoke_section(job.result.get("smoke_chat"), job.model)
    extra = job_dir / WORK_DIR / "report-extra.md"
    if extra.exists():
        lines.append(extra.read_text())
    lines += [
        "## Recipe as resolved\n",
        "Every default filled in: saved as a recipe.toml, it trains the same again.\n",
        "```toml",
        resolved_toml(recipe).rstrip(),
        "```\n",
    ]
    return "\n".join(lines)


def resolved_toml(recipe: Recipe) -> str:
    """The recipe the job ran, as TOML a person can paste (not JSON with nulls): unset values
    left out, the model's name as used, ``extends`` already applied."""
    data = recipe.model_dump(mode="json", exclude_none=True, exclude={"extends"})
    data.setdefault("ollama", {})["model"] = recipe.ollama_model
    if recipe.export.quantize is None:  # unset would mean the default, q4_K_M
        data.setdefault("export", {})["quantize"] = "none"
    return tomli_w.dumps(data)


def _summary(job: Job, recipe: Recipe) -> list[str]:
    out = [f"- **State:** {job.state.value}", f"- **Base model:** `{recipe.base_model}`"]
    if trained := trained_text(job.result.get("trained", {})):
        out.append(f"- **Trained:** {trained}")
    if why := job.result.get("trained", {}).get("engine_reason"):
        out.append(f"- **Engine:** {job.result['trained']['trainer']}, because {why}")
    if spread := report_line(job.result.get("trained", {}).get("distributed")):
        out.append(spread)
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
    if (job.folder / GGUF).exists():
        size = (job.folder / GGUF).stat().st_size / 1e6
        out.append(f"- **GGUF:** `model.gguf` ({size:.1f} MB, {recipe.export.outtype})")
    if check := self_check_text((job.result.get("gguf_info") or {}).get("self_check")):
        out.append(f"- **GGUF check:** {check}")
    return [*out, ""]


def self_check_text(check: dict[str, Any] | None) -> str:
    """What the export's self-check found, in a line: tokens as in training, logits as close."""
    if not check:
        return ""
    text = (
        f"llama.cpp reads {check['examples']} of the drop's chats token for token as training did"
    )
    if check.get("max_logit_diff") is not None:
        same = "the same" if check.get("same_next_token") else "a different"
        text += (
            f"; next-token logits differ from the trained model's by at most "
            f"{check['max_logit_diff']} ({same} next token)"
        )
    return text


def trained_text(result: dict[str, Any]) -> str:
    """ "1000 steps with torch on mps, layers compiled": how the worker trained, from its result."""
    if "steps" not in result or "trainer" not in result:
        return ""
    text = f"{result['steps']} steps with {result['trainer']} on {result.get('device', '?')}"
    return text + (", layers compiled" if result.get("compiled") else "")


def job_dir_name(job: Job) -> str:
    return str(job.folder)


def smoke_section(smoke: dict[str, Any] | None, model: str | None) -> list[str]:
    """What the registered model answered in Ollama to one of the drop's questions."""
    if not smoke:
        return []
    out = ["## First chat in Ollama\n"]
    if "skipped" in smoke:
        return [*out, f"Not asked: {smoke['skipped']}.", ""]
    return [
        *out,
        f"Asked of `{model}` through Ollama once it was registered:\n",
        f"**Q:** {smoke['question']}\n",
        f"- expected: {quote_answer(smoke['expected'])}",
        f"- answer: {quote_answer(smoke['answer'])}",
        "",
    ]


STAT_LABELS = {
    "files": "files",
    "ignored": "files left out",
    "mean_chars": "average length (characters)",
    "max_chars": "longest (characters)",
    "longest": "longest example",
    "images": "images",
    "folders": "folders",
    "repeats": "most repeats of one image",
    "mean_caption_chars": "average caption (characters)",
    "min_size": "smallest image",
    "max_size": "largest image",
    "min_side": "shortest side (pixels)",
}
"""The data summary's figures in words, in reading order; ``format`` and ``examples`` repeat
the first line and are left out."""


def _data_section(job_dir: Path) -> list[str]:
    path = job_dir / WORK_DIR / "data-summary.json"
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    stats = data.get("stats") or {}
    out = [
        "## Data\n",
        f"- {data.get('kind')}: {data.get('train_examples')} examples to train on, "
        f"{data.get('valid_examples')} to validate with",
    ]
    out += [f"- {label}: {stats[key]}" for key, label in STAT_LABELS.items() if key in stats]
    known = {*STAT_LABELS, "format", "examples"}
    out += [f"- {key}: {value}" for key, value in stats.items() if key not in known]
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
    return ["## Loss\n", "![loss](loss.png)\n", *loss_table(train, valid), ""]


def loss_table(train: list[tuple[int, float]], valid: list[tuple[int, float]]) -> list[str]:
    """The loss table's lines: every step with a validation loss (up to :data:`MAX_VALID_ROWS`),
    then train-only steps spread evenly over the run to fill :data:`LOSS_ROWS` rows."""
    train_at, valid_at = dict(train), dict(valid)
    keep = _spread(sorted(valid_at), MAX_VALID_ROWS)
    train_only = [s for s in sorted(train_at) if s not in valid_at]
    keep |= _spread(train_only, max(LOSS_ROWS - len(keep), 0))
    out = ["| step | train | valid |", "|---:|---:|---:|"]
    for s in sorted(keep):
        t = loss_text(train_at[s], 4) if s in train_at else ""
        v = loss_text(valid_at[s], 4) if s in valid_at else ""
        out.append(f"| {s} | {t} | {v} |")
    return out


def _spread(steps: list[int], n: int) -> set[int]:
    """``n`` of the sorted ``steps``, those nearest to evenly spaced points from the first step
    to the last; all of them when there are no more than ``n``."""
    if len(steps) <= n:
        return set(steps)
    if n <= 1:
        return set(steps[:n])
    first, last = steps[0], steps[-1]
    picked = set()
    for i in range(n):
        target = first + i * (last - first) / (n - 1)
        j = bisect.bisect_left(steps, target)
        picked.add(min(steps[max(j - 1, 0) : j + 1], key=lambda s: abs(s - target)))
    return picked
