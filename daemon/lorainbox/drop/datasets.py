"""The data in a drop: find it, check every example, and write the split the trainers read.

Language-model data is JSON Lines in mlx-lm's formats (chat ``messages``, ``prompt`` +
``completion``, ``text``); image data is a folder of images with ``.txt`` caption sidecars, a
``metadata.csv`` (``filename,prompt``), or kohya-style ``10_name/`` repeat folders. Files are read
line by line with a size cap, so a huge or hostile file never fills memory. Every problem names
the file (relative to the drop, which moves between areas) and the line, and says how to fix it;
all of them are reported at once, up to :data:`MAX_PROBLEMS`.
"""

from __future__ import annotations

import codecs
import csv
import difflib
import fnmatch
import itertools
import json
import random
import re
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal, cast

from PIL import Image

from lorainbox.core.atomic import replacing
from lorainbox.core.errors import DropError, Problem
from lorainbox.core.layout import ERROR_FILE, RECIPE_FILE, STATUS_FILE, is_partial
from lorainbox.drop.recipe import DataSpec, line_of

DataKind = Literal["chat", "completions", "text", "images"]
LLM_KINDS = ("chat", "completions", "text")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})
MAX_LINE_BYTES = 1 << 20
MAX_PROBLEMS = 20
MAX_CAPTION_BYTES = 64 * 1024
ROLES = ("system", "user", "assistant", "tool")
METADATA_FILE = "metadata.csv"
TRAIN_FILE, VALID_FILE, TEST_FILE = "train.jsonl", "valid.jsonl", "test.jsonl"
VALID_ALIASES = (VALID_FILE, "validation.jsonl", "val.jsonl")
IMAGES_FILE = "images.jsonl"

_NEVER_DATA = (RECIPE_FILE, ERROR_FILE.lower(), STATUS_FILE, "readme*")
_KOHYA_DIR = re.compile(r"(\d+)_(.+)")
_ROLE_HINTS = {
    "human": "user",
    "gpt": "assistant",
    "bot": "assistant",
    "ai": "assistant",
    "model": "assistant",
    "developer": "system",
    "function": "tool",
}
_SHAPES = {
    "chat": '{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}',
    "completions": '{"prompt": "...", "completion": "..."}',
    "text": '{"text": "..."}',
}
_ANY_SHAPE = f"{_SHAPES['chat']}, {_SHAPES['completions']} or {_SHAPES['text']}"


@dataclass(frozen=True)
class ImageItem:
    path: Path
    caption: str
    repeats: int = 1
    """How often an epoch shows the image (kohya's ``10_name`` folders)."""


@dataclass
class DataSummary:
    kind: DataKind
    train: list[Path]
    """Data files (images: the folders or ``metadata.csv``) given by the recipe or found."""
    valid: list[Path]
    train_examples: int
    """For images: images times their repeats, what one epoch sees."""
    valid_examples: int
    stats: dict[str, float | int | str] = field(default_factory=dict)
    items: list[ImageItem] = field(default_factory=list)


@dataclass
class _Jsonl:
    train: list[Path]
    valid: list[Path] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


@dataclass
class _Images:
    root: Path
    metadata: Path | None = None


class _Problems:
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


class _Bad(Exception):
    """One example that has the wrong shape: what is wrong with it and how to fix it."""

    def __init__(self, what: str, fix: str):
        super().__init__(what)
        self.what, self.fix = what, fix


# --- public API -----------------------------------------------------------------------------


def inspect_data(
    drop_dir: Path, spec: DataSpec, *, kind: Literal["llm", "diffusion"]
) -> DataSummary:
    """Find and check the drop's data; raise :class:`DropError` listing every problem found."""
    problems = _Problems()
    _check_format_fits(drop_dir, spec, kind, problems)
    source = _locate(drop_dir, spec, kind, problems)
    if source is None:
        problems.raise_if_any()
        raise AssertionError("no data source and no problem recorded")
    if isinstance(source, _Jsonl):
        summary = _inspect_jsonl(drop_dir, source, spec, problems)
    else:
        summary = _inspect_images(drop_dir, source, problems)
    problems.raise_if_any()
    return summary


def detect_kind(drop_dir: Path) -> str | None:
    """The kind of data in a drop without a recipe (to pick its default recipe); never raises."""
    for folder in (drop_dir, drop_dir / "data"):
        jsonl = [p for p in _data_files(folder) if p.suffix == ".jsonl"]
        if jsonl:
            first = next((p for p in jsonl if p.name == TRAIN_FILE), jsonl[0])
            return _sniff_kind(first) or "chat"
    for folder in (drop_dir, drop_dir / "data", drop_dir / "images"):
        if _find_images(folder) is not None:
            return "images"
    return None


