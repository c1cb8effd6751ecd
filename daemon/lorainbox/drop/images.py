"""Image data: a folder of images with ``.txt`` caption sidecars, a ``metadata.csv``
(``filename,prompt``), or kohya-style ``10_name/`` repeat folders.

Every image is decoded here, not just opened, so a broken or cut-off file fails the drop at once
rather than hours into training; its size is kept for the summary and the trainer's buckets.
"""

from __future__ import annotations

import csv
import difflib
import itertools
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from lorainbox.drop.files import (
    Problems,
    contained,
    data_files,
    entries,
    folder_where,
    read_lines,
    rel_path,
)
from lorainbox.drop.imagelist import ImageItem
from lorainbox.drop.summary import DataSummary

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})
METADATA_FILE = "metadata.csv"
MAX_CAPTION_BYTES = 64 * 1024

_KOHYA_DIR = re.compile(r"(\d+)_(.+)")


@dataclass
class ImageFolder:
    """Where the images are: a folder (with kohya folders in it), or the folder of a metadata.csv."""

    root: Path
    metadata: Path | None = None


def find_images(folder: Path) -> ImageFolder | None:
    """Images with captions, a metadata.csv, or kohya repeat folders, directly in ``folder``."""
    if not folder.is_dir():
        return None
    files = data_files(folder)
    if any(p.name == METADATA_FILE for p in files):
        return ImageFolder(folder, folder / METADATA_FILE)
    if any(is_image(p) for p in files) or kohya_dirs(folder):
        return ImageFolder(folder)
    return None


def kohya_dirs(folder: Path) -> list[tuple[Path, int, str]]:
    found = []
    for p in entries(folder):
        if (m := _KOHYA_DIR.fullmatch(p.name)) and p.is_dir():
            found.append((p, int(m[1]), m[2].strip()))
    return found


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def suffix_list() -> str:
    return ", ".join(s.lstrip(".") for s in sorted(IMAGE_SUFFIXES))


def inspect_images(drop: Path, found: ImageFolder, problems: Problems) -> DataSummary:
    if found.metadata is not None:
        items = _metadata_items(drop, found.metadata, problems)
        sources = [found.metadata]
        folders = ""
    else:
        kohya = kohya_dirs(found.root)
        items = _folder_items(drop, found.root, 1, None, problems)
        for folder, repeats, name in kohya:
            if not contained(drop, folder, problems):
                continue
            if repeats < 1:
                problems.add(
                    f"the folder {folder.name}/ repeats its images 0 times",
                    f"{rel_path(drop, folder)}/",
                    f"rename it to 1_{name} (the number says how often each image is shown)",
                )
                continue
            items += _folder_items(drop, folder, repeats, name, problems)
        sources = [found.root, *(f for f, _, _ in kohya)]
        folders = ", ".join(f"{f.name} ({r}x)" for f, r, _ in kohya)
    if not items and not problems.items:
        problems.add(
            "no images with captions found",
            folder_where(drop, found.root),
            f"add images ({suffix_list()}) with a .txt caption beside each",
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
    if sizes := [i.size for i in items if i.size is not None]:
        small = min(sizes, key=lambda s: s[0] * s[1])
        large = max(sizes, key=lambda s: s[0] * s[1])
        stats |= {"min_size": f"{small[0]}x{small[1]}", "max_size": f"{large[0]}x{large[1]}"}
        stats["min_side"] = min(min(s) for s in sizes)
    if folders:
        stats["folders"] = folders
    return DataSummary("images", sources, [], examples, 0, stats, items)


def _folder_items(
    drop: Path,
    folder: Path,
    repeats: int,
    name: str | None,
    problems: Problems,
) -> list[ImageItem]:
    """Images of one folder with their ``.txt`` sidecars; a kohya folder's name is the fallback caption."""
    files = data_files(folder)
    images = [p for p in files if is_image(p)]
    captions = {p.stem: p for p in files if p.suffix.lower() == ".txt"}
    where = folder_where(drop, folder)
    if not images:
        if name is not None:
            problems.add(
                f"the folder {folder.name}/ holds no images",
                where,
                f"add images ({suffix_list()}) to it, or remove it",
            )
        return []
    stems = {p.stem for p in images}
    for stem, txt in captions.items():
        if stem not in stems:
            problems.add(
                f"the caption {txt.name} has no image beside it",
                rel_path(drop, txt),
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
                    rel_path(drop, image),
                    f"add {image.stem}.txt beside it with a caption, or remove the image",
                )
                continue
            caption = _read_caption(drop, txt, problems)
        size = _checked_size(drop, image, problems) if contained(drop, image, problems) else None
        if size is not None and caption:
            items.append(ImageItem(image, caption, repeats, size))
    return items


def _read_caption(drop: Path, txt: Path, problems: Problems) -> str:
    rel = rel_path(drop, txt)
    if not contained(drop, txt, problems):
        return ""
    if txt.stat().st_size > MAX_CAPTION_BYTES:
        problems.add(
            f"the caption {txt.name} is {txt.stat().st_size // 1024} KB long",
            rel,
            "write a sentence or two; the text encoder reads only the first 77 tokens",
        )
        return ""
    lines = [t for _, t in read_lines(txt, rel, problems)]
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


def _checked_size(drop: Path, path: Path, problems: Problems) -> tuple[int, int] | None:
    """(width, height), decoded for real: ``verify`` catches a broken structure, ``load`` cut-off
    pixels; None once the problem is reported."""
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
            rel_path(drop, path),
            "scale it down (about 1024 pixels on the long side is plenty)",
        )
        return None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        problems.add(
            f"the image {path.name} cannot be read ({e})",
            rel_path(drop, path),
            "open it and export it again as PNG or JPEG, or remove it",
        )
        return None
    return size


def _metadata_items(drop: Path, meta: Path, problems: Problems) -> list[ImageItem]:
    """Rows of ``filename,prompt`` (or diffusers' ``file_name,text``), relative to the CSV's folder."""
    rel = rel_path(drop, meta)
    if not contained(drop, meta, problems):
        return []
    lines = (text if text is not None else "\n" for _, text in read_lines(meta, rel, problems))
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
            if item := _metadata_row(drop, meta, name, prompt, where, problems):
                items.append(item)
    except csv.Error as e:
        problems.add(
            f"{rel} cannot be read as CSV ({e})",
            f"{rel}, line {reader.line_num}",
            "put each row on one line: filename,prompt; quote prompts that hold commas",
        )
    for image in data_files(meta.parent):
        if is_image(image) and image.resolve() not in named and not problems.full:
            problems.add(
                f"the image {image.name} is not listed in {meta.name}",
                rel_path(drop, image),
                f"add a row `{image.name},<caption>` to {meta.name}, or move the image out",
            )
    return items


def _metadata_row(
    drop: Path,
    meta: Path,
    name: str,
    prompt: str,
    where: str,
    problems: Problems,
) -> ImageItem | None:
    if not name:
        problems.add("the row names no file", where, "write the image's file name first")
        return None
    path = meta.parent / name
    if not contained(drop, path, problems, where):
        return None
    if not is_image(path):
        problems.add(
            f'"{name}" is not an image ({suffix_list()})',
            where,
            "list image files only",
        )
        return None
    if not path.is_file():
        known = [rel_path(meta.parent, p) for p in data_files(meta.parent) if is_image(p)]
        close = difflib.get_close_matches(name, known, n=1)
        problems.add(
            f'the row names "{name}", which is not in {folder_where(drop, meta.parent)}',
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
    size = _checked_size(drop, path, problems)
    return None if size is None else ImageItem(path, prompt, 1, size)
