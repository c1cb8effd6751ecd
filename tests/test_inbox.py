"""The inbox watcher on a real folder with the real watchdog observer."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import pytest
from lorainbox.pipeline.watcher import InboxLayout, InboxWatcher, partial_files


class Collector:
    def __init__(self) -> None:
        self.ready: list[Path] = []
        self.event = threading.Event()

    def __call__(self, path: Path) -> None:
        self.ready.append(path)
        self.event.set()

    def wait(self, n: int, timeout: float = 10.0) -> list[Path]:
        deadline = time.monotonic() + timeout
        while len(self.ready) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.ready


@pytest.fixture
def watcher(tmp_path: Path):
    collector = Collector()
    w = InboxWatcher(
        InboxLayout(tmp_path / "inbox"), collector, settle_seconds=0.5, poll_seconds=0.05
    )
    w.collector = collector  # type: ignore[attr-defined]
    yield w
    w.stop()


def test_drop_is_ready_only_after_it_settles(watcher: InboxWatcher) -> None:
    watcher.start()
    drop = watcher.layout.root / "pirate-bot"
    drop.mkdir()
    for i in range(5):  # keeps changing for ~1 s
        (drop / f"part{i}.jsonl").write_text("{}\n")
        time.sleep(0.2)
    started = time.monotonic()
    ready = watcher.collector.wait(1)
    assert ready == [drop]
    assert time.monotonic() - started >= 0.3  # not before it had been quiet
    time.sleep(1.0)
    assert watcher.collector.ready == [drop]  # exactly once


def test_partial_downloads_keep_a_drop_waiting(watcher: InboxWatcher) -> None:
    watcher.start()
    drop = watcher.layout.root / "slow"
    drop.mkdir()
    (drop / "train.jsonl.crdownload").write_text("half")
    time.sleep(2.0)
    assert watcher.collector.ready == []
    assert "slow" in watcher.pending
    (drop / "train.jsonl.crdownload").rename(drop / "train.jsonl")
    assert watcher.collector.wait(1) == [drop]


def test_rescan_at_start_finds_existing_drops_but_not_areas(tmp_path: Path) -> None:
    layout = InboxLayout(tmp_path / "inbox")
    layout.create()
    (layout.root / "old-drop").mkdir()
    (layout.root / ".hidden").mkdir()
    (layout.queue / "queued").mkdir()
    collector = Collector()
    w = InboxWatcher(layout, collector, settle_seconds=0.2, poll_seconds=0.05)
    w.start()
    try:
        assert collector.wait(1) == [layout.root / "old-drop"]
        time.sleep(0.8)
        assert collector.ready == [layout.root / "old-drop"]
    finally:
        w.stop()


def test_move_never_overwrites(tmp_path: Path) -> None:
    layout = InboxLayout(tmp_path)
    layout.create()
    for i in range(3):
        d = tmp_path / "src" / str(i) / "bot"
        d.mkdir(parents=True)
        (d / "marker").write_text(str(i))
        layout.move(d, layout.done)
    names = sorted(p.name for p in layout.done.iterdir())
    assert names == ["bot", "bot-2", "bot-3"]
    assert (layout.done / "bot" / "marker").read_text() == "0"
    assert (layout.done / "bot-3" / "marker").read_text() == "2"


def test_partial_patterns(tmp_path: Path) -> None:
    (tmp_path / "a.part").write_text("")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "~$doc.docx").write_text("")
    (tmp_path / "ok.jsonl").write_text("")
    assert sorted(partial_files(tmp_path)) == ["a.part", "sub/~$doc.docx"]


def inotify_watches() -> int | None:
    """How many folders this process watches through inotify (Linux), else None."""
    fdinfo = Path("/proc/self/fdinfo")
    if not fdinfo.is_dir():
        return None
    count = 0
    for entry in fdinfo.iterdir():
        with contextlib.suppress(OSError):
            count += entry.read_text().count("inotify wd:")
    return count


def test_only_the_top_level_and_settling_drops_are_watched(watcher: InboxWatcher) -> None:
    """Training writes all day under Queue/ (checkpoints, logs): none of it is watched."""
    root = watcher.layout.root

    def watched() -> set[tuple[Path, bool]]:
        emitters = watcher._observer.emitters
        return {(Path(e.watch.path), e.watch.is_recursive) for e in emitters}

    watcher.start()
    checkpoints = watcher.layout.queue / "training-job" / ".lorainbox" / "checkpoints"
    for step in range(40):
        (checkpoints / f"step-{step:08d}").mkdir(parents=True)
    drop = root / "pirate-bot"
    (drop / "data").mkdir(parents=True)
    (drop / "data" / "train.jsonl").write_text("{}\n")
    deadline = time.monotonic() + 5
    while (drop, True) not in watched() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert watched() == {(root, False), (drop, True)}
    if (count := inotify_watches()) is not None:
        assert count <= 4  # the top level, the drop and its data/, not 40 checkpoints
    assert watcher.pending == ["pirate-bot"]
    assert watcher.collector.wait(1) == [drop]
    assert watched() == {(root, False)}  # handed over: its watch is gone