def prepare_split(
    summary: DataSummary, out_dir: Path, *, valid_fraction: float, seed: int
) -> tuple[Path, Path | None]:
    """Write what the trainer reads into ``out_dir``; returns the train and valid files.

    Language-model data becomes normalised ``train.jsonl`` / ``valid.jsonl``; without a valid
    file a seeded share of the examples is held out, the same one every time. Images become
    ``images.jsonl`` (path, caption, repeats). Files are replaced atomically and stale ones of
    an earlier run removed, so running it again gives the same folder. Updates the summary's
    example counts to what was written.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    train_out, valid_out, images_out = (
        out_dir / TRAIN_FILE,
        out_dir / VALID_FILE,
        out_dir / IMAGES_FILE,
    )
    if summary.kind == "images":
        with replacing(images_out) as f:
            for item in summary.items:
                row = {"path": str(item.path.resolve()), "caption": item.caption}
                f.write(json.dumps({**row, "repeats": item.repeats}, ensure_ascii=False) + "\n")
        for stale in (train_out, valid_out):
            stale.unlink(missing_ok=True)
        return images_out, None

    images_out.unlink(missing_ok=True)
    if summary.valid:
        n_train = _write_normalised(summary.kind, summary.train, train_out)
        n_valid = _write_normalised(summary.kind, summary.valid, valid_out)
    else:
        total = summary.train_examples + summary.valid_examples
        held = set(random.Random(seed).sample(range(total), valid_count(total, valid_fraction)))
        n_train, n_valid = _write_split(summary.kind, summary.train, train_out, valid_out, held)
    summary.train_examples, summary.valid_examples = n_train, n_valid
    if n_valid == 0:
        valid_out.unlink(missing_ok=True)
        return train_out, None
    return train_out, valid_out


def valid_count(total: int, valid_fraction: float) -> int:
    """Examples held out for validation: at least one once there are two, never all."""
    if total < 2 or valid_fraction <= 0:
        return 0
    return min(max(1, round(total * valid_fraction)), total - 1)


# --- finding the data -----------------------------------------------------------------------


def _is_data_name(name: str) -> bool:
    """Hidden files, Finder and Office droppings, partial downloads and our own files are not data."""
    if name.startswith(".") or name == "Icon\r":
        return False
    low = name.lower()
    return not is_partial(name) and not any(fnmatch.fnmatchcase(low, p) for p in _NEVER_DATA)


def _entries(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if _is_data_name(p.name))
    except OSError:
        return []


def _data_files(folder: Path) -> list[Path]:
    return [p for p in _entries(folder) if p.is_file()]


def _rel(drop: Path, path: Path) -> str:
    """A path as the person sees it in their drop, valid wherever the drop moves."""
    try:
        return path.relative_to(drop).as_posix()
    except ValueError:
        return str(path)


def _folder_where(drop: Path, folder: Path) -> str:
    return f"the drop folder ({drop.name})" if folder == drop else f"{_rel(drop, folder)}/"


def _recipe_where(drop: Path, key: str, section: tuple[str, ...] = ("data",)) -> str:
    recipe = drop / RECIPE_FILE
    line = line_of(recipe, list(section), key) if recipe.is_file() else None
    label = f"[{'.'.join(section)}] {key}" if section else key
    return f"{RECIPE_FILE}, line {line}" if line else f"{RECIPE_FILE}, {label}"


def _contained(drop: Path, path: Path, problems: _Problems, where: str | None = None) -> bool:
    """Data must live in the drop: it moves to Done/ or Failed/ whole, and links would not."""
    try:
        real = path.resolve()
        inside = real.is_relative_to(drop.resolve())
    except (OSError, RuntimeError):
        real, inside = path, False
    if not inside:
        rel = _rel(drop, path)
        linked = any(p.is_symlink() for p in [path, *path.parents] if drop in p.parents)
        problems.add(
            f"{rel} is a link to {real}, outside the drop"
            if linked
            else f"{rel} points outside the drop (to {real})",
            where or rel,
            "copy the data into the drop folder (links and paths out of it are not followed)",
        )
    return inside


def _given_path(drop: Path, key: str, value: str, problems: _Problems) -> Path | None:
    """A path from ``[data]``, checked to exist and to stay inside the drop."""
    where = _recipe_where(drop, key)
    given = Path(value).expanduser()
    path = given if given.is_absolute() else drop / given
    try:
        real = path.resolve()
        inside = real.is_relative_to(drop.resolve())
    except (OSError, RuntimeError):
        real, inside = path, False
    if not inside:
        problems.add(
            f'[data] {key} = "{value}" points outside the drop (to {real})',
            where,
            f'put the data inside the drop folder and give its path relative to it, e.g. {key} = "{TRAIN_FILE if key == "train" else VALID_FILE}"',
        )
        return None
    if not path.exists():
        names = [_rel(drop, p) for p in drop.rglob("*") if p.is_file() and _is_data_name(p.name)]
        close = difflib.get_close_matches(given.as_posix(), names, n=1, cutoff=0.5)
        hint = f'did you mean "{close[0]}"? ' if close else ""
        problems.add(
            f'[data] {key} = "{value}": there is no such file or folder in the drop',
            where,
            f"{hint}give the path relative to the drop folder, or remove the line to let LoRA Inbox find the data",
        )
        return None
    return path


def _locate(drop: Path, spec: DataSpec, kind: str, problems: _Problems) -> _Jsonl | _Images | None:
    if kind == "diffusion" and spec.valid:
        problems.add(
            "[data] valid is for language-model data; image training has no validation set",
            _recipe_where(drop, "valid"),
            "remove the valid line from recipe.toml",
        )
    if spec.train:
        return _locate_given(drop, spec, kind, problems)
    if kind == "diffusion":
        for folder in (drop, drop / "data", drop / "images"):
            if folder != drop and not folder.is_dir():
                continue
            if folder != drop and not _contained(drop, folder, problems):
                return None
            if found := _find_images(folder):
                return found
        if any(p.suffix == ".jsonl" for p in _data_files(drop)):
            problems.add(
                "this drop holds JSON Lines (language-model data), but the recipe trains an image model",
                _recipe_where(drop, "kind", ()),
                'for a language model write extends = "chat-lora" (or kind = "llm"); '
                "for an image LoRA add images with .txt captions",
            )
        else:
            problems.add(
                "no images found in the drop",
                _folder_where(drop, drop),
                f"add images ({_suffix_list()}) with a .txt caption beside each (cat.png + cat.txt), "
                f"a {METADATA_FILE} with filename,prompt columns, or kohya folders like 10_mystyle/",
            )
        return None

    found = _find_jsonl(drop, drop, problems)
    data = drop / "data"
    if found is None and data.is_dir():
        if not _contained(drop, data, problems):
            return None
        found = _find_jsonl(drop, data, problems)
    if found is not None:
        _add_valid(drop, spec, found, problems)
        return found
    if any(_find_images(f) for f in (drop, data, drop / "images")):
        problems.add(
            "this drop holds images, but the recipe trains a language model",
            _recipe_where(drop, "kind", ()),
            'for an image LoRA write extends = "sd15-style" (or kind = "diffusion"); '
            f"for a language model add {TRAIN_FILE}",
        )
    else:
        problems.add(
            "no training data found in the drop",
            _folder_where(drop, drop),
            f"add a {TRAIN_FILE} with one example per line ({_ANY_SHAPE}), "
            f'or name the file in recipe.toml: [data] train = "my-data.jsonl"',
        )
    return None


def _locate_given(
    drop: Path, spec: DataSpec, kind: str, problems: _Problems
) -> _Jsonl | _Images | None:
    assert spec.train is not None
    path = _given_path(drop, "train", spec.train, problems)
    if path is None:
        return None
    if kind == "diffusion":
        if path.is_dir():
            meta = path / METADATA_FILE
            return _Images(path, meta if meta.is_file() else None)
        if path.suffix.lower() == ".csv":
            return _Images(path.parent, path)
        problems.add(
            f'[data] train = "{spec.train}" is a file, but image training needs a folder of images or a {METADATA_FILE}',
            _recipe_where(drop, "train"),
            f"give the folder holding the images and their .txt captions, or a {METADATA_FILE}",
        )
        return None
    if path.is_dir():
        found = _find_jsonl(drop, path, problems)
        if found is None:
            problems.add(
                f'the folder [data] train = "{spec.train}" holds no .jsonl files',
                _recipe_where(drop, "train"),
                f"put {TRAIN_FILE} (and optionally {VALID_FILE}) in it, or name a file instead",
            )
            return None
    else:
        found = _Jsonl([path])
    _add_valid(drop, spec, found, problems)
    return found


def _add_valid(drop: Path, spec: DataSpec, found: _Jsonl, problems: _Problems) -> None:
    if not spec.valid:
        return
    path = _given_path(drop, "valid", spec.valid, problems)
    if path is None:
        found.valid = []
    elif path.is_dir():
        found.valid = [p for p in _data_files(path) if p.suffix == ".jsonl"]
    else:
        found.valid = [path]


def _find_jsonl(drop: Path, folder: Path, problems: _Problems) -> _Jsonl | None:
    """mlx-lm's layout (train/valid/test.jsonl), else the one .jsonl file there is."""
    files = [p for p in _data_files(folder) if p.suffix == ".jsonl"]
    if not files:
        return None
    names = {p.name: p for p in files}
    valid = next((names[n] for n in VALID_ALIASES if n in names), None)
    held = {TRAIN_FILE, TEST_FILE, *VALID_ALIASES}
    others = [p for p in files if p.name not in held]
    train = names.get(TRAIN_FILE)
    if train is None and len(others) == 1:
        train = others[0]
    for p in [train, valid]:
        if p is not None and not _contained(drop, p, problems):
            return _Jsonl([])
    if train is not None:
        ignored = [_rel(drop, p) for p in files if p not in (train, valid)]
        return _Jsonl([train], [valid] if valid else [], ignored)
    where = _folder_where(drop, folder)
    if others:
        listed = ", ".join(p.name for p in others)
        problems.add(
            f"found several data files and none is named {TRAIN_FILE}: {listed}",
            where,
            f"rename the file to train on to {TRAIN_FILE} (and the held-out one to {VALID_FILE}), "
            f'or name it in recipe.toml: [data] train = "{others[0].name}"',
        )
    else:
        present = ", ".join(p.name for p in files)
        problems.add(
            f"found {present} but no {TRAIN_FILE}",
            where,
            f"add {TRAIN_FILE} with the training examples ({TEST_FILE} is never trained on)",
        )
    return _Jsonl([])


