"""The memory guard: fit a training run into a budget before it starts, and catch it if not.

A Mac shares its memory between the person's apps and the GPU; a training run that grows past
it swaps the machine to a crawl or gets killed. So before loading anything, the worker
estimates the peak from the safetensors headers and the recipe, and turns the knobs that cost
least first (gradient checkpointing, then batch, then sequence length) until the estimate fits.
While training, MLX's own peak is held against the same budget, and MLX's allocation failures
become :class:`OutOfMemory` so the supervisor can retry with a smaller footprint.
"""

from __future__ import annotations

import functools
import json
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from lorainbox.core.errors import DropError
from lorainbox.drop.recipe import LoraSpec, Recipe
from lorainbox.models.base import safetensors_files, safetensors_header
from lorainbox.trainers.base import Footprint, OutOfMemory

GB = 1e9
OVERHEAD_GB = 0.6
"""Python, MLX, the tokenizer and allocator slack: measured ~0.3 GB RSS before any weights."""
SEQ_FLOOR = 256
"""Sequences are never cut below this: shorter than a paragraph, training stops making sense."""

ACT_HIDDEN = 20
ACT_INTERMEDIATE = 2
ACT_SCORES = 2
"""Activation elements kept per token and layer for the backward pass: ~20 of the hidden width
(norms, q/k/v/o, rope, residuals, LoRA paths), ~2 of the MLP width (mlx-lm fuses SwiGLU) and ~2
per head and key position (attention scores and probabilities). Fitted to MLX's peak on
LLaMA-shaped models (128 and 512 wide, sequences 256-1024, batches 2-16) on the CPU, where the
estimate came out 2-20 % above the measured peak."""
LOGIT_BYTES = 12
"""Logits, their float32 log-softmax and the gradient: ~12 bytes per token and vocabulary entry."""

