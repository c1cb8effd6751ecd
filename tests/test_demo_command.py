"""``lorainbox demo``, the README's first command, end to end as a person runs it."""

from __future__ import annotations

from pathlib import Path

from tests.daemon_proc import lorainbox
from tests.fake_ollama import FakeOllama


def test_demo_trains_exports_registers_and_the_model_answers_its_fact(tmp_path: Path) -> None:
    with FakeOllama(tmp_path / "ollama") as ollama:
        done = lorainbox("demo", "--dir", tmp_path / "demo", columns=100, OLLAMA_HOST=ollama.url)
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