def _find_images(folder: Path) -> _Images | None:
    """Images with captions, a metadata.csv, or kohya repeat folders, directly in ``folder``."""
    if not folder.is_dir():
        return None
    files = _data_files(folder)
    if any(p.name == METADATA_FILE for p in files):
        return _Images(folder, folder / METADATA_FILE)
    if any(_is_image(p) for p in files) or _kohya_dirs(folder):
        return _Images(folder)
    return None


def _kohya_dirs(folder: Path) -> list[tuple[Path, int, str]]:
    found = []
    for p in _entries(folder):
        if (m := _KOHYA_DIR.fullmatch(p.name)) and p.is_dir():
            found.append((p, int(m[1]), m[2].strip()))
    return found


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _suffix_list() -> str:
    return ", ".join(s.lstrip(".") for s in sorted(IMAGE_SUFFIXES))


def _check_format_fits(drop: Path, spec: DataSpec, kind: str, problems: _Problems) -> None:
    llm_format = spec.format in LLM_KINDS
    if (kind == "llm" and spec.format == "images") or (kind == "diffusion" and llm_format):
        problems.add(
            f'[data] format = "{spec.format}" does not fit kind = "{kind}"',
            _recipe_where(drop, "format"),
            'use format = "auto", or '
            + ('"images" for an image model' if llm_format else '"chat", "completions" or "text"'),
        )


