"""The inbox folder: its layout, and a watcher that says when a drop has settled.

A drop is ready once nothing in it has changed for ``settle_seconds`` and it holds no partial
downloads or copy temporaries. watchdog (FSEvents on macOS, inotify on Linux) tells us when
something changed: the inbox's top level, and the inside of each drop until it is handed over
(not Queue/, Done/ and Failed/, where training writes all day). A full rescan at start catches
what arrived while the daemon was down. Folders move with ``os.rename`` (atomic within one
file system) and never overwrite.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import ObservedWatch

from lorainbox.core.layout import is_partial

# watchdog's inotify backend warns when a short-lived folder (a checkpoint being written) is
# watched twice; it handles it, and the warning would only clutter the person's terminal.
warnings.filterwarnings("ignore", message="Callback with id", category=RuntimeWarning)

log = logging.getLogger(__name__)

AREAS = ("Queue", "Done", "Failed", "recipes")
IGNORED_NAMES = (".DS_Store", "Icon\r", ".localized")


def is_ignored(name: str) -> bool:
    return name in IGNORED_NAMES or name.startswith("._")


class InboxLayout:
    """``~/LoRAInbox`` and its areas: drops at the top, then Queue/, Done/, Failed/."""

    def __init__(self, root: Path):
        self.root = root

    @property
    def queue(self) -> Path:
        return self.root / "Queue"

    @property
    def done(self) -> Path:
        return self.root / "Done"

    @property
    def failed(self) -> Path:
        return self.root / "Failed"

    @property
    def recipes(self) -> Path:
        return self.root / "recipes"

    def create(self) -> None:
        for area in (self.root, self.queue, self.done, self.failed):
            area.mkdir(parents=True, exist_ok=True)

    def drop_candidates(self) -> list[Path]:
        """Top-level entries that could be drops (not our areas, not hidden files)."""
        if not self.root.is_dir():
            return []
        return sorted(
            (p for p in self.root.iterdir() if p.name not in AREAS and not p.name.startswith(".")),
            key=lambda p: _mtime(p),
        )

    def move(self, src: Path, area: Path, name: str | None = None) -> Path:
        """Move ``src`` into ``area`` under ``name``; a clash gets ``-2``, ``-3``... never overwrites."""
        area.mkdir(parents=True, exist_ok=True)
        base = name or src.name
        for n in range(1, 10_000):
            dest = area / (base if n == 1 else f"{base}-{n}")
            if dest.exists() or dest.is_symlink():
                continue
            try:
                os.rename(src, dest)  # fails rather than replace a folder that appeared meanwhile
            except FileExistsError:
                continue
            except OSError as e:
                if e.errno in (39, 66) or dest.exists():  # ENOTEMPTY (Linux, macOS)
                    continue
                raise
            return dest
        raise RuntimeError(f"no free name for {base} in {area}")


def _mtime(p: Path) -> float:
    try:
        return p.lstat().st_mtime
    except OSError:
        return 0.0


def signature(drop: Path) -> tuple[tuple[str, int, float], ...]:
    """Names, sizes and mtimes of everything in a drop: equal twice means nothing moved."""
    if not drop.is_dir() or drop.is_symlink():
        st = drop.lstat()
        return ((drop.name, st.st_size, st.st_mtime),)
    out = []
    for dirpath, dirnames, filenames in os.walk(drop):
        for fn in filenames + dirnames:
            p = Path(dirpath) / fn
            try:
                st = p.lstat()
            except OSError:
                continue
            out.append((str(p.relative_to(drop)), st.st_size, st.st_mtime))
    return tuple(sorted(out))


def partial_files(drop: Path) -> list[str]:
    if not drop.is_dir():
        return [drop.name] if is_partial(drop.name) else []
    return [
        str((Path(d) / f).relative_to(drop))
        for d, _, files in os.walk(drop)
        for f in files
        if is_partial(f)
    ]


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: InboxWatcher):
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        for raw in (event.src_path, getattr(event, "dest_path", "")):
            if raw:
                self.watcher.touched(Path(os.fsdecode(raw)))


class InboxWatcher:
    """Calls ``on_ready(path)`` once for each top-level drop after it settles."""

    def __init__(
        self,
        layout: InboxLayout,
        on_ready: Callable[[Path], None],
        *,
        settle_seconds: float = 5.0,
        poll_seconds: float = 0.25,
    ):
        self.layout = layout
        self.on_ready = on_ready
        self.settle_seconds = settle_seconds
        self.poll_seconds = poll_seconds
        self._pending: dict[str, tuple[float, tuple]] = {}
        self._inside: dict[str, ObservedWatch | None] = {}
        """A recursive watch inside each drop that is still settling, by name."""
        self._handler = _Handler(self)
        self._waiting_logged: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._observer = Observer()
        self._thread = threading.Thread(target=self._settle_loop, name="inbox-settle", daemon=True)

    def start(self) -> None:
        self.layout.create()
        self._observer.schedule(self._handler, str(self.layout.root), recursive=False)
        self._observer.start()
        self.rescan()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._observer.stop()
        self._observer.join(timeout=5)
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def rescan(self) -> None:
        for p in self.layout.drop_candidates():
            self.touched(p)

    @property
    def pending(self) -> list[str]:
        with self._lock:
            return sorted(self._pending)

    def touched(self, path: Path) -> None:
        try:
            rel = path.relative_to(self.layout.root)
        except ValueError:
            return
        if not rel.parts:
            return
        top = rel.parts[0]
        if top in AREAS or top.startswith("."):
            return
        with self._lock:
            self._pending[top] = (time.monotonic(), ())
        self._watch_inside(top)

    def _watch_inside(self, name: str) -> None:
        """Changes deep in a drop (a slow copy into a subfolder) keep it settling too.

        The observer's own lock is never taken under ours: its thread calls ``touched``."""
        path = self.layout.root / name
        with self._lock:
            if name in self._inside:
                return
            self._inside[name] = None
        watch = None
        if self._observer.is_alive() and path.is_dir() and not path.is_symlink():
            with contextlib.suppress(OSError):  # gone meanwhile: the settle loop will see
                watch = self._observer.schedule(self._handler, str(path), recursive=True)
        with self._lock:
            if watch is None:
                self._inside.pop(name, None)
            else:
                self._inside[name] = watch

    def _unwatch_inside(self, name: str) -> None:
        with self._lock:
            watch = self._inside.pop(name, None)
        if watch is not None:
            with contextlib.suppress(KeyError, OSError):
                self._observer.unschedule(watch)

    def _settle_loop(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            self.check()

    def check(self) -> None:
        """Hand over every drop that has been quiet long enough (public for tests)."""
        now = time.monotonic()
        with self._lock:
            due = {k: v for k, v in self._pending.items() if now - v[0] >= self.settle_seconds}
        for name, (_, last_sig) in due.items():
            path = self.layout.root / name
            if not path.exists() and not path.is_symlink():
                with self._lock:
                    self._pending.pop(name, None)
                self._unwatch_inside(name)
                continue
            sig = signature(path)
            partial = partial_files(path)
            if partial or sig != last_sig:
                if partial and name not in self._waiting_logged:
                    log.info("%s is still being copied (%s); waiting", name, ", ".join(partial[:3]))
                    self._waiting_logged.add(name)
                # Look again soon: a quiet drop only has to prove its signature holds still.
                recheck = time.monotonic() - self.settle_seconds + min(1.0, self.settle_seconds)
                with self._lock:
                    if self._pending.get(name) == due[name]:
                        self._pending[name] = (time.monotonic() if partial else recheck, sig)
                continue
            with self._lock:
                self._pending.pop(name, None)
            self._waiting_logged.discard(name)
            self._unwatch_inside(name)  # before it moves: a watch follows the folder
            try:
                self.on_ready(path)
            except Exception:
                log.exception("taking in %s failed", path)