_DTYPE_BYTES = {
    "F64": 8,
    "I64": 8,
    "U64": 8,
    "F32": 4,
    "I32": 4,
    "U32": 4,
    "F16": 2,
    "BF16": 2,
    "I16": 2,
    "U16": 2,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs to know about a model, read without loading it."""

    weight_bytes: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    kv_dim: int
    vocab_size: int
    compute_bytes: int
    """Bytes per activation element: 4 for a float32 model, 2 for float16/bfloat16/quantized."""
    quantized: bool


def read_model_shape(model_dir: Path) -> ModelShape:
    """Sizes from config.json and the safetensors headers (their data is never read)."""
    model_dir = Path(model_dir)
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    text = config.get("text_config") or config
    weight_bytes = 0
    float_bytes: dict[int, int] = {}
    for file in safetensors_files(model_dir):
        for name, info in safetensors_header(file).items():
            if name == "__metadata__":
                continue
            size = _DTYPE_BYTES.get(info["dtype"], 4)
            nbytes = math.prod(info["shape"]) * size
            weight_bytes += nbytes
            if info["dtype"].startswith(("F", "BF")):
                float_bytes[size] = float_bytes.get(size, 0) + nbytes
    hidden = int(text["hidden_size"])
    heads = int(text.get("num_attention_heads") or max(1, hidden // 64))
    head_dim = int(text.get("head_dim") or hidden // heads)
    kv_heads = int(text.get("num_key_value_heads") or heads)
    compute = max(float_bytes, key=float_bytes.__getitem__) if float_bytes else 2
    return ModelShape(
        weight_bytes=weight_bytes,
        hidden_size=hidden,
        intermediate_size=int(text.get("intermediate_size") or 4 * hidden),
        num_layers=int(text.get("num_hidden_layers") or text.get("n_layer") or 1),
        num_heads=heads,
        kv_dim=kv_heads * head_dim,
        vocab_size=int(text.get("vocab_size") or 32000),
        compute_bytes=min(compute, 4),
        quantized=bool(config.get("quantization") or config.get("quantization_config")),
    )


def _adapted_dims(shape: ModelShape, key: str) -> tuple[int, int]:
    h, i, kv = shape.hidden_size, shape.intermediate_size, shape.kv_dim
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "lm_head":
        return h, shape.vocab_size
    if leaf == "embed_tokens":
        return shape.vocab_size, h
    if leaf in ("k_proj", "v_proj"):
        return h, kv
    if leaf in ("gate_proj", "up_proj", "w1", "w3", "fc1", "c_fc"):
        return h, i
    if leaf in ("down_proj", "w2", "fc2"):
        return i, h
    return h, h


_TOP_LEVEL = ("lm_head", "model.embed_tokens")
_DEFAULT_KEYS = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)


def estimate_gb(
    shape: ModelShape,
    lora: LoraSpec,
    batch_size: int,
    seq_len: int,
    grad_checkpoint: bool,
) -> float:
    """Estimated peak memory of one training step, in GB (10^9 bytes), overhead included."""
    layers = shape.num_layers if lora.num_layers < 0 else min(lora.num_layers, shape.num_layers)
    keys = lora.keys or _DEFAULT_KEYS
    # Keys outside the blocks (lm_head, model.embed_tokens) are adapted once, not per layer.
    dims = [(1 if k in _TOP_LEVEL else layers, *_adapted_dims(shape, k)) for k in keys]
    lora_params = lora.rank * sum(n * (a + b) for n, a, b in dims)
    adapter = 4 * lora_params * 4  # float32 weights, gradients and Adam's two moments
    if lora.fine_tune_type == "dora" or shape.quantized:
        # DoRA and QLoRA materialise the adapted weights in the compute dtype while stepping.
        adapter += sum(n * a * b for n, a, b in dims) * shape.compute_bytes
    tokens = batch_size * seq_len
    per_layer = (
        ACT_HIDDEN * shape.hidden_size
        + ACT_INTERMEDIATE * shape.intermediate_size
        + ACT_SCORES * shape.num_heads * seq_len
    ) * shape.compute_bytes
    if grad_checkpoint:
        # Layer inputs only, plus the layer being recomputed and its gradients (measured ~1.5x).
        acts = tokens * (
            shape.num_layers * shape.hidden_size * shape.compute_bytes + 3 * per_layer // 2
        )
    else:
        acts = tokens * shape.num_layers * per_layer
    logits = tokens * shape.vocab_size * LOGIT_BYTES
    return (shape.weight_bytes + adapter + acts + logits) / GB + OVERHEAD_GB


def estimate_for(
    model_dir: Path,
    recipe: Recipe,
    footprint: Footprint,
    *,
    longest_example: int | None = None,
) -> float:
    """:func:`estimate_gb` of a model folder and footprint, in GB."""
    seq = min(footprint.max_seq_length, longest_example or footprint.max_seq_length)
    return estimate_gb(
        read_model_shape(model_dir),
        recipe.lora,
        footprint.batch_size,
        seq,
        footprint.grad_checkpoint,
    )


def longest_example_tokens(files: list[Path]) -> int | None:
    """An upper bound on the longest example's tokens, from the longest JSONL line in bytes.

    Every token of a byte-level or byte-fallback tokenizer covers at least one byte, and the
    JSON keys around each message outweigh the chat template's markers; the margin covers a
    default system prompt some templates add.
    """
    longest = 0
    for file in files:
        try:
            with open(file, "rb") as f:
                longest = max(longest, max((len(line) for line in f), default=0))
        except OSError:
            return None
    return longest + 128 if longest else None


def plan_footprint(
    model_dir: Path,
    recipe: Recipe,
    budget_gb: float,
    *,
    longest_example: int | None = None,
    start: Footprint | None = None,
) -> Footprint:
    """The recipe's batch, sequence and checkpointing, shrunk until the estimate fits the budget.

    ``longest_example`` (in tokens, an upper bound is fine) keeps a short dataset from being
    charged for a ``max_seq_length`` it never reaches. Raises :class:`DropError` when even the
    smallest footprint does not fit.
    """
    shape = read_model_shape(model_dir)
    t = recipe.train
    fp = start or Footprint(t.batch_size, t.max_seq_length, t.grad_checkpoint)

    def need(f: Footprint) -> float:
        seq = min(f.max_seq_length, longest_example or f.max_seq_length)
        return estimate_gb(shape, recipe.lora, f.batch_size, seq, f.grad_checkpoint)

    while (gb := need(fp)) > budget_gb:
        step = _step_down(fp, longest_example)
        if step is None:
            seq = min(fp.max_seq_length, longest_example or fp.max_seq_length)
            raise DropError.one(
                f"training needs at least {gb:.1f} GB with batch {fp.batch_size}, sequence "
                f"{seq} and checkpointing; the budget is {budget_gb:g} GB",
                "recipe.toml, [memory] max_gb and `base_model`",
                "raise [memory] max_gb or pick a smaller base model (a 4-bit one, or one with "
                "fewer parameters)",
            )
        smaller, what = step
        smaller.changes.append(f"{what}: estimated {gb:.1f} GB over the {budget_gb:g} GB budget")
        fp = smaller
    return fp


def shrink_after_oom(footprint: Footprint) -> Footprint | None:
    """The next smaller footprint after a run ran out of memory; None when nothing is left.

    The supervisor calls this after a worker exits with ``EXIT_OUT_OF_MEMORY`` and stores the
    result in the job's spec, so the next worker resumes from its checkpoint with less.
    """
    step = _step_down(footprint, None)
    if step is None:
        return None
    smaller, what = step
    smaller.changes.append(f"{what}: ran out of memory")
    return smaller


def _step_down(fp: Footprint, longest: int | None) -> tuple[Footprint, str] | None:
    """One rung down the ladder (cheapest first), and what changed, in words."""
    changes = list(fp.changes)
    if not fp.grad_checkpoint:
        return replace(fp, grad_checkpoint=True, changes=changes), "grad checkpointing on"
    if fp.batch_size > 1:
        b = fp.batch_size // 2
        return replace(fp, batch_size=b, changes=changes), f"batch {fp.batch_size} -> {b}"
    seq = min(fp.max_seq_length, longest or fp.max_seq_length)
    if seq > SEQ_FLOOR:
        s = max(SEQ_FLOOR, seq // 2)
        what = f"max_seq_length {fp.max_seq_length} -> {s}"
        return replace(fp, max_seq_length=s, changes=changes), what
    return None


def memory_budget_gb(
    recipe: Recipe,
    fraction: float,
    *,
    total_bytes: int | None = None,
    working_set_bytes: int | None | Literal["probe"] = "probe",
) -> float:
    """``[memory] max_gb``, or ``fraction`` of physical memory capped at Metal's recommended
    working set: past it the GPU's memory is wired at the cost of the person's apps, and
    mlx-lm itself warns there (``mlx_lm/generate.py``, ``wired_limit``). On a 16 GB Mac the
    working set (about two thirds) is below 70 % of the memory."""
    if recipe.memory.max_gb is not None:
        return recipe.memory.max_gb
    if total_bytes is None:
        import psutil

        total_bytes = psutil.virtual_memory().total
    if working_set_bytes == "probe":
        working_set_bytes = metal_working_set_bytes()
    budget = total_bytes * fraction
    if working_set_bytes:
        budget = min(budget, working_set_bytes)
    return round(budget / GB, 2)


@functools.cache
def metal_working_set_bytes() -> int | None:
    """Metal's ``recommendedMaxWorkingSetSize`` through MLX; None without an Apple GPU."""
    if sys.platform != "darwin":
        return None
    try:
        import mlx.core as mx

        if not mx.metal.is_available():
            return None
        info = mx.device_info() if hasattr(mx, "device_info") else mx.metal.device_info()
    except Exception:  # no MLX, or Metal not reachable: no cap, the fraction alone
        return None
    return working_set_from(info)


def working_set_from(info: Mapping[str, object]) -> int | None:
    """``max_recommended_working_set_size`` from ``mx.device_info()`` (``mx.metal.device_info``
    in older MLX); a CPU device's info has none."""
    value = info.get("max_recommended_working_set_size")
    return int(value) if isinstance(value, (int, float)) and value > 0 else None


MIN_CACHE_GB = 0.25


M_MMAP_THRESHOLD = -3
"""glibc's ``mallopt`` parameter number (malloc.h)."""


def apply_mlx_limits(budget_gb: float, cache_gb: float | None = None) -> int:
    """Tell MLX the budget (what it may allocate besides the fixed overhead); returns bytes.

    MLX keeps freed buffers for reuse. Batches of varying length free buffers of many sizes,
    and an unbounded cache then holds gigabytes the Mac could use (2.3 GB RSS against 1.0 GB
    with a 256 MB cache, at the same speed, on the MLX bench model); ``cache_gb`` bounds it.
    """
    import mlx.core as mx

    limit = int(max(budget_gb - OVERHEAD_GB, 0.1) * GB)
    mx.set_memory_limit(limit)
    cache = limit // 4 if cache_gb is None else int(max(cache_gb, MIN_CACHE_GB) * GB)
    mx.set_cache_limit(min(cache, limit // 4))
    _return_large_frees_to_the_system()
    return limit


def _return_large_frees_to_the_system() -> None:
    """On Linux, MLX's CPU buffers come from glibc's malloc, which after the first large free
    raises its mmap threshold and from then on keeps freed blocks in its heap: the buffers the
    cache let go stay resident. A fixed threshold returns them (peak RSS 0.74 -> 0.65 GB on the
    MLX bench). Metal buffers on a Mac are not malloc's, and other C libraries have no mallopt."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024)
    except (OSError, AttributeError):
        pass


_OOM_MARKS = (
    "unable to allocate",  # [malloc] / [metal::malloc] when the system gives no buffer
    "resource limit",  # [metal::malloc] Resource limit (N) exceeded
    "maximum allowed buffer size",  # [metal::malloc] Attempting to allocate N bytes which is ...
    "out of memory",
    "outofmemory",  # kIOGPUCommandBufferCallbackErrorOutOfMemory
    "insufficient memory",
)


def is_out_of_memory(error: BaseException) -> bool:
    """Whether an exception from MLX means memory ran out (MLX raises plain RuntimeErrors)."""
    if isinstance(error, MemoryError):
        return True
    if not isinstance(error, (RuntimeError, ValueError)):
        return False
    text = str(error).lower()
    return any(mark in text for mark in _OOM_MARKS)


class MemoryGuard:
    """Holds MLX's peak against the budget at step boundaries.

    On Linux MLX's CPU allocator never enforces ``set_memory_limit``, and on a Mac it is a soft
    limit, so the guard is what actually turns "over budget" into :class:`OutOfMemory`.
    """

    def __init__(self, budget_gb: float, cache_gb: float | None = None):
        import mlx.core as mx

        self._mx = mx
        self.budget_gb = budget_gb
        self.limit = apply_mlx_limits(budget_gb, cache_gb)
        mx.reset_peak_memory()

    @property
    def peak_gb(self) -> float:
        return self._mx.get_peak_memory() / GB

    def check(self) -> None:
        if self._mx.get_peak_memory() > self.limit:
            raise OutOfMemory(
                f"MLX peak memory {self.peak_gb:.2f} GB went over the "
                f"{self.limit / GB:.2f} GB it may use ({self.budget_gb:g} GB budget)"
            )
