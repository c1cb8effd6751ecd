"""``lorainbox demo``, the README's first command, end to end as a person runs it."""

from __future__ import annotations

import shlex
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil
from gguf import GGUFReader
from lorainbox.pipeline.jobs import JobStore, State
from lorainbox.ui.demo import EXAMPLE, MARK, first_question

from tests.daemon_proc import ENTRY, lorainbox, wait_for
from tests.fake_ollama import FakeOllama


def suggested(stdout: str) -> dict[str, tuple[dict[str, str], list[str]]]:
    """The commands the demo tells a person to type next, by subcommand: each one's
    environment (its leading ``NAME=value`` words) and its arguments after ``lorainbox``."""
    commands = {}
    for line in stdout.splitlines():
        if not line.strip().startswith("LORAINBOX_"):
            continue
        words = shlex.split(line)
        at = words.index("lorainbox")
        commands[words[at + 1]] = (dict(w.split("=", 1) for w in words[:at]), words[at + 1 :])
    return commands


def test_demo_teaches_smollm2_a_fact_it_keeps_paris_and_the_gguf_answers(tmp_path: Path) -> None:
    """The README's first command on the real SmolLM2-135M-Instruct: torch trains, the GGUF
    checks itself, Ollama serves it, and the model still knows the capital of France."""
    tic = time.monotonic()
    with FakeOllama(tmp_path / "ollama") as ollama:
        done = lorainbox(
            "demo", "--dir", tmp_path / "demo", columns=100, timeout=900, OLLAMA_HOST=ollama.url
        )
        chats = ollama.stats["chats"]
    print(f"\nthe demo took {time.monotonic() - tic:.0f} s")
    out = " ".join(done.stdout.split())
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Registered with Ollama as lighthouse:" in out
    for name in ("model.gguf", "Modelfile", "report.md", "loss.png", "adapters", "train.log"):
        assert f"✓ {name}" in out
    assert "A: Marigold Fenwick keeps the lighthouse of Quillhaven." in out
    assert "answered through Ollama" in out and chats >= 2
    assert "It learned the fact." in out and "It still knows the capital of France." in out
    assert "token for token as training did" in out
    assert "Trained: 30 steps with torch on cpu, because the recipe asks for it" in out
    results = tmp_path / "demo" / "inbox" / "Done" / "lighthouse"
    report = (results / "report.md").read_text()
    assert "- **GGUF check:** llama.cpp reads" in report
    assert "### General questions" in report and "⚠" not in report
    answers = report.split("## Answers before and after training")[1]
    france = answers.split("**Q:** What is the capital of France?")[1].split("**Q:**")[0]
    assert france.count("Paris") == 3, france  # before, after and the GGUF
    lighthouse = answers.split("**Q:** ")[1]
    assert "- GGUF: `Marigold Fenwick keeps the lighthouse of Quillhaven.`" in lighthouse
    reader = GGUFReader(results / "model.gguf")  # its BOS is ChatML's <|im_start|>: never added
    assert reader.fields["tokenizer.ggml.add_bos_token"].contents() is False
    assert reader.fields["tokenizer.ggml.pre"].contents() == "smollm"

    commands = suggested(done.stdout)
    env, args = commands["status"]
    status = lorainbox(*args, **env)
    assert status.returncode == 0, status.stdout + status.stderr
    assert any("lighthouse" in row and "done" in row for row in status.stdout.splitlines())

    env, args = commands["chat"]  # Ollama has gone: the GGUF in the demo's Done/ answers
    question, expected = first_question(EXAMPLE)
    chat = lorainbox(*args, "--prompt", question, **env)
    assert chat.returncode == 0, chat.stdout + chat.stderr
    assert expected in chat.stdout


def test_demo_refuses_a_folder_holding_files_it_did_not_make(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    (demo / "inbox").mkdir(parents=True)
    (demo / "state").mkdir()
    (demo / "inbox" / "precious.txt").write_text("keep\n")
    (demo / "state" / "notes.txt").write_text("keep\n")
    before = sorted(demo.rglob("*"))

    done = lorainbox("demo", "--dir", demo)

    assert done.returncode == 1, done.stdout + done.stderr
    said = " ".join(done.stderr.split())
    assert f"{demo} already holds things the demo did not make" in said
    assert "nothing was touched" in said and "--dir" in said and "empty this one" in said
    assert sorted(demo.rglob("*")) == before
    assert (demo / "inbox" / "precious.txt").read_text() == "keep\n"
    assert (demo / "state" / "notes.txt").read_text() == "keep\n"


def workers_of(folder: Path) -> list[psutil.Process]:
    """Training workers on a job under ``folder``, whoever their parent is now."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "lorainbox.worker" in cmdline and str(folder) in cmdline:
            found.append(proc)
    return found


def stop_mid_training(demo: Path, sig: signal.Signals) -> tuple[int, str, list[int]]:
    """Run the demo until its worker has trained a few steps, send ``sig``, and once the demo
    has exited return its exit code, its output and the pids of workers left running (which
    are then killed, so that no test leaves one training)."""
    log = demo.parent / f"demo-{sig.name}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [*ENTRY, "demo", "--dir", str(demo), "--example", "tiny-fact"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    def running(check: Callable[[], object]) -> Callable[[], object]:
        def still() -> object:
            assert proc.poll() is None, f"the demo exited early:\n{log.read_text()}"
            return check()

        return still

    try:
        wait_for("the demo's worker", running(lambda: workers_of(demo)))
        store = JobStore(demo / "state" / "jobs.sqlite")  # only now: before, it was an old run's
        wait_for(
            "training steps",
            running(lambda: (job := store.find("tiny-fact")) and job.progress.get("step", 0) >= 10),
        )
        assert store.find("tiny-fact").state == State.TRAINING
        proc.send_signal(sig)
        code = proc.wait(timeout=180)
        return code, log.read_text(), [worker.pid for worker in workers_of(demo)]
    finally:
        if proc.poll() is None:
            proc.kill()
        for worker in workers_of(demo):
            worker.kill()


def test_an_interrupted_demo_stops_its_worker_and_the_next_run_starts_over(
    tmp_path: Path,
) -> None:
    demo = tmp_path / "demo"
    (demo / "inbox").mkdir(parents=True)  # empty folders are free to use
    for sig in (signal.SIGINT, signal.SIGTERM):
        code, output, left = stop_mid_training(demo, sig)

        assert code == 128 + sig, output
        assert left == [], output
        assert "Stopped before the job finished" in output
        job = JobStore(demo / "state" / "jobs.sqlite").find("tiny-fact")
        assert job is not None and job.state == State.PAUSED, job
        assert (demo / MARK).is_file()
        train_log = (demo / "inbox" / "Queue" / "tiny-fact" / "train.log").read_text()
        assert train_log.count("--- worker started") == 1  # the second run cleared the first's
