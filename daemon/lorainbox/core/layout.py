"""The names of what a job folder holds, and of partial downloads, in one place.

A job folder (``Queue/NAME`` then ``Done/NAME`` or ``Failed/NAME``) holds the person's drop, the
results beside it, and the daemon's own bookkeeping under ``.lorainbox/``.
"""

from __future__ import annotations

import fnmatch

APP_NAME = "LoRA Inbox"

RECIPE_FILE = "recipe.toml"
GGUF = "model.gguf"
MODELFILE = "Modelfile"
REPORT = "report.md"
LOSS_PNG = "loss.png"
TRAIN_LOG = "train.log"
ERROR_FILE = "ERROR.md"
STATUS_FILE = "status.json"
ADAPTERS_DIR = "adapters"

WORK_DIR = ".lorainbox"
"""The daemon's own files inside a job folder; the names below live in it."""
SPEC_FILE = "job.json"
RESOLVED_RECIPE = "recipe.resolved.json"
METRICS_FILE = "metrics.jsonl"
TRAINED_MARKER = "trained.json"
SAMPLES_FILE = "samples.json"
KEYS_FILE = "keys.json"
CHECKPOINTS_DIR = "checkpoints"

PARTIAL_PATTERNS = ("*.part", "*.partial", "*.download", "*.crdownload", "*.tmp", "~$*", ".~lock.*")
"""Files a browser, a sync client or an office program is still writing."""


def is_partial(name: str) -> bool:
    """Whether ``name`` is a file still being written (case-insensitive, as macOS names are)."""
    low = name.lower()
    return any(fnmatch.fnmatchcase(low, p) for p in PARTIAL_PATTERNS)
