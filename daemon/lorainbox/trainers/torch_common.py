"""What both PyTorch trainers share: the device and its settings, memory, checkpoints, schedules.

A Mac trains on MPS without autocast (slower and less stable there than plain dtypes): the
frozen weights of an image model in float16, as diffusers' own training scripts keep them, and
everything else in float32; a borrowed NVIDIA card in bfloat16 with SDPA attention, anything
else on the CPU in float32.
Checkpoints are whole folders written under a temporary name and renamed into place, so a
worker killed mid-write never leaves a checkpoint that looks finished.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import re
import resource
import shutil
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lorainbox.core.errors import DropError
from lorainbox.drop.recipe import LoraSpec, TrainSpec
from lorainbox.trainers.base import OutOfMemory

log = logging.getLogger(__name__)

GB = 1e9
DEVICE_WHERE = "recipe.toml, [train] device"
CHECKPOINT_PREFIX = "step-"
KEEP_CHECKPOINTS = 2
MAX_GRAD_NORM = 1.0
"""Clip like transformers' Trainer and diffusers' examples do: cheap insurance against spikes."""


# --- device -------------------------------------------------------------------------------


def available_devices() -> list[str]:
    found = []
    if torch.backends.mps.is_available():
        found.append("mps")
    if torch.cuda.is_available():
        found.append("cuda")
    return [*found, "cpu"]


def pick_device(requested: str = "auto") -> torch.device:
    """MPS, else CUDA, else the CPU; a pinned device that is not here is the person's to fix."""
    found = available_devices()
    if requested == "auto":
        return torch.device(found[0])
    if requested not in found:
        raise DropError.one(
            f'the recipe pins the device "{requested}", which this machine does not have',
            DEVICE_WHERE,
            f'set device = "auto" or one of: {", ".join(found)}',
        )
    return torch.device(requested)


@dataclass(frozen=True)
class DeviceSetup:
    """How a trainer uses its device: where, in which precision, with which defaults."""

    device: torch.device
    weight_dtype: torch.dtype
    """Frozen weights: bfloat16 on CUDA cards that have it, float16 on MPS where the trainer
    asks (``half_on_mps``), float32 elsewhere. Trained (LoRA) weights stay float32."""
    autocast_dtype: torch.dtype | None
    grad_checkpoint_default: bool
    """MPS shares memory with everything else on the Mac, so checkpointing is on there."""

    @property
    def kind(self) -> str:
        return self.device.type

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)


def setup_device(
    requested: str, budget_gb: float, *, bf16: bool = True, half_on_mps: bool = False
) -> DeviceSetup:
    """Pick the device and apply its process-wide settings (memory fraction, TF32).

    ``half_on_mps``: frozen weights in float16 on MPS, with no autocast. diffusers' LoRA
    scripts do this (``examples/dreambooth/train_dreambooth_lora_sdxl.py``: "Disable AMP for
    MPS", ``weight_dtype`` float16, ``cast_training_params(..., torch.float32)``): all-float32
    doubles the weights, and SDXL then does not fit a 16-24 GB Mac.
    """
    device = pick_device(requested)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        half = bf16 and torch.cuda.is_bf16_supported()
        dtype = torch.bfloat16 if half else torch.float32
        return DeviceSetup(device, dtype, dtype if half else None, False)
    if device.type == "mps":
        set_mps_memory_fraction(budget_gb)
        return DeviceSetup(device, torch.float16 if half_on_mps else torch.float32, None, True)
    return DeviceSetup(device, torch.float32, None, False)


def set_mps_memory_fraction(budget_gb: float) -> float:
    """Make MPS raise out-of-memory at the budget instead of swapping the Mac to a crawl."""
    recommended = torch.mps.recommended_max_memory()
    fraction = min(2.0, max(0.05, budget_gb * GB / recommended)) if recommended else 1.0
    torch.mps.set_per_process_memory_fraction(fraction)
    log.info("MPS memory fraction %.2f (%.1f GB budget)", fraction, budget_gb)
    return fraction


def empty_cache(device: torch.device) -> None:
    """Give cached blocks back between phases (loading, caching, training, sampling)."""
    if device.type == "mps":
        torch.mps.empty_cache()
    elif device.type == "cuda":
        torch.cuda.empty_cache()


def synchronize(device: torch.device) -> None:
    if device.type == "mps":
        torch.mps.synchronize()
    elif device.type == "cuda":
        torch.cuda.synchronize(device)


_FALLBACK = re.compile(r"operator '([^']+)' is not currently (?:supported|implemented)")


