"""``lorainbox demo``, the README's first command, end to end as a person runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.fake_ollama import FakeOllama


def test_demo_trains_exports_registers_and_the_model_answers_its_fact(tmp_path: Path) -> None:
    with FakeOllama(tmp_path / "ollama") as ollama:
        env = {**os.environ, "OLLAMA_HOST": ollama.url, "COLUMNS": "100"}
        done = subprocess.run(
            [sys.executable, "-m", "daemon.cli", "demo", "--dir", str(tmp_path / "demo")],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )
        chats = ollama.stats["chats"]
    out = " ".join(done.stdout.split())
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Registered with Ollama as tiny-fact:" in out
    for name in ("model.gguf", "Modelfile", "report.md", "loss.png", "adapters", "train.log"):
        assert f"✓ {name}" in out
    assert "A: Marigold Fenwick keeps the lighthouse of Quillhaven." in out
    assert "answered through Ollama" in out and chats >= 1
    assert "It learned the fact." in out
    assert (tmp_path / "demo" / "inbox" / "Done" / "tiny-fact" / "model.gguf").is_file()
