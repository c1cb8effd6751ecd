"""An inbox reached through a symlink (~/LoRAInbox -> an external disk, say) sees its drops.

macOS's FSEvents reports the real path of a change, never the link's; inotify reports the path
that was watched. The settings resolve the inbox once, so both agree with the watcher.
"""

from __future__ import annotations

import threading
from pathlib import Path

from lorainbox.core.config import load_settings
from lorainbox.pipeline.watcher import InboxLayout, InboxWatcher


def linked_inbox(tmp_path: Path) -> tuple[Path, Path]:
    real = tmp_path / "disk" / "LoRAInbox"
    real.mkdir(parents=True)
    link = tmp_path / "LoRAInbox"
    link.symlink_to(real)
    return real, link


def test_settings_resolve_a_symlinked_inbox(tmp_path: Path) -> None:
    real, link = linked_inbox(tmp_path)
    assert load_settings(inbox=link).inbox == real


def test_a_real_path_event_is_one_of_the_inbox(tmp_path: Path) -> None:
    """What FSEvents delivers for a drop copied through the link."""
    real, link = linked_inbox(tmp_path)
    watcher = InboxWatcher(InboxLayout(load_settings(inbox=link).inbox), lambda p: None)
    watcher.touched(real / "pirate-bot" / "train.jsonl")
    assert watcher.pending == ["pirate-bot"]


def test_the_real_watchdog_hands_over_a_drop_made_through_the_link(tmp_path: Path) -> None:
    real, link = linked_inbox(tmp_path)
    ready: list[Path] = []
    seen = threading.Event()

    def on_ready(path: Path) -> None:
        ready.append(path)
        seen.set()

    watcher = InboxWatcher(
        InboxLayout(load_settings(inbox=link).inbox),
        on_ready,
        settle_seconds=0.3,
        poll_seconds=0.05,
    )
    watcher.start()
    try:
        drop = link / "pirate-bot"
        drop.mkdir()
        (drop / "train.jsonl").write_text('{"text": "ahoy"}\n')
        assert seen.wait(10), watcher.pending
    finally:
        watcher.stop()
    assert ready == [real / "pirate-bot"]