class MPSFallbackLog:
    """Records the operators MPS hands to the CPU (``PYTORCH_ENABLE_MPS_FALLBACK=1``).

    Torch warns once per operator; each is a step that runs slowly, worth knowing when a Mac
    trains slower than it should. Other warnings pass through untouched.
    """

    def __init__(self) -> None:
        self.ops: list[str] = []
        self._previous: Callable[..., Any] | None = None

    def __enter__(self) -> MPSFallbackLog:
        self._previous = warnings.showwarning
        warnings.showwarning = self._show  # type: ignore[assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            warnings.showwarning = self._previous  # type: ignore[assignment]

    def _show(self, message: Warning | str, category: type[Warning], *args: Any, **kw: Any) -> None:
        match = _FALLBACK.search(str(message))
        if match is None:
            assert self._previous is not None
            self._previous(message, category, *args, **kw)
            return
        if match[1] not in self.ops:
            self.ops.append(match[1])
            log.warning("MPS has no kernel for %s: it runs on the CPU (slower)", match[1])


# --- memory ---------------------------------------------------------------------------------


def is_torch_oom(error: BaseException) -> bool:
    """CUDA raises ``torch.OutOfMemoryError``; MPS and the CPU allocator plain RuntimeErrors."""
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    if not isinstance(error, RuntimeError):
        return False
    text = str(error).lower()
    return "out of memory" in text or "failed to allocate" in text


@contextlib.contextmanager
def out_of_memory_guard(device: torch.device) -> Iterator[None]:
    """Turn the device's out-of-memory errors into :class:`OutOfMemory` for the supervisor."""
    try:
        yield
    except Exception as e:
        if not is_torch_oom(e):
            raise
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        empty_cache(device)
        raise OutOfMemory(f"{device.type} ran out of memory: {message}") from e


def process_peak_rss_gb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / GB if sys.platform == "darwin" else peak * 1024 / GB


class MemoryMeter:
    """The peak a run reached, and the budget held against it at step boundaries.

    CUDA and MPS (with its memory fraction) fail allocations themselves; on the CPU nothing
    would, so the meter is what turns a run that outgrew its budget into :class:`OutOfMemory`.
    """

    def __init__(self, device: torch.device, budget_gb: float):
        self.device = device
        self.budget_gb = budget_gb
        self._mps_peak = 0
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    def peak_gb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / GB
        if self.device.type == "mps":
            self._mps_peak = max(self._mps_peak, torch.mps.driver_allocated_memory())
            return self._mps_peak / GB
        return process_peak_rss_gb()

    def check(self) -> float:
        peak = self.peak_gb()
        if self.device.type == "cpu" and peak > self.budget_gb:
            raise OutOfMemory(
                f"the process peaked at {peak:.2f} GB, over its {self.budget_gb:g} GB budget"
            )
        return peak


# --- LoRA settings shared by both trainers ------------------------------------------------


def checkpoint_activations(model: Any) -> None:
    """Recompute activations in the backward pass (non-reentrant, so frozen inputs work).
    transformers renamed the switch ``activation_checkpointing_enable``; the old name warns in
    every train.log, yet the versions this package allows before the rename have only it."""
    kwargs = {"use_reentrant": False}
    if enable := getattr(model, "activation_checkpointing_enable", None):
        enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def lora_alpha(lora: LoraSpec, default_scale: float) -> float:
    """PEFT's ``lora_alpha``: the recipe's alpha, or scale x rank (mlx-lm's convention)."""
    if lora.alpha is not None:
        return float(lora.alpha)
    scale = default_scale if lora.scale is None else lora.scale
    return float(scale * lora.rank)


def lr_lambda(schedule: str, warmup: int, total: int) -> Callable[[int], float]:
    """Multiplier of the base rate at each step: linear warm-up, then the recipe's shape."""
    decay_steps = max(1, total - warmup)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / decay_steps)
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if schedule == "linear":
            return 1.0 - progress
        return 1.0

    return factor


def make_optimizer(
    params: Iterable[torch.nn.Parameter], lr: float, device: torch.device, *, fused: bool = True
) -> torch.optim.AdamW:
    """AdamW without weight decay (as mlx-lm trains LoRA), fused into one kernel where it can."""
    params = list(params)
    if fused and device.type in ("cuda", "mps", "cpu"):
        try:
            return torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=True)
        except (RuntimeError, ValueError) as e:
            log.info("fused AdamW unavailable on %s (%s); using foreach", device.type, e)
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.0, foreach=True)