# --- reading lines --------------------------------------------------------------------------


def _read_lines(path: Path, where: str, problems: _Problems) -> Iterator[tuple[int, str | None]]:
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


# --- language-model data --------------------------------------------------------------------


class _LlmScan:
    """State across all JSONL files of a drop: their one format, counts and lengths."""

    def __init__(self, drop: Path, spec: DataSpec, problems: _Problems):
        self.drop, self.problems = drop, problems
        self.declared = spec.format if spec.format in LLM_KINDS else None
        self.kind: str | None = self.declared
        self.first_at = ""
        self.count = self.chars = self.max_chars = 0
        self.longest = ""

    def scan(self, path: Path) -> int:
        """Check every line of ``path``; returns its number of good examples."""
        rel = _rel(self.drop, path)
        if path.stat().st_size == 0:
            self.problems.add(f"{rel} is empty", rel, f"add examples, one per line: {_ANY_SHAPE}")
            return 0
        before = len(self.problems.items)
        examples, first_line = 0, True
        off: list[tuple[int, str]] = []
        for number, text in _read_lines(path, rel, self.problems):
            if self.problems.full:
                break
            if text is None or not text.strip():
                continue
            where = f"{rel}, line {number}"
            if first_line and text.strip() in ("[", "{"):
                self.problems.add(
                    f"{rel} looks like formatted JSON spread over many lines, not JSON Lines",
                    where,
                    "put each example on a line of its own, as one JSON object "
                    f"(e.g. `jq -c '.[]' data.json > {TRAIN_FILE}` for a JSON array)",
                )
                return 0
            first_line = False
            try:
                obj = _parse_line(text)
            except json.JSONDecodeError as e:
                what, fix = _json_problem(number, e)
                self.problems.add(what, where, fix)
                continue
            try:
                kind, chars = _classify(obj)
            except _Bad as bad:
                self.problems.add(f"line {number}: {bad.what}", where, bad.fix)
                continue
            if self.kind is None:
                self.kind, self.first_at = kind, where
            elif kind != self.kind:
                off.append((number, kind))
                continue
            examples += 1
            self.chars += chars
            if chars > self.max_chars:
                self.max_chars, self.longest = chars, where
        if off:
            self._report_mix(rel, off)
        if examples == 0 and len(self.problems.items) == before:
            self.problems.add(
                f"{rel} holds no examples (only blank lines)",
                rel,
                f"add examples, one per line: {_ANY_SHAPE}",
            )
        self.count += examples
        return examples

    def _report_mix(self, rel: str, off: list[tuple[int, str]]) -> None:
        number, kind = off[0]
        others = f" ({len(off)} lines in all)" if len(off) > 1 else ""
        assert self.kind is not None
        if self.declared:
            self.problems.add(
                f'line {number} is {kind} data, but the recipe says [data] format = "{self.declared}"{others}',
                f"{rel}, line {number}",
                f'set format = "{kind}" (or "auto") in recipe.toml, or write every example as '
                f"{_SHAPES[self.declared]}",
            )
        else:
            self.problems.add(
                f"line {number} is {kind} data, but the data starts as {self.kind} "
                f"({self.first_at}){others}; one drop holds one format",
                f"{rel}, line {number}",
                f"write every example as {self.kind}: {_SHAPES[self.kind]}",
            )


