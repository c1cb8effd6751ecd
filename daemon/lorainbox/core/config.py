"""Daemon settings: where the inbox and state live, and the knobs a person may turn.

Read from an optional TOML file (``--config`` or ``LORAINBOX_CONFIG``), then the environment.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import platformdirs
from pydantic import BaseModel, ConfigDict, Field

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_OLLAMA_HOST = "http://127.0.0.1:11434"


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inbox: Path = Field(default_factory=lambda: Path.home() / "LoRAInbox")
    state_dir: Path = Field(default_factory=lambda: default_state_dir())
    settle_seconds: float = 5.0
    """A drop is ready once nothing in it has changed for this long."""
    tick_seconds: float = 30.0
    """How often the scheduler re-reads the sensors when nothing else happens."""
    memory_fraction: float = 0.7
    """Memory budget when a recipe sets no ``max_gb``: this share of physical memory."""
    max_oom_retries: int = 2
    max_crash_retries: int = 3
    register_retry_max_seconds: float = 600.0
    ollama_host: str = DEFAULT_OLLAMA_HOST
    status_port: int = 8765
    """Loopback port of the status page; 0 turns it off."""
    sensors: str = "auto"
    """``auto`` picks the platform's sensors; a path to a JSON script feeds scripted readings."""

    @property
    def lock_path(self) -> Path:
        digest = hashlib.sha256(str(self.inbox.resolve()).encode()).hexdigest()[:12]
        return self.state_dir / f"daemon-{digest}.lock"

    @property
    def db_path(self) -> Path:
        return self.state_dir / "jobs.sqlite"

    @property
    def log_dir(self) -> Path:
        return log_dir_for(self.state_dir)


def default_state_dir() -> Path:
    return Path(platformdirs.user_state_dir("lorainbox", appauthor=False))


def log_dir_for(state_dir: Path, platform: str = sys.platform) -> Path:
    """~/Library/Logs/lorainbox on a Mac, where Console lists it, unless the state folder was
    moved (a test, the demo): then the logs stay beside the state, as elsewhere."""
    if platform == "darwin" and state_dir == default_state_dir():
        return Path.home() / "Library" / "Logs" / "lorainbox"
    return state_dir / "logs"


def load_settings(config: Path | None = None, **overrides: object) -> Settings:
    """Settings from the config file, then the environment, then explicit overrides."""
    data: dict[str, object] = {}
    path = config or (
        Path(os.environ["LORAINBOX_CONFIG"]) if "LORAINBOX_CONFIG" in os.environ else None
    )
    if path is not None:
        with open(path, "rb") as f:
            data.update(tomllib.load(f))
    env = {
        "inbox": "LORAINBOX_INBOX",
        "state_dir": "LORAINBOX_STATE_DIR",
        "ollama_host": "OLLAMA_HOST",
        "sensors": "LORAINBOX_SENSORS",
        "status_port": "LORAINBOX_STATUS_PORT",
    }
    for key, var in env.items():
        if os.environ.get(var):
            data[key] = os.environ[var]
    data.update({k: v for k, v in overrides.items() if v is not None})
    settings = Settings.model_validate(data)
    # Resolved once, here: FSEvents reports real paths, so a watcher on a symlinked inbox
    # would match none of its events against the link's path.
    settings.inbox = settings.inbox.expanduser().resolve()
    settings.state_dir = settings.state_dir.expanduser()
    return settings