def make_scheduler(
    optimizer: torch.optim.Optimizer, train: TrainSpec, total: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """The recipe's warm-up and schedule over ``total`` steps, stepped once per optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(train.lr_schedule, train.warmup, total)
    )


def optimizer_step(
    params: Iterable[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> None:
    """One update of both trainers: clip the gradients, step the optimizer and the schedule,
    and free the gradients (``set_to_none``: no zero-fill kernel, memory back until backward)."""
    torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM, foreach=True)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


# --- randomness --------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if torch.backends.mps.is_available():
        state["mps"] = torch.mps.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "mps" in state and torch.backends.mps.is_available():
        torch.mps.set_rng_state(state["mps"])


# --- checkpoints ----------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """One resumable point: the adapter's tensors, the training state, and what to check."""

    path: Path
    step: int
    tensors: dict[str, torch.Tensor]
    state: dict[str, Any]
    """Optimizer, scheduler and RNG: torch objects, pickled by ``torch.save``."""
    meta: dict[str, Any] = field(default_factory=dict)
    """JSON: step, data position, counters and the signature of the LoRA setup."""


def save_checkpoint(
    root: Path,
    step: int,
    tensors: dict[str, torch.Tensor],
    state: dict[str, Any],
    meta: dict[str, Any],
    keep: int = KEEP_CHECKPOINTS,
) -> Path:
    """Write ``root/step-NNNNNNNN`` atomically and drop all but the newest ``keep``."""
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{CHECKPOINT_PREFIX}{step:08d}"
    tmp = root / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in tensors.items()},
            tmp / "adapter.safetensors",
        )
        torch.save(state, tmp / "state.pt")
        (tmp / "meta.json").write_text(json.dumps({**meta, "step": step}))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    return final


def list_checkpoints(root: Path) -> list[Path]:
    """Finished checkpoints, oldest first (a folder counts once its meta.json is in place)."""
    if not root.is_dir():
        return []
    found = [
        p
        for p in root.glob(f"{CHECKPOINT_PREFIX}*")
        if p.is_dir() and (p / "meta.json").is_file() and p.name[len(CHECKPOINT_PREFIX) :].isdigit()
    ]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


def load_latest_checkpoint(root: Path) -> Checkpoint | None:
    """The newest readable checkpoint, read onto the CPU; a damaged one is skipped for the one
    before it.

    On the CPU whatever the run trains on: the RNG states in it must reach
    ``torch.set_rng_state`` (and ``torch.mps``/``torch.cuda``'s) as CPU ByteTensors, which
    ``map_location="mps"`` or ``"cuda"`` would turn into device tensors that it refuses; and
    ``Optimizer.load_state_dict`` moves the optimizer's state onto each parameter's device
    itself (torch/optim/optimizer.py, ``_process_value_according_to_param_policy``).
    """
    from safetensors.torch import load_file

    for path in reversed(list_checkpoints(root)):
        try:
            meta = json.loads((path / "meta.json").read_text())
            tensors = load_file(path / "adapter.safetensors", device="cpu")
            state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
        except Exception as e:  # a damaged checkpoint must not stop the one before it
            log.warning("skipping unreadable checkpoint %s: %s", path, e)
            continue
        return Checkpoint(path, int(meta["step"]), tensors, state, meta)
    return None


def set_aside_checkpoints(root: Path, reason: str) -> None:
    """Move checkpoints that no longer fit the recipe out of the way (kept, never deleted)."""
    if not root.is_dir():
        return
    target = root.with_name(f"{root.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(root, target)
    log.warning("checkpoints set aside in %s: %s", target, reason)


def training_state(
    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler
) -> dict[str, Any]:
    """A checkpoint's ``state`` besides the adapter: optimizer, schedule and every RNG, so that
    a resumed run continues exactly where the saved one was."""
    return {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_state(),
    }


def restore_training_state(
    state: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> None:
    """Load what :func:`training_state` saved back into the run's optimizer and schedule."""
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])


def resumable_checkpoint(
    root: Path, device: torch.device, signature: dict[str, Any]
) -> Checkpoint | None:
    """The newest checkpoint, if it was saved with this LoRA setup (``signature``); checkpoints
    of another setup cannot be resumed and are set aside. It is read on the CPU whatever
    ``device`` the run trains on (see :func:`load_latest_checkpoint`)."""
    ckpt = load_latest_checkpoint(root)
    if ckpt is None:
        return None
    if ckpt.meta.get("signature") != signature:
        set_aside_checkpoints(root, "the recipe's LoRA settings changed since they were saved")
        return None
    return ckpt


# --- progress -----------------------------------------------------------------------------


def atomic_replace_dir(build: Callable[[Path], None], final: Path) -> Path:
    """Build a folder next to ``final`` and swap it in whole (``build`` fills the folder)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.partial")
    tmp.mkdir()
    try:
        build(tmp)
        old = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.old")
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