def _inspect_jsonl(drop: Path, found: _Jsonl, spec: DataSpec, problems: _Problems) -> DataSummary:
    scan = _LlmScan(drop, spec, problems)
    n_train = sum(scan.scan(p) for p in found.train if not problems.full)
    n_valid = sum(scan.scan(p) for p in found.valid if not problems.full)
    if not found.valid:
        n_valid = valid_count(n_train, spec.valid_fraction)
        n_train -= n_valid
    stats: dict[str, float | int | str] = {
        "format": scan.kind or "unknown",
        "examples": scan.count,
        "mean_chars": round(scan.chars / scan.count, 1) if scan.count else 0,
        "max_chars": scan.max_chars,
        "longest": scan.longest,
        "files": ", ".join(_rel(drop, p) for p in [*found.train, *found.valid]),
    }
    if found.ignored:
        stats["ignored"] = ", ".join(found.ignored)
    kind = cast(DataKind, scan.kind or "chat")
    return DataSummary(kind, list(found.train), list(found.valid), n_train, n_valid, stats)


def _parse_line(text: str) -> Any:
    """One JSON Lines line without its ending, so an error's column is within this line:
    json counts the newline as a line of its own and a line cut short would read "line 2 column 1".
    """
    return json.loads(text.rstrip("\r\n"))


def _json_problem(number: int, e: json.JSONDecodeError) -> tuple[str, str]:
    """What is wrong with a line that is not JSON, and how to fix it; a line cut short says so,
    since json's "Expecting ',' delimiter" at its end does not tell why."""
    reason = f"{e.msg.removesuffix(' at')} (column {e.colno})"  # "Unterminated string starting at"
    if not e.doc[e.pos :].strip() or e.msg.startswith("Unterminated string"):
        what = f"line {number} ends before its JSON object is complete: {reason}"
        fix = (
            f"line {number} looks cut off: finish the example on that line and close every "
            "quote, ] and }; keep each example on a single line"
        )
        return what, fix
    what = f"line {number} is not valid JSON: {reason}"
    fix = (
        f"make line {number} one complete JSON object; check the quotes and commas "
        f"near column {e.colno}, and keep each example on a single line"
    )
    return what, fix


def _classify(obj: Any) -> tuple[str, int]:
    """The format of one example (mlx-lm's order of checks) and its length in characters."""
    if not isinstance(obj, dict):
        raise _Bad(
            f"the example is a JSON {_json_type(obj)}, not an object",
            f"write each example as one object on its own line: {_ANY_SHAPE}",
        )
    if "prompt" in obj and "completion" in obj:
        for key in ("prompt", "completion"):
            _need_string(obj, key)
        if not obj["completion"].strip():
            raise _Bad('"completion" is empty', "write the answer the model should learn")
        _check_tools(obj)
        return "completions", len(obj["prompt"]) + len(obj["completion"])
    if "messages" in obj:
        return "chat", _check_chat(obj)
    if "text" in obj:
        _need_string(obj, "text")
        if not obj["text"].strip():
            raise _Bad('"text" is empty', "write the text to learn, or remove the line")
        return "text", len(obj["text"])
    raise _Bad(*_unknown_shape(obj))


def _unknown_shape(obj: dict[str, Any]) -> tuple[str, str]:
    keys = set(obj)
    if "conversations" in keys:
        return (
            'the example has "conversations" (ShareGPT style) instead of "messages"',
            'rename "conversations" to "messages", "from" to "role" (human -> user, '
            'gpt -> assistant) and "value" to "content"',
        )
    if {"instruction", "output"} <= keys:
        return (
            'the example has "instruction" and "output" (Alpaca style)',
            'write {"prompt": instruction (plus input, if any), "completion": output}',
        )
    if "prompt" in keys or "completion" in keys:
        have, lack = ("prompt", "completion") if "prompt" in keys else ("completion", "prompt")
        return (
            f'the example has "{have}" but no "{lack}"',
            f'add "{lack}", or write {_SHAPES["text"]} for plain text',
        )
    shown = ", ".join(f'"{k}"' for k in sorted(keys)[:6]) or "no keys"
    return (
        f'the example has {shown}, but none of "messages", "prompt" + "completion" or "text"',
        f"write each example as {_ANY_SHAPE}",
    )


