"""``lorainbox train PATH`` as a real process: one drop now, in the terminal, no daemon."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
from lorainbox.pipeline.jobs import JobStore

from tests.daemon_proc import ENTRY, lorainbox
from tests.drops import chat_lines, drop_with, fast_drop
from tests.fake_ollama import FakeOllama

TRAIN = [*ENTRY, "train"]


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "COLUMNS": "100", **extra}


def train(drop: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    return lorainbox("train", drop, columns=100, **extra)


def test_train_runs_a_drop_exports_it_and_registers_it(tmp_path: Path) -> None:
    drop = fast_drop(tmp_path, "quick", iters=12)
    with FakeOllama(tmp_path / "ollama") as ollama:
        done = train(drop, OLLAMA_HOST=ollama.url)
        names = [m["name"] for m in httpx.get(f"{ollama.url}/api/tags").json()["models"]]
    assert done.returncode == 0, done.stdout + done.stderr
    assert "quick:latest" in names
    assert f"Done. Results in {drop}" in done.stdout
    assert "Try it: `ollama run quick`" in done.stdout
    bars = [line for line in done.stdout.splitlines() if "12/12" in line]
    assert bars and "quick done" in bars[-1]  # the bar ends as the job does
    for name in ("model.gguf", "Modelfile", "report.md", "loss.png", "recipe.toml"):
        assert (drop / name).is_file(), name


def test_a_bad_recipe_is_refused_with_where_and_how_and_the_drop_is_kept(tmp_path: Path) -> None:
    drop = drop_with(
        tmp_path, "typo", 'extends = "tiny-demo"\n[lora]\nrnak = 4\n', {"train.jsonl": chat_lines()}
    )
    before = sorted(p.name for p in drop.iterdir())
    done = train(drop)
    assert done.returncode == 2
    assert "rnak" in done.stdout and "rank" in done.stdout and "recipe.toml" in done.stdout
    assert sorted(p.name for p in drop.iterdir()) == before


def test_a_recipe_problem_reads_plainly_and_keeps_its_brackets(tmp_path: Path) -> None:
    drop = drop_with(
        tmp_path,
        "typo",
        'extends = "tiny-demo"\n[train]\niter = 3\n',
        {"train.jsonl": chat_lines()},
    )
    done = train(drop)
    assert done.returncode == 2
    message = " ".join(done.stdout.split())
    assert "unknown key `iter` in [train]" in message
    assert "What:" in message and "Where:" in message and "How to fix:" in message
    assert f"run `lorainbox train {drop}` again" in message
    assert "**" not in message and "# " not in message and "retry NAME" not in message


def test_a_path_that_does_not_exist_is_said_so(tmp_path: Path) -> None:
    done = train(tmp_path / "nope")
    assert done.returncode == 1
    assert (
        "does not exist" in " ".join(done.stderr.split()) and "is not a folder" not in done.stderr
    )


def test_ctrl_c_pauses_at_a_checkpoint_and_the_same_command_resumes(tmp_path: Path) -> None:
    drop = fast_drop(tmp_path, "long", iters=80, save_every=1000)
    store = JobStore(Path(os.environ["LORAINBOX_STATE_DIR"]) / "jobs.sqlite")
    proc = subprocess.Popen(
        [*TRAIN, str(drop)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env()
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        jobs = store.list()
        if jobs and jobs[0].progress.get("step", 0) >= 4:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130, out  # interrupted: paused, not done
    paused = store.list()[0]
    assert paused.state == "paused" and paused.checkpoint_step
    assert f"Paused at step {paused.checkpoint_step}" in out
    done = train(drop)
    assert done.returncode == 0, done.stdout
    job = store.get(paused.id)
    assert job.state == "done"
    reports = (drop / ".lorainbox" / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in reports]
    assert steps == sorted(steps) and steps[-1] == 80  # resumed, never started over


def test_a_drop_in_the_inbox_is_left_to_the_daemon(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    drop = fast_drop(inbox, "queued-by-hand")
    done = train(drop, LORAINBOX_INBOX=str(inbox))
    assert done.returncode == 2
    message = " ".join(done.stdout.split())
    assert "is in the inbox" in message and "Move it out of the inbox" in message
    assert sorted(p.name for p in drop.iterdir()) == ["recipe.toml", "train.jsonl"]
