"""``lorainbox doctor`` as a real process: what it finds here, and what it says when it can't."""

from __future__ import annotations

import os
from pathlib import Path

from tests.daemon_proc import lorainbox
from tests.fake_ollama import FakeOllama


def doctor(**env: str) -> tuple[int, dict[str, str]]:
    """Exit code, and each row's mark and detail by its name."""
    done = lorainbox("doctor", timeout=300, columns=250, **env)
    rows = {}
    for line in done.stdout.splitlines():
        cells = [c.strip() for c in line.strip("│").split("│")]
        if len(cells) == 3 and cells[0] in ("✓", "!", "✗"):
            rows[cells[1]] = f"{cells[0]} {cells[2]}"
    return done.returncode, rows


def test_doctor_finds_the_trainers_the_converter_and_a_running_ollama(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    with FakeOllama(tmp_path / "models") as ollama:
        code, rows = doctor(OLLAMA_HOST=ollama.url, LORAINBOX_INBOX=str(inbox))
    assert code == 0, rows
    for what in ("Python", "MLX", "PyTorch", "transformers", "PEFT", "GGUF converter"):
        assert rows[what].startswith("✓"), (what, rows[what])
    assert rows["llama.cpp"] == "✓ installed"
    # trainer = "auto" on this CPU-only Linux box: torch, though MLX's CPU build is installed
    assert rows["Engine"].startswith("✓ torch for language models: no GPU"), rows["Engine"]
    assert rows["Ollama"].startswith("✓ version") and ollama.url in rows["Ollama"]
    log = Path(os.environ["LORAINBOX_STATE_DIR"]) / "logs" / "lorainbox.log"
    assert rows["Folders"] == f"✓ inbox {inbox}, daemon log {log}"
    assert rows["Daemon"].startswith("! not running")


def test_doctor_says_what_is_missing_and_how_to_fix_it(tmp_path: Path) -> None:
    code, rows = doctor(LORAINBOX_INBOX=str(tmp_path / "not-yet"))
    assert code == 0  # a missing Ollama or inbox is a caveat, not a failure
    assert rows["Ollama"].startswith("! not answering at http://127.0.0.1:9")
    assert "ollama serve" in rows["Ollama"]
    assert rows["Folders"].startswith("!") and "made when the daemon starts" in rows["Folders"]


def test_a_probe_that_breaks_is_a_failed_row_under_its_own_name(tmp_path: Path) -> None:
    code, rows = doctor(LORAINBOX_SENSORS=str(tmp_path / "missing.json"))
    assert code == 1
    assert rows["Sensors"].startswith("✗") and "missing.json" in rows["Sensors"]
    assert rows["PyTorch"].startswith("✓")  # the other rows still run


def test_unknown_idle_time_says_what_it_means_for_jobs(tmp_path: Path) -> None:
    """A headless box cannot tell idle time: jobs that wait for it would wait for good."""
    script = tmp_path / "sensors.json"
    script.write_text('[{"at": 0, "on_ac_power": true}]')
    _, rows = doctor(LORAINBOX_SENSORS=str(script))
    assert rows["Sensors"].startswith("!") and "idle: unknown" in rows["Sensors"]
    assert 'when = "now"' in rows["Sensors"] and "wait" in rows["Sensors"]
    script.write_text('[{"at": 0, "on_ac_power": true, "idle_seconds": 600}]')
    _, rows = doctor(LORAINBOX_SENSORS=str(script))
    assert rows["Sensors"].startswith("✓") and "when =" not in rows["Sensors"]
