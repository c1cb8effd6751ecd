"""The MLX trainer: LoRA, DoRA and QLoRA on a language model, built from mlx-lm's pieces.

mlx-lm's ``train()`` cannot resume: every call starts at step 1 with a fresh optimizer and a new
data order, and it can only be stopped by raising out of it. A Mac must be able to pause
training for hours and go on where it stopped, so this module runs a small loop of its own
around mlx-lm's building blocks (model loading, ``linear_to_lora_layers``, the datasets,
``default_loss``, ``evaluate``, ``build_schedule``, the fuse helpers) and checkpoints what
decides the next step: adapter weights, optimizer state, step, and the data position. The
random key of each step is derived from (seed, step), so a resumed run draws the same dropout
masks as one that never stopped.

The loop is also faster than mlx-lm's at no more memory: batches group examples of similar
token length (mlx-lm sorts a chat dataset by its records' number of keys, which leaves the order
as it was) and pad to a multiple of 8 rather than 32, so far fewer padding tokens are computed.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm.generate import generate
from mlx_lm.tuner.callbacks import TrainingCallback
from mlx_lm.tuner.datasets import create_dataset
from mlx_lm.tuner.trainer import default_loss, evaluate, grad_checkpoint
from mlx_lm.tuner.utils import build_schedule, linear_to_lora_layers
from mlx_lm.utils import dequantize_model, load, save, save_config

from lorainbox.core.errors import DropError
from lorainbox.drop.recipe import LoraSpec, Recipe, TrainSpec
from lorainbox.models.base import check_model_dir, resolve_base_model
from lorainbox.trainers import samples
from lorainbox.trainers.base import (
    Emitter,
    OutOfMemory,
    Paused,
    TrainContext,
    TrainResult,
    total_steps,
)
from lorainbox.trainers.memory import MemoryGuard, estimate_for, is_out_of_memory
from lorainbox.trainers.pace import Pace, rounded

log = logging.getLogger(__name__)

ADAPTER_FILE = "adapters.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
"""mlx-lm's default when a recipe sets neither iters nor epochs."""
PAD_MULTIPLE = 8
KEEP_CHECKPOINTS = 2

Example = tuple[list[int], int]
"""Token ids and the offset where the loss starts (the prompt's length when it is masked)."""


def base_model_dir(ctx: TrainContext) -> Path:
    return ctx.base_model_dir or resolve_base_model(ctx.recipe.base_model, ctx.job_dir)


def replier(model: nn.Module, tokenizer: Any) -> samples.Generate:
    """Greedy replies of the model as it is at the time of each call."""

    def reply(messages: samples.Messages) -> str:
        if getattr(tokenizer, "chat_template", None):
            prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        else:
            prompt = tokenizer.encode("\n".join(m["content"] for m in messages) + "\n")
        return generate(model, tokenizer, prompt, max_tokens=samples.MAX_TOKENS)

    return reply


def load_base(path: Path) -> tuple[nn.Module, Any, dict[str, Any]]:
    """mlx-lm's model, tokenizer and config, with loading failures said as the person's problem."""
    check_model_dir(path)
    try:
        return load(str(path), return_config=True)
    except ValueError as e:
        if "not supported" in str(e):
            raise DropError.one(
                f"mlx-lm cannot load this architecture ({e})",
                str(path / "config.json"),
                'set trainer = "torch" in the recipe, or pick a model mlx-lm supports',
            ) from None
        raise DropError.one(
            f"the model folder could not be loaded ({e})",
            str(path),
            "download the model again, or check that its files belong together",
        ) from None


def add_adapters(model: nn.Module, lora: LoraSpec) -> int:
    """Freeze the base and put LoRA (or DoRA) layers where the recipe says; returns how many."""
    model.freeze()
    layers = len(model.layers)
    num = -1 if lora.num_layers < 0 or lora.num_layers > layers else lora.num_layers
    linear_to_lora_layers(model, num, lora_parameters(lora), use_dora=lora.fine_tune_type == "dora")
    adapted = sum(1 for _, m in model.named_modules() if hasattr(m, "lora_a"))
    if adapted == 0:
        names = sorted(
            {
                n
                for n, m in model.layers[0].named_modules()
                if isinstance(m, nn.Linear | nn.QuantizedLinear)
            }
        )
        raise DropError.one(
            f"no layer of the model matches [lora] keys = {lora.keys}",
            "recipe.toml, [lora] keys",
            f"use names of this model's linear layers: {', '.join(names)}",
        )
    return adapted