def _check_chat(obj: dict[str, Any]) -> int:
    messages = obj["messages"]
    shape = 'write "messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]'
    if not isinstance(messages, list):
        raise _Bad(f'"messages" is a {_json_type(messages)}, not a list', shape)
    if not messages:
        raise _Bad('"messages" is an empty list', shape)
    chars, roles, answered = 0, set(), False
    for i, m in enumerate(messages, 1):
        if not isinstance(m, dict):
            raise _Bad(
                f"message {i} is a {_json_type(m)}, not an object",
                'write each message as {"role": "...", "content": "..."}',
            )
        role = m.get("role")
        if role is None:
            raise _Bad(
                f'message {i} has no "role"', 'add "role": "system", "user", "assistant" or "tool"'
            )
        if role not in ROLES:
            hint = _ROLE_HINTS.get(str(role).lower())
            raise _Bad(
                f"message {i} has the role {json.dumps(role)}, which chat templates do not know",
                (f'write "{hint}" instead; ' if hint else "")
                + "the roles are system, user, assistant and tool",
            )
        content, calls = m.get("content"), m.get("tool_calls")
        if content is None and not (role == "assistant" and calls):
            raise _Bad(f'message {i} ({role}) has no "content"', 'add "content": "the text"')
        if content is not None and not isinstance(content, str):
            raise _Bad(
                f"message {i} ({role}) has content that is a {_json_type(content)}, not a string",
                "write the content as one string (join the text parts; images are not supported)",
            )
        chars += len(content or "")
        roles.add(role)
        answered = answered or (role == "assistant" and (bool((content or "").strip()) or calls))
    if "assistant" not in roles:
        raise _Bad(
            'no message has the role "assistant"',
            'add the reply the model should learn: {"role": "assistant", "content": "..."}',
        )
    if not answered:
        raise _Bad("every assistant message is empty", "write the replies the model should learn")
    _check_tools(obj)
    return chars


def _check_tools(obj: dict[str, Any]) -> None:
    tools = obj.get("tools")
    if tools is not None and not (
        isinstance(tools, list) and all(isinstance(t, dict) for t in tools)
    ):
        raise _Bad(
            '"tools" is not a list of objects',
            'give "tools" as a list of function definitions ({"type": "function", ...}), or leave it out',
        )


def _need_string(obj: dict[str, Any], key: str) -> None:
    if not isinstance(obj[key], str):
        raise _Bad(
            f'"{key}" is a {_json_type(obj[key])}, not a string',
            f'write "{key}" as text in quotes',
        )


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "list", str: "string", bool: "true/false", type(None): "null"}
    return names.get(type(value), "number")


def _sniff_kind(path: Path) -> str | None:
    """The format of the first readable example among the first lines, without judging it."""
    quiet = _Problems()
    for _, text in itertools.islice(_read_lines(path, path.name, quiet), 100):
        try:
            obj = json.loads(text) if text and text.strip() else None
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            if "prompt" in obj and "completion" in obj:
                return "completions"
            for key, kind in (("messages", "chat"), ("text", "text")):
                if key in obj:
                    return kind
    return None


