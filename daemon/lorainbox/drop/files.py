"""Reading the files of a drop without trusting them, and reporting what is wrong with them.

Files are read line by line with a size cap, so a huge or hostile file never fills memory. Every
problem names the file as the person sees it (relative to the drop, which moves between areas)
and says how to fix it; all of them are reported at once, up to :data:`MAX_PROBLEMS`.
"""

from __future__ import annotations

import codecs
import fnmatch
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from lorainbox.core.errors import DropError, Problem
from lorainbox.core.layout import ERROR_FILE, RECIPE_FILE, STATUS_FILE, is_partial

MAX_LINE_BYTES = 1 << 20
MAX_PROBLEMS = 20

_NEVER_DATA = (RECIPE_FILE, ERROR_FILE.lower(), STATUS_FILE, "readme*")


class Problems:
    """Problems found so far, capped so that one broken file cannot drown out the rest."""

    def __init__(self, limit: int = MAX_PROBLEMS):
        self.items: list[Problem] = []
        self.limit = limit

    @property
    def full(self) -> bool:
        return len(self.items) >= self.limit

    def add(self, what: str, where: str, fix: str) -> None:
        if not self.full:
            self.items.append(Problem(what, where, fix))

    def raise_if_any(self) -> None:
        if not self.items:
            return
        found = list(self.items)
        if self.full:
            found.append(
                Problem(
                    f"only the first {self.limit} problems are listed; there may be more",
                    "the data",
                    "fix these, then drop the folder again to see any others",
                )
            )
        raise DropError(found)


def is_data_name(name: str) -> bool:
    """Hidden files, Finder and Office droppings, partial downloads and our own files are not data."""
    if name.startswith(".") or name == "Icon\r":
        return False
    low = name.lower()
    return not is_partial(name) and not any(fnmatch.fnmatchcase(low, p) for p in _NEVER_DATA)


def entries(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if is_data_name(p.name))
    except OSError:
        return []


def data_files(folder: Path) -> list[Path]:
    return [p for p in entries(folder) if p.is_file()]


def rel_path(drop: Path, path: Path) -> str:
    """A path as the person sees it in their drop, valid wherever the drop moves."""
    try:
        return path.relative_to(drop).as_posix()
    except ValueError:
        return str(path)


def folder_where(drop: Path, folder: Path) -> str:
    return f"the drop folder ({drop.name})" if folder == drop else f"{rel_path(drop, folder)}/"


def resolved_inside(drop: Path, path: Path) -> tuple[Path, bool]:
    """Where ``path`` really leads, and whether that is inside the drop; a broken path is not."""
    try:
        real = path.resolve()
        return real, real.is_relative_to(drop.resolve())
    except (OSError, RuntimeError):
        return path, False


def contained(drop: Path, path: Path, problems: Problems, where: str | None = None) -> bool:
    """Data must live in the drop: it moves to Done/ or Failed/ whole, and links would not."""
    real, inside = resolved_inside(drop, path)
    if not inside:
        rel = rel_path(drop, path)
        linked = any(p.is_symlink() for p in [path, *path.parents] if drop in p.parents)
        problems.add(
            f"{rel} is a link to {real}, outside the drop"
            if linked
            else f"{rel} points outside the drop (to {real})",
            where or rel,
            "copy the data into the drop folder (links and paths out of it are not followed)",
        )
    return inside


def read_lines(path: Path, where: str, problems: Problems) -> Iterator[tuple[int, str | None]]:
    """(line number, text) for each line, read with a size cap; None for an unreadable line.

    A line over :data:`MAX_LINE_BYTES` is skipped without being held in memory. A UTF-8 byte
    order mark is accepted; other encodings are reported once, with the first bad line.
    """
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below, around a generator
    except OSError as e:
        problems.add(f"cannot read {where} ({e.strerror})", where, "check the file's permissions")
        return
    bad_encoding: list[tuple[int, str]] = []
    with f:
        if f.read(2) in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
            problems.add(
                f"{where} is UTF-16 text, not UTF-8",
                where,
                "save it as UTF-8 (in Excel: CSV UTF-8; in an editor: encoding UTF-8)",
            )
            return
        f.seek(0)
        for number in itertools.count(1):
            raw = f.readline(MAX_LINE_BYTES + 1)
            if not raw:
                break
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                size, raw = len(raw), b""
                size += _skip_line(f)
                problems.add(
                    f"line {number} is {size / 1e6:.1f} MB long; one line may hold at most "
                    f"{MAX_LINE_BYTES // (1 << 20)} MB",
                    f"{where}, line {number}",
                    "split it into several examples (one example per line); "
                    "a 2,048-token example is about 8 KB",
                )
                yield number, None
                continue
            if number == 1:
                raw = raw.removeprefix(codecs.BOM_UTF8)
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                column = len(raw[: e.start].decode("utf-8", "replace")) + 1
                bad_encoding.append((number, f"byte 0x{raw[e.start]:02X} at column {column}"))
                yield number, None
    if bad_encoding:
        number, detail = bad_encoding[0]
        more = f"; {len(bad_encoding)} lines have such bytes" if len(bad_encoding) > 1 else ""
        problems.add(
            f"line {number} is not UTF-8 text ({detail}){more}",
            f"{where}, line {number}",
            "save the file as UTF-8 (in TextEdit: Format > Make Plain Text, then save with "
            "encoding UTF-8; in Excel: CSV UTF-8)",
        )


def _skip_line(f: BinaryIO) -> int:
    skipped = 0
    while chunk := f.readline(64 * 1024):
        skipped += len(chunk)
        if chunk.endswith(b"\n"):
            break
    return skipped
