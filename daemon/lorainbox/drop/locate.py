"""Where a drop's data is: the paths ``[data]`` names, or else the usual places in the drop.

Language-model data is looked for in the drop and then in ``data/``; images also in
``images/``. Data must stay inside the drop, and data of the wrong kind for the recipe is named
as such rather than as missing.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from lorainbox.core.layout import RECIPE_FILE
from lorainbox.drop.files import (
    Problems,
    contained,
    data_files,
    folder_where,
    is_data_name,
    rel_path,
    resolved_inside,
)
from lorainbox.drop.images import METADATA_FILE, ImageFolder, find_images, suffix_list
from lorainbox.drop.jsonl import (
    ANY_SHAPE,
    LLM_KINDS,
    TRAIN_FILE,
    VALID_FILE,
    JsonlFiles,
    find_jsonl,
)
from lorainbox.drop.recipe import DataSpec, line_of


def _recipe_where(drop: Path, key: str, section: tuple[str, ...] = ("data",)) -> str:
    recipe = drop / RECIPE_FILE
    line = line_of(recipe, list(section), key) if recipe.is_file() else None
    label = f"[{'.'.join(section)}] {key}" if section else key
    return f"{RECIPE_FILE}, line {line}" if line else f"{RECIPE_FILE}, {label}"


def _given_path(drop: Path, key: str, value: str, problems: Problems) -> Path | None:
    """A path from ``[data]``, checked to exist and to stay inside the drop."""
    where = _recipe_where(drop, key)
    given = Path(value).expanduser()
    path = given if given.is_absolute() else drop / given
    real, inside = resolved_inside(drop, path)
    if not inside:
        problems.add(
            f'[data] {key} = "{value}" points outside the drop (to {real})',
            where,
            f'put the data inside the drop folder and give its path relative to it, e.g. {key} = "{TRAIN_FILE if key == "train" else VALID_FILE}"',
        )
        return None
    if not path.exists():
        names = [rel_path(drop, p) for p in drop.rglob("*") if p.is_file() and is_data_name(p.name)]
        close = difflib.get_close_matches(given.as_posix(), names, n=1, cutoff=0.5)
        hint = f'did you mean "{close[0]}"? ' if close else ""
        problems.add(
            f'[data] {key} = "{value}": there is no such file or folder in the drop',
            where,
            f"{hint}give the path relative to the drop folder, or remove the line to let LoRA Inbox find the data",
        )
        return None
    return path


def locate(
    drop: Path, spec: DataSpec, kind: str, problems: Problems
) -> JsonlFiles | ImageFolder | None:
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
            if folder != drop and not contained(drop, folder, problems):
                return None
            if found := find_images(folder):
                return found
        if any(p.suffix == ".jsonl" for p in data_files(drop)):
            problems.add(
                "this drop holds JSON Lines (language-model data), but the recipe trains an image model",
                _recipe_where(drop, "kind", ()),
                'for a language model write extends = "chat-lora" (or kind = "llm"); '
                "for an image LoRA add images with .txt captions",
            )
        else:
            problems.add(
                "no images found in the drop",
                folder_where(drop, drop),
                f"add images ({suffix_list()}) with a .txt caption beside each (cat.png + cat.txt), "
                f"a {METADATA_FILE} with filename,prompt columns, or kohya folders like 10_mystyle/",
            )
        return None

    found = find_jsonl(drop, drop, problems)
    data = drop / "data"
    if found is None and data.is_dir():
        if not contained(drop, data, problems):
            return None
        found = find_jsonl(drop, data, problems)
    if found is not None:
        _add_valid(drop, spec, found, problems)
        return found
    if any(find_images(f) for f in (drop, data, drop / "images")):
        problems.add(
            "this drop holds images, but the recipe trains a language model",
            _recipe_where(drop, "kind", ()),
            'for an image LoRA write extends = "sd15-style" (or kind = "diffusion"); '
            f"for a language model add {TRAIN_FILE}",
        )
    else:
        problems.add(
            "no training data found in the drop",
            folder_where(drop, drop),
            f"add a {TRAIN_FILE} with one example per line ({ANY_SHAPE}), "
            f'or name the file in recipe.toml: [data] train = "my-data.jsonl"',
        )
    return None


def _locate_given(
    drop: Path, spec: DataSpec, kind: str, problems: Problems
) -> JsonlFiles | ImageFolder | None:
    assert spec.train is not None
    path = _given_path(drop, "train", spec.train, problems)
    if path is None:
        return None
    if kind == "diffusion":
        if path.is_dir():
            meta = path / METADATA_FILE
            return ImageFolder(path, meta if meta.is_file() else None)
        if path.suffix.lower() == ".csv":
            return ImageFolder(path.parent, path)
        problems.add(
            f'[data] train = "{spec.train}" is a file, but image training needs a folder of images or a {METADATA_FILE}',
            _recipe_where(drop, "train"),
            f"give the folder holding the images and their .txt captions, or a {METADATA_FILE}",
        )
        return None
    if path.is_dir():
        found = find_jsonl(drop, path, problems)
        if found is None:
            problems.add(
                f'the folder [data] train = "{spec.train}" holds no .jsonl files',
                _recipe_where(drop, "train"),
                f"put {TRAIN_FILE} (and optionally {VALID_FILE}) in it, or name a file instead",
            )
            return None
    else:
        found = JsonlFiles([path])
    _add_valid(drop, spec, found, problems)
    return found


def _add_valid(drop: Path, spec: DataSpec, found: JsonlFiles, problems: Problems) -> None:
    if not spec.valid:
        return
    path = _given_path(drop, "valid", spec.valid, problems)
    if path is None:
        found.valid = []
    elif path.is_dir():
        found.valid = [p for p in data_files(path) if p.suffix == ".jsonl"]
    else:
        found.valid = [path]


def check_format_fits(drop: Path, spec: DataSpec, kind: str, problems: Problems) -> None:
    llm_format = spec.format in LLM_KINDS
    if (kind == "llm" and spec.format == "images") or (kind == "diffusion" and llm_format):
        problems.add(
            f'[data] format = "{spec.format}" does not fit kind = "{kind}"',
            _recipe_where(drop, "format"),
            'use format = "auto", or '
            + ('"images" for an image model' if llm_format else '"chat", "completions" or "text"'),
        )
