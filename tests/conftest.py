"""Test-wide settings: every test gets its own state folder; nothing reaches a real Ollama."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def _isolated_environment(tmp_path_factory: pytest.TempPathFactory) -> None:
    base = tmp_path_factory.getbasetemp()
    os.environ.setdefault("LORAINBOX_CACHE_DIR", str(base / "model-cache"))
    os.environ["OLLAMA_HOST"] = "http://127.0.0.1:9"  # the discard port: refused at once
    os.environ["LORAINBOX_STATUS_PORT"] = "0"  # tests that want the status page start their own
    os.environ.pop("LORAINBOX_CONFIG", None)
    os.environ.pop("LORAINBOX_INBOX", None)
    os.environ.pop("LORAINBOX_SENSORS", None)


@pytest.fixture(autouse=True)
def _state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    state = tmp_path / "state"
    monkeypatch.setenv("LORAINBOX_STATE_DIR", str(state))
    return state