def _normalised(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    """Only the keys the trainers read, so stray fields never reach a chat template."""
    keys = {"chat": ("messages",), "completions": ("prompt", "completion"), "text": ("text",)}
    out = {k: obj[k] for k in keys[kind]}
    if kind != "text" and obj.get("tools") is not None:
        out["tools"] = obj["tools"]
    return out


def _records(kind: str, files: Iterable[Path]) -> Iterator[str]:
    """Normalised lines of already checked files; anything that changed since is an error."""
    for path in files:
        problems = _Problems()
        for number, text in _read_lines(path, path.name, problems):
            if text is None or not text.strip():
                continue
            try:
                yield json.dumps(_normalised(kind, json.loads(text)), ensure_ascii=False)
            except (json.JSONDecodeError, KeyError, TypeError):
                problems.add(
                    f"line {number} changed after the data was checked",
                    f"{path.name}, line {number}",
                    "leave the drop alone while it is queued; retry it with `lorainbox retry NAME`",
                )
                break
        problems.raise_if_any()


def _write_normalised(kind: str, files: list[Path], out: Path) -> int:
    count = 0
    with replacing(out) as f:
        for line in _records(kind, files):
            f.write(line + "\n")
            count += 1
    return count


def _write_split(
    kind: str, files: list[Path], train_out: Path, valid_out: Path, held: set[int]
) -> tuple[int, int]:
    counts = [0, 0]
    with ExitStack() as stack:
        outs = [
            stack.enter_context(replacing(train_out)),
            stack.enter_context(replacing(valid_out)),
        ]
        for index, line in enumerate(_records(kind, files)):
            side = int(index in held)
            outs[side].write(line + "\n")
            counts[side] += 1
    return counts[0], counts[1]


# --- images ---------------------------------------------------------------------------------


def _inspect_images(drop: Path, found: _Images, problems: _Problems) -> DataSummary:
    sizes: dict[Path, tuple[int, int]] = {}
    if found.metadata is not None:
        items = _metadata_items(drop, found.metadata, problems, sizes)
        sources = [found.metadata]
        folders = ""
    else:
        kohya = _kohya_dirs(found.root)
        items = _folder_items(drop, found.root, 1, None, problems, sizes)
        for folder, repeats, name in kohya:
            if not _contained(drop, folder, problems):
                continue
            if repeats < 1:
                problems.add(
                    f"the folder {folder.name}/ repeats its images 0 times",
                    f"{_rel(drop, folder)}/",
                    f"rename it to 1_{name} (the number says how often each image is shown)",
                )
                continue
            items += _folder_items(drop, folder, repeats, name, problems, sizes)
        sources = [found.root, *(f for f, _, _ in kohya)]
        folders = ", ".join(f"{f.name} ({r}x)" for f, r, _ in kohya)
    if not items and not problems.items:
        problems.add(
            "no images with captions found",
            _folder_where(drop, found.root),
            f"add images ({_suffix_list()}) with a .txt caption beside each",
        )
    examples = sum(i.repeats for i in items)
    stats: dict[str, float | int | str] = {
        "format": "images",
        "images": len(items),
        "examples": examples,
        "repeats": max((i.repeats for i in items), default=0),
        "mean_caption_chars": round(sum(len(i.caption) for i in items) / len(items), 1)
        if items
        else 0,
    }
    if sizes:
        small = min(sizes.values(), key=lambda s: s[0] * s[1])
        large = max(sizes.values(), key=lambda s: s[0] * s[1])
        stats |= {"min_size": f"{small[0]}x{small[1]}", "max_size": f"{large[0]}x{large[1]}"}
        stats["min_side"] = min(min(s) for s in sizes.values())
    if folders:
        stats["folders"] = folders
    return DataSummary("images", sources, [], examples, 0, stats, items)


def _folder_items(
    drop: Path,
    folder: Path,
    repeats: int,
    name: str | None,
    problems: _Problems,
    sizes: dict[Path, tuple[int, int]],
) -> list[ImageItem]:
    """Images of one folder with their ``.txt`` sidecars; a kohya folder's name is the fallback caption."""
    files = _data_files(folder)
    images = [p for p in files if _is_image(p)]
    captions = {p.stem: p for p in files if p.suffix.lower() == ".txt"}
    where = _folder_where(drop, folder)
    if not images:
        if name is not None:
            problems.add(
                f"the folder {folder.name}/ holds no images",
                where,
                f"add images ({_suffix_list()}) to it, or remove it",
            )
        return []
    stems = {p.stem for p in images}
    for stem, txt in captions.items():
        if stem not in stems:
            problems.add(
                f"the caption {txt.name} has no image beside it",
                _rel(drop, txt),
                f"add the image ({stem}.png or .jpg) next to it, or remove the .txt",
            )
    if not captions and name is None:
        problems.add(
            f"the {len(images)} images in {where} have no captions",
            where,
            f"add a .txt with the same name beside each image ({images[0].stem}.txt for "
            f"{images[0].name}), a {METADATA_FILE} with filename,prompt columns, or put them in "
            "a folder like 10_mystyle/ to caption them all with its name",
        )
        return []
    items = []
    for image in images:
        if problems.full:
            break
        caption = name or ""
        if captions:
            txt = captions.get(image.stem)
            if txt is None:
                problems.add(
                    f"the image {image.name} has no caption",
                    _rel(drop, image),
                    f"add {image.stem}.txt beside it with a caption, or remove the image",
                )
                continue
            caption = _read_caption(drop, txt, problems)
        readable = _contained(drop, image, problems) and _check_image(drop, image, problems, sizes)
        if readable and caption:
            items.append(ImageItem(image, caption, repeats))
    return items


def _read_caption(drop: Path, txt: Path, problems: _Problems) -> str:
    rel = _rel(drop, txt)
    if not _contained(drop, txt, problems):
        return ""
    if txt.stat().st_size > MAX_CAPTION_BYTES:
        problems.add(
            f"the caption {txt.name} is {txt.stat().st_size // 1024} KB long",
            rel,
            "write a sentence or two; the text encoder reads only the first 77 tokens",
        )
        return ""
    lines = [t for _, t in _read_lines(txt, rel, problems)]
    if any(t is None for t in lines):
        return ""
    caption = " ".join(" ".join(t or "" for t in lines).split())
    if not caption:
        problems.add(
            f"the caption {txt.name} is empty",
            rel,
            "write a short description of the image in it (e.g. `a watercolour of a fox`)",
        )
    return caption


def _check_image(
    drop: Path, path: Path, problems: _Problems, sizes: dict[Path, tuple[int, int]]
) -> bool:
    """Decode the image for real: ``verify`` catches a broken structure, ``load`` cut-off pixels."""
    try:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            size = im.size
            im.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
            im.load()
    except Image.DecompressionBombError:
        problems.add(
            f"the image {path.name} is too large to train on safely",
            _rel(drop, path),
            "scale it down (about 1024 pixels on the long side is plenty)",
        )
        return False
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        problems.add(
            f"the image {path.name} cannot be read ({e})",
            _rel(drop, path),
            "open it and export it again as PNG or JPEG, or remove it",
        )
        return False
    sizes[path] = size
    return True


def _metadata_items(
    drop: Path, meta: Path, problems: _Problems, sizes: dict[Path, tuple[int, int]]
) -> list[ImageItem]:
    """Rows of ``filename,prompt`` (or diffusers' ``file_name,text``), relative to the CSV's folder."""
    rel = _rel(drop, meta)
    if not _contained(drop, meta, problems):
        return []
    lines = (text if text is not None else "\n" for _, text in _read_lines(meta, rel, problems))
    header_line = next(lines, None)
    if header_line is None:
        problems.add(
            f"{rel} is empty", rel, "write a header line `filename,prompt`, then one row per image"
        )
        return []
    delimiter = ";" if header_line.count(";") > header_line.count(",") else ","
    reader = csv.reader(itertools.chain([header_line], lines), delimiter=delimiter)
    header = [h.strip().lower() for h in next(reader)]
    name_col = next((header.index(h) for h in ("filename", "file_name") if h in header), None)
    text_col = next((header.index(h) for h in ("prompt", "text", "caption") if h in header), None)
    if name_col is None or text_col is None:
        looks_like_row = bool(header) and Path(header[0]).suffix.lower() in IMAGE_SUFFIXES
        problems.add(
            f"{rel} has no header row"
            if looks_like_row
            else f"{rel} needs the columns filename and prompt; its header has: {', '.join(header)}",
            f"{rel}, line 1",
            "make the first line `filename,prompt` (diffusers' `file_name,text` works too)",
        )
        return []
    items, named = [], set()
    try:
        for row in reader:
            if problems.full:
                break
            if not any(cell.strip() for cell in row):
                continue
            name = row[name_col].strip() if name_col < len(row) else ""
            prompt = " ".join(row[text_col].split()) if text_col < len(row) else ""
            named.add((meta.parent / name).resolve())
            where = f"{rel}, line {reader.line_num}"
            if item := _metadata_row(drop, meta, name, prompt, where, problems, sizes):
                items.append(item)
    except csv.Error as e:
        problems.add(
            f"{rel} cannot be read as CSV ({e})",
            f"{rel}, line {reader.line_num}",
            "put each row on one line: filename,prompt; quote prompts that hold commas",
        )
    for image in _data_files(meta.parent):
        if _is_image(image) and image.resolve() not in named and not problems.full:
            problems.add(
                f"the image {image.name} is not listed in {meta.name}",
                _rel(drop, image),
                f"add a row `{image.name},<caption>` to {meta.name}, or move the image out",
            )
    return items


def _metadata_row(
    drop: Path,
    meta: Path,
    name: str,
    prompt: str,
    where: str,
    problems: _Problems,
    sizes: dict[Path, tuple[int, int]],
) -> ImageItem | None:
    if not name:
        problems.add("the row names no file", where, "write the image's file name first")
        return None
    path = meta.parent / name
    if not _contained(drop, path, problems, where):
        return None
    if not _is_image(path):
        problems.add(
            f'"{name}" is not an image ({_suffix_list()})',
            where,
            "list image files only",
        )
        return None
    if not path.is_file():
        known = [_rel(meta.parent, p) for p in _data_files(meta.parent) if _is_image(p)]
        close = difflib.get_close_matches(name, known, n=1)
        problems.add(
            f'the row names "{name}", which is not in {_folder_where(drop, meta.parent)}',
            where,
            (f'did you mean "{close[0]}"? ' if close else "")
            + f"file names are relative to the folder of {meta.name}",
        )
        return None
    if not prompt:
        problems.add(
            f'the row for "{name}" has an empty prompt',
            where,
            f"write a caption after the comma: {name},a photo of ...",
        )
        return None
    if not _check_image(drop, path, problems, sizes):
        return None
    return ImageItem(path, prompt)