def lora_parameters(lora: LoraSpec) -> dict[str, Any]:
    params: dict[str, Any] = {
        "rank": lora.rank,
        "scale": lora.effective_scale,
        "dropout": lora.dropout,
    }
    if lora.keys:
        params["keys"] = list(lora.keys)
    return params


def load_examples(
    file: Path, tokenizer: Any, *, mask_prompt: bool, max_seq_length: int
) -> list[Example]:
    """Tokenize a chat / completions / text JSONL file with mlx-lm's dataset classes."""
    records = []
    with open(file, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DropError.one(
                    f"line {n} is not valid JSON ({e.msg})",
                    f"{file}, line {n}",
                    "make every line one JSON object",
                ) from None
    if not records:
        raise DropError.one("the data file is empty", str(file), "add examples, one per line")
    text_only = "text" in records[0] and "messages" not in records[0]
    config = types.SimpleNamespace(mask_prompt=mask_prompt and not text_only)
    try:
        dataset = create_dataset(records, tokenizer, config)
        processed = [dataset.process(r) for r in records]
    except (KeyError, TypeError, ValueError) as e:
        no_template = "chat_template" in str(e) or "chat template" in str(e)
        raise DropError.one(
            f"the examples could not be tokenized ({type(e).__name__}: {e})",
            str(file),
            "the base model has no chat template: use an instruct/chat model or text data"
            if no_template
            else 'use one format for every line: {"messages": [...]}, '
            '{"prompt": ..., "completion": ...} or {"text": ...}',
        ) from None
    examples = []
    for tokens, offset in processed:
        tokens = list(tokens)[:max_seq_length]
        if offset < len(tokens):
            examples.append((tokens, offset))
    if not examples:
        raise DropError.one(
            f"no example has anything to learn within max_seq_length = {max_seq_length} "
            "(the prompts fill it all)",
            str(file),
            "raise [train] max_seq_length, or shorten the prompts",
        )
    if dropped := len(processed) - len(examples):
        log.warning("%d examples of %s have no answer tokens within max_seq_length", dropped, file)
    return examples


class LengthBatches:
    """Batches of examples of similar token length, in an order fixed by (seed, epoch).

    Grouping by length keeps padding small; a batch's place depends only on (epoch, index),
    so a checkpoint stores the data position as two integers.
    """

    def __init__(self, examples: list[Example], batch_size: int, seed: int):
        order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))
        self.examples = examples
        self.groups = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        self.seed = seed
        self._perm: tuple[int, np.ndarray] | None = None
        self.rows: Callable[[list[int]], list[int]] = list
        """The rows of a batch this process trains on: all, or its share when data-parallel."""

    def __len__(self) -> int:
        return len(self.groups)

    def at(self, epoch: int, index: int) -> tuple[mx.array, mx.array]:
        if self._perm is None or self._perm[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._perm = (epoch, rng.permutation(len(self.groups)))
        return self.collate(self.rows(self.groups[int(self._perm[1][index])]))

    def in_order(self) -> list[tuple[mx.array, mx.array]]:
        return [self.collate(g) for g in self.groups]

    def collate(self, group: list[int]) -> tuple[mx.array, mx.array]:
        """Token ids padded to 1 + a multiple of 8, and the rows ``default_loss`` masks with.

        A row's second number is its last token's index, not its length: ``default_loss``
        keeps targets up to and including that index, so the length would also train every
        row to predict a padding token after its end (ml-explore/mlx-lm#1697).
        """
        rows = [self.examples[i] for i in group]
        longest = max(len(t) for t, _ in rows)
        width = 1 + PAD_MULTIPLE * math.ceil((longest - 1) / PAD_MULTIPLE)
        batch = np.zeros((len(rows), width), np.int32)
        for r, (tokens, _) in enumerate(rows):
            batch[r, : len(tokens)] = tokens
        lengths = np.array([[offset, len(tokens) - 1] for tokens, offset in rows], np.int32)
        return mx.array(batch), mx.array(lengths)


@dataclass
class Position:
    """Where training stands: optimizer steps taken and the next batch of the data order."""

    step: int = 0
    epoch: int = 0
    index: int = 0
    trained_tokens: int = 0

    def advance(self, batches_per_epoch: int) -> None:
        self.step += 1
        self.index += 1
        if self.index >= batches_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0


def learning_rate(train: TrainSpec, total: int) -> float | Callable[[mx.array], mx.array]:
    """The recipe's schedule through mlx-lm's ``build_schedule`` (warmup included)."""
    lr, warmup = train.learning_rate, train.warmup
    decay = max(1, total - warmup)
    if train.lr_schedule == "cosine":
        spec = {"name": "cosine_decay", "arguments": [lr, decay, 0.0]}
    elif train.lr_schedule == "linear":
        spec = {"name": "linear_schedule", "arguments": [lr, 0.0, decay]}
    elif warmup:
        spec = {"name": "exponential_decay", "arguments": [lr, 1.0]}  # constant after warmup
    else:
        return lr
    return build_schedule({**spec, "warmup": warmup})


# --- checkpoints ---------------------------------------------------------------------------


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint: only finished ones carry a ``step-`` name."""
    found = sorted(p for p in root.glob("step-*") if (p / "state.json").is_file())
    return found[-1] if found else None


def save_checkpoint(
    root: Path, model: nn.Module, optimizer: optim.Optimizer, pos: Position, meta: dict[str, Any]
) -> Path:
    """Write to a hidden folder, then rename: a checkpoint is either whole or absent."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{pos.step:08d}"
    tmp = root / f".partial-{pos.step:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    mx.save_safetensors(str(tmp / ADAPTER_FILE), dict(tree_flatten(model.trainable_parameters())))
    mx.save_safetensors(str(tmp / "optimizer.safetensors"), dict(tree_flatten(optimizer.state)))
    state = {"format": 1, **pos.__dict__, **meta}
    (tmp / "state.json").write_text(json.dumps(state, indent=2) + "\n")
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    for old in sorted(root.glob("step-*"))[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, model: nn.Module, optimizer: optim.Optimizer) -> Position:
    state = json.loads((path / "state.json").read_text())
    model.load_weights(str(path / ADAPTER_FILE), strict=False)
    optimizer.state = tree_unflatten(list(mx.load(str(path / "optimizer.safetensors")).items()))
    return Position(state["step"], state["epoch"], state["index"], state["trained_tokens"])


def rescale_position(pos: Position, saved_batches: int, batches: int) -> Position:
    """Keep the place in the epoch when a retry changed the batch size (so the batch count)."""
    if saved_batches == batches:
        return pos
    index = min(batches - 1, pos.index * batches // max(1, saved_batches))
    return Position(pos.step, pos.epoch, index, pos.trained_tokens)


def save_adapter(out: Path, model: nn.Module, recipe: Recipe, base: Path, steps: int) -> None:
    """The final adapter in mlx-lm's layout, so ``mlx_lm.generate --adapter-path`` takes it."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".partial-{ADAPTER_FILE}"  # mlx appends .safetensors to any other name
    mx.save_safetensors(str(tmp), dict(tree_flatten(model.trainable_parameters())))
    tmp.replace(out / ADAPTER_FILE)
    lora = recipe.lora
    save_config(
        {
            "model": str(base),
            "fine_tune_type": lora.fine_tune_type,
            "num_layers": lora.num_layers,
            "lora_parameters": lora_parameters(lora),
            "iters": steps,
            "batch_size": recipe.train.batch_size,
            "learning_rate": recipe.train.learning_rate,
            "max_seq_length": recipe.train.max_seq_length,
            "mask_prompt": recipe.train.mask_prompt,
            "seed": recipe.train.seed,
        },
        out / ADAPTER_CONFIG,
    )


# --- progress ------------------------------------------------------------------------------


class ProgressCallback(TrainingCallback):
    """mlx-lm's reporting callback, turned into the worker's ``progress`` JSON lines."""

    def __init__(self, emitter: Emitter, total: int, start_step: int):
        self.emitter = emitter
        self.total = total
        self.pace = Pace(start_step, total)
        self.last: dict[str, Any] = {}
        self.valid_loss: float | None = None

    def on_train_loss_report(self, train_info: dict[str, Any]) -> None:
        step = train_info["iteration"]
        self.last = {
            "train_loss": round(train_info["train_loss"], 5),
            "learning_rate": float(train_info["learning_rate"]),
            "tokens_per_second": round(train_info["tokens_per_second"], 1),
            "trained_tokens": train_info["trained_tokens"],
            "peak_memory_gb": round(train_info["peak_memory"], 3),
        }
        eta = self.pace.report(step)[1]
        self.emitter.progress(step=step, total=self.total, **self.last, eta_seconds=rounded(eta))

    def on_val_loss_report(self, val_info: dict[str, Any]) -> None:
        step = val_info["iteration"]
        self.valid_loss = val_info["val_loss"]
        self.emitter.progress(
            step=step,
            total=self.total,
            valid_loss=round(self.valid_loss, 5),
            **{k: v for k, v in self.last.items() if k != "train_loss"},
            eta_seconds=rounded(self.pace.eta(step)),
        )


# --- the trainer ---------------------------------------------------------------------------


class MLXTrainer:
    """The :class:`~lorainbox.trainers.base.Trainer` for MLX (Metal on a Mac, the CPU on Linux)."""

    name = "mlx"

    def __init__(self, *, compile_step: bool = True):
        self.compile_step = compile_step

    def train(self, ctx: TrainContext) -> TrainResult:
        recipe, fp, t = ctx.recipe, ctx.footprint, ctx.recipe.train
        base = base_model_dir(ctx)
        # A quarter of the step's estimated working set is plenty of buffer cache to reuse.
        guard = MemoryGuard(ctx.memory_budget_gb, cache_gb=estimate_for(base, recipe, fp) / 4)
        model, tokenizer, _ = load_base(base)
        writes = ctx.world.writes
        if writes:
            samples.before_training(ctx.work_dir, ctx.data_files, replier(model, tokenizer))
        mx.random.seed(t.seed)
        add_adapters(model, recipe.lora)

        def batches(file: Path) -> LengthBatches:
            path = file if file.is_absolute() else ctx.job_dir / file
            examples = load_examples(
                path, tokenizer, mask_prompt=t.mask_prompt, max_seq_length=fp.max_seq_length
            )
            return LengthBatches(examples, fp.batch_size, t.seed)

        train = batches(ctx.train_file)
        if ctx.world.spread:
            from lorainbox.trainers.mlx_dist import shard_rows

            train.rows = shard_rows(ctx.world, train.examples)
        valid = batches(ctx.valid_file).in_order() if ctx.valid_file is not None else []
        total = total_steps(t, len(train))
        optimizer = optim.Adam(learning_rate=learning_rate(t, total))
        pos = Position()
        if (ckpt := latest_checkpoint(ctx.checkpoint_dir)) is not None:
            saved = json.loads((ckpt / "state.json").read_text())["batches_per_epoch"]
            pos = rescale_position(load_checkpoint(ckpt, model, optimizer), saved, len(train))
            ctx.emitter.emit("resumed", step=pos.step, checkpoint=str(ckpt))
        if fp.grad_checkpoint:
            grad_checkpoint(model.layers[0])

        run = _Run(ctx, model, optimizer, train, valid, total, guard, self.compile_step)
        run.loop(pos)
        spread = {"distributed": ctx.world.summary()} if ctx.world.spread else {}
        if writes:
            save_adapter(ctx.adapter_dir, model, recipe, base, pos.step)
            model.eval()
            samples.after_training(ctx.work_dir, replier(model, tokenizer))
        return TrainResult(
            adapter_dir=ctx.adapter_dir,
            steps=pos.step,
            final_train_loss=run.callback.last.get("train_loss"),
            final_valid_loss=run.callback.valid_loss,
            extra={
                "trainer": self.name,
                "device": "gpu" if mx.default_device() == mx.gpu else "cpu",
                "peak_memory_gb": round(guard.peak_gb, 3),
                "base_model": str(base),
                **spread,
            },
        )

    def fuse(self, ctx: TrainContext) -> Path:
        """Merge the adapter into a dequantized copy of the base, saved in Hugging Face format."""
        return fuse_adapter(base_model_dir(ctx), ctx.adapter_dir, ctx.fused_dir)


class _Run:
    """One training session: steps from a position to the total, reporting and checkpointing.

    The only host syncs are ``mx.eval`` of each step (which bounds the graph) and the
    ``.item()`` calls at report time.
    """

    def __init__(
        self,
        ctx: TrainContext,
        model: nn.Module,
        optimizer: optim.Optimizer,
        train: LengthBatches,
        valid: list[tuple[mx.array, mx.array]],
        total: int,
        guard: MemoryGuard,
        compile_step: bool,
    ):
        self.ctx, self.model, self.optimizer = ctx, model, optimizer
        self.train, self.valid, self.total, self.guard = train, valid, total, guard
        self.t = ctx.recipe.train
        self.callback = ProgressCallback(ctx.emitter, total, 0)
        self.state = [model.state, optimizer.state, mx.random.state]
        loss_and_grad = nn.value_and_grad(model, default_loss)

        def step(batch: mx.array, lengths: mx.array) -> tuple[mx.array, mx.array]:
            (loss, ntoks), grad = loss_and_grad(model, batch, lengths)
            optimizer.update(model, grad)
            return loss, ntoks

        if ctx.world.spread:
            from lorainbox.trainers.mlx_dist import make_step

            step = make_step(model, optimizer, ctx.world)

        self.step = (
            mx.compile(step, inputs=self.state, outputs=self.state) if compile_step else step
        )

    def loop(self, pos: Position) -> None:
        t, ctx = self.t, self.ctx
        self.callback.pace = Pace(pos.step, self.total)
        self.ctx.world.start_clock()
        if self.valid and pos.step == 0:
            self.evaluate(0)
        self.model.train()
        losses: list[mx.array] = []
        tokens: list[mx.array] = []
        window = time.perf_counter()
        while pos.step < self.total:
            if ctx.stop_requested():
                self.checkpoint(pos)
                raise Paused(pos.step)
            batch, lengths = self.train.at(pos.epoch, pos.index)
            mx.random.seed(t.seed * 1_000_003 + pos.step)  # dropout masks depend on the step only
            try:
                loss, ntoks = self.step(batch, lengths)
                mx.eval(self.state, loss, ntoks)
            except (RuntimeError, ValueError, MemoryError) as e:
                if is_out_of_memory(e):
                    raise OutOfMemory(str(e)) from e
                raise
            losses.append(loss)
            tokens.append(ntoks)
            self.callback.pace.add()  # mlx-lm's report measures the speed itself
            pos.advance(len(self.train))
            try:
                self.guard.check()
            except OutOfMemory:
                self.checkpoint(pos)
                raise
            step = pos.step
            if step % t.steps_per_report == 0 or step == self.total:
                self.report(pos, losses, tokens, time.perf_counter() - window)
                losses, tokens = [], []
            if self.valid and (step % t.steps_per_eval == 0 or step == self.total):
                self.evaluate(step)
            if step % t.save_every == 0 or step == self.total:
                self.checkpoint(pos)
            if not losses:
                window = time.perf_counter()

    def report(
        self, pos: Position, losses: list[mx.array], tokens: list[mx.array], seconds: float
    ) -> None:
        n = int(mx.stack(tokens).sum().item())
        pos.trained_tokens += n
        lr = self.optimizer.learning_rate
        self.callback.on_train_loss_report(
            {
                "iteration": pos.step,
                "train_loss": mx.stack(losses).mean().item(),
                "learning_rate": lr.item() if isinstance(lr, mx.array) else lr,
                "iterations_per_second": len(losses) / seconds,
                "tokens_per_second": n / seconds,
                "trained_tokens": pos.trained_tokens,
                "peak_memory": self.guard.peak_gb,
            }
        )

    def evaluate(self, step: int) -> None:
        tic = time.perf_counter()
        loss = evaluate(
            model=self.model,
            dataset=None,
            batch_size=self.ctx.footprint.batch_size,
            num_batches=self.t.val_batches,
            iterate_batches=lambda **_: iter(self.valid),
        )
        self.model.train()
        self.callback.on_val_loss_report(
            {"iteration": step, "val_loss": loss, "val_time": time.perf_counter() - tic}
        )

    def checkpoint(self, pos: Position) -> None:
        if not self.ctx.world.writes:
            return
        meta = {"batches_per_epoch": len(self.train), "total": self.total, "seed": self.t.seed}
        path = save_checkpoint(self.ctx.checkpoint_dir, self.model, self.optimizer, pos, meta)
        self.ctx.emitter.emit("checkpoint", step=pos.step, path=str(path))


def fuse_adapter(base: Path, adapter_dir: Path, out: Path) -> Path:
    """Fused weights (never quantized: llama.cpp and transformers read plain floats), config and
    tokenizer files, written beside ``out`` and renamed into place."""
    model, tokenizer, config = load(str(base), adapter_path=str(adapter_dir), return_config=True)
    fused = [(n, m.fuse(dequantize=True)) for n, m in model.named_modules() if hasattr(m, "fuse")]
    if fused:
        model.update_modules(tree_unflatten(fused))
    model = dequantize_model(model)
    config.pop("quantization", None)
    config.pop("quantization_config", None)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    save(tmp, str(base), model, tokenizer, config, donate_model=False)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out
