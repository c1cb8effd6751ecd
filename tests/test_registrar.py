"""Registration fails only its own job: the daemon's registrar, its SQLite store and the fake
Ollama, with jobs that trained under an older LoRA Inbox (whose intake let their settings
through) waiting in ``registering`` beside a good one."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from lorainbox.core.config import load_settings
from lorainbox.core.layout import GGUF, MODELFILE, RESOLVED_RECIPE, WORK_DIR
from lorainbox.drop.recipe import Recipe
from lorainbox.pipeline.jobs import Job, State
from lorainbox.pipeline.service import Daemon

from tests.daemon_proc import lorainbox
from tests.drops import FACT, chat_lines
from tests.fake_ollama import FakeOllama

pytest_plugins = ["tests.fixtures_models"]


def _registering(daemon: Daemon, tiny_gguf: Path, name: str, **recipe: Any) -> Job:
    """A job as the supervisor leaves it: in Done/ with its GGUF, Modelfile, data and recipe."""
    folder = daemon.layout.done / name
    (folder / WORK_DIR / "data").mkdir(parents=True)
    shutil.copy(tiny_gguf, folder / GGUF)
    (folder / MODELFILE).write_text(f"FROM ./{GGUF}\n")
    (folder / WORK_DIR / "data" / "valid.jsonl").write_text(chat_lines(2))
    resolved = Recipe(name=name, base_model="lorainbox:tiny-llama", **recipe)
    (folder / WORK_DIR / RESOLVED_RECIPE).write_text(resolved.model_dump_json())
    job = daemon.store.add(daemon.layout.root, name, folder, model=resolved.ollama_model)
    return daemon.store.transition(job.id, State.REGISTERING, detail="exported")


def test_a_bad_registration_fails_its_job_and_the_good_one_registers(
    tmp_path: Path, tiny_gguf: Path
) -> None:
    with FakeOllama(tmp_path / "ollama") as ollama:
        settings = load_settings(None, inbox=tmp_path / "inbox", ollama_host=ollama.url)
        daemon = Daemon(settings, once=True)
        daemon.layout.create()
        jobs = {
            "weird-quantize": _registering(
                daemon, tiny_gguf, "weird-quantize", export={"quantize": "q3_weird"}
            ),
            "stop-string": _registering(
                daemon, tiny_gguf, "stop-string", ollama={"parameters": {"stop": "###"}}
            ),
            "good": _registering(
                daemon, tiny_gguf, "good", ollama={"parameters": {"temperature": 0.2}}
            ),
        }
        daemon.registrar.tick()  # one tick: every job ends, none is tried again
        after = {name: daemon.store.get(job.id) for name, job in jobs.items()}
        tags = ollama.names()

    assert daemon.store.list(daemon.inbox_key, (State.REGISTERING,)) == []
    good = after["good"]
    assert good.state == State.DONE and good.result["registered"] is True
    smoke = good.result["smoke_chat"]
    assert smoke["question"] == FACT[0]["messages"][0]["content"]
    assert smoke["expected"] == FACT[0]["messages"][1]["content"]
    assert isinstance(smoke["answer"], str)
    assert "good:latest" in tags

    for name, words in {
        "weird-quantize": ["cannot quantize to 'q3_weird'", "Q4_K_M"],
        "stop-string": [
            "Ollama registered stop-string:latest but cannot answer with it",
            'option "stop" must be of type array',
        ],
    }.items():
        job = after[name]
        assert job.state == State.FAILED, (name, job.state)
        folder = daemon.layout.failed / name
        assert job.folder == folder
        error = (folder / "ERROR.md").read_text()
        for word in [*words, "lorainbox register", "How to fix"]:
            assert word in error, (name, word, error)
        assert (folder / GGUF).is_file() and (folder / MODELFILE).is_file()

    shown = lorainbox("status", "good", "--inbox", settings.inbox)
    assert shown.returncode == 0, shown.stderr
    assert f"{smoke['question']} ->" in " ".join(shown.stdout.split())
