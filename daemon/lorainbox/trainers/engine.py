"""Which engine trains a language model here, and why: the rule behind ``trainer = "auto"``.

MLX on Apple Silicon, where it runs on the Metal GPU. Everywhere else PyTorch: on CUDA where
there is an NVIDIA card, and on a CPU-only machine too, where MLX's CPU build is far slower
(SmolLM2-135M at batch 4: MLX's CPU build 2-3 tokens/s, torch on the same CPU ~240). The one
exception is a base model quantized the MLX way, which only MLX can train.

The choice is plain data (the engine's name and the reason in words), so the worker, the report
and ``lorainbox doctor`` say the same thing. Nothing heavy is imported to make it: an MLX worker
on a Mac never loads torch.
"""

from __future__ import annotations

import importlib.util
import json
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

CPU_MEASURED = "about 100x MLX's CPU build: SmolLM2-135M at batch 4 ran ~240 tokens/s against 2-3"


@dataclass(frozen=True)
class EngineChoice:
    name: str
    """``mlx`` or ``torch``."""
    reason: str
    """Why, in words a person reads in the report and in ``doctor``."""


def is_apple_silicon() -> bool:
    return sys.platform == "darwin" and platform.machine() == "arm64"


def mlx_installed() -> bool:
    return (
        importlib.util.find_spec("mlx") is not None
        and importlib.util.find_spec("mlx_lm") is not None
    )


def quantized_for_mlx(base: Path | None) -> bool:
    """A base model with MLX's ``quantization`` table in its config.json (mlx-community's 4-bit)."""
    if base is None or not (base / "config.json").is_file():
        return False
    try:
        config = json.loads((base / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and bool(config.get("quantization"))


def cuda_device() -> str | None:
    """The NVIDIA card's name, or None; asks torch only where one could be (not on a Mac)."""
    if sys.platform == "darwin" or importlib.util.find_spec("torch") is None:
        return None
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def choose_engine(
    requested: str, base: Path | None = None, *, mlx_usable: bool | None = None
) -> EngineChoice:
    """The engine for a language-model job: the recipe's ``trainer`` (auto, mlx or torch).

    ``mlx_usable`` is whether MLX and mlx-lm import here (the worker tries; the default only
    looks for the packages). A pinned engine is taken as asked; the worker says so when MLX
    cannot run."""
    if requested == "torch":
        return EngineChoice("torch", 'the recipe asks for it (trainer = "torch")')
    usable = mlx_installed() if mlx_usable is None else mlx_usable
    if requested == "mlx":
        return EngineChoice("mlx", 'the recipe asks for it (trainer = "mlx")')
    if is_apple_silicon():
        if usable:
            return EngineChoice("mlx", "Apple Silicon: MLX trains on the Metal GPU")
        return EngineChoice("torch", "Apple Silicon without MLX installed: PyTorch on MPS")
    if quantized_for_mlx(base) and usable:
        return EngineChoice("mlx", "the base model is quantized for MLX, which only MLX trains")
    if (gpu := cuda_device()) is not None:
        return EngineChoice("torch", f"NVIDIA GPU ({gpu}): PyTorch trains on CUDA in bfloat16")
    return EngineChoice("torch", f"no GPU: PyTorch on the CPU, {CPU_MEASURED}")
