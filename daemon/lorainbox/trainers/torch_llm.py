"""LoRA for language models with transformers + PEFT, on MPS, CUDA or the CPU.

MLX is the first choice on a Mac; this trainer serves where MLX cannot (an architecture mlx-lm
lacks, a Linux box with a GPU) and reads the same data (mlx-lm's chat, completions and text
JSONL), reports the same progress lines and writes a PEFT adapter that fuses into a Hugging Face
folder for llama.cpp's converter. Speed comes from wasting nothing: batches grouped by length,
the output head run only on the tokens that are trained, SDPA attention, bfloat16 and fused AdamW
on CUDA, and no host synchronisation between reports. Each of these is a switch in
:class:`SpeedOptions`, so the benchmark can show what it buys.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import shutil
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lorainbox.core.errors import DropError
from lorainbox.drop.recipe import LoraSpec, Recipe, TrainSpec
from lorainbox.models.base import BASE_WHERE, check_model_dir, resolve_base_model
from lorainbox.trainers import samples
from lorainbox.trainers.base import Footprint, TrainContext, TrainResult, total_steps
from lorainbox.trainers.batches import by_length
from lorainbox.trainers.loop import Loop, Step
from lorainbox.trainers.torch_common import (
    DeviceSetup,
    MPSFallbackLog,
    atomic_replace_dir,
    checkpoint_activations,
    empty_cache,
    lora_alpha,
    make_optimizer,
    make_scheduler,
    out_of_memory_guard,
    seed_everything,
    setup_device,
)

log = logging.getLogger(__name__)

IGNORE = -100
DEFAULT_SCALE = 20.0
"""mlx-lm's LoRA scale when the recipe sets neither scale nor alpha."""

ARCH_TARGETS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(
        ("llama", "qwen2", "qwen3", "mistral", "gemma", "gemma2", "gemma3_text"),
        ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    ),
    "phi3": ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
}
"""Attention and MLP projections by ``model_type``; other architectures get PEFT's all-linear."""


@dataclass(frozen=True)
class SpeedOptions:
    """Switches for what makes training fast; all on by default except ``compile``."""

    group_by_length: bool = True
    """Sort examples by length within shuffled windows, so batches carry little padding."""
    sparse_logits: bool = True
    """Run the output head only where a token is trained (not on prompts or padding)."""
    sdpa: bool = True
    """``attn_implementation="sdpa"`` (flash/memory-efficient kernels) instead of eager."""
    bf16: bool = True
    """On CUDA: bfloat16 frozen weights and autocast; LoRA weights stay float32."""
    fused_adamw: bool = True
    defer_sync: bool = True
    """Keep the loss on the device between reports instead of reading it every step."""
    skip_adapter_upcast: bool = True
    """Under autocast, skip PEFT's cast of each adapter's input to float32 (autocast casts it
    straight back to bfloat16 for the matmul): two kernels and a copy saved per adapted layer."""
    unmasked_padding: bool = True
    """Leave the padding mask out: with right padding no real token attends to a later pad and
    no pad is trained, so the loss is the same, and SDPA can take its causal flash kernel
    instead of the masked one (1.5x the step speed of a 1B model on an H100)."""
    no_cudnn_attention: bool = True
    """On CUDA, keep SDPA to its flash and memory-efficient kernels. cuDNN's attention (first
    choice on Hopper) builds an execution plan for every new batch shape, and length-grouped
    batches bring a new shape most steps."""
    compile: bool | None = None
    """``torch.compile`` the decoder layers, once for every batch shape (dynamic shapes). Eager
    PyTorch dispatches ~5,500 operators for a 22-layer model's step, compiled layers ~750: the
    step of a 1B model on a fast GPU waits on that dispatch, not on the math. Evaluation and
    sample replies stay eager (compiling them too would cost more than they take). ``None``
    compiles where it pays, see :meth:`compiles`."""
    cuda_graphs: bool = False
    """With compiled layers on CUDA: one static graph per padded batch width, replayed as a CUDA
    graph. The compiled step still waits on Python launching its kernels (an H100 profile: 0.098
    s a step for 0.036 s of kernels; with graphs 0.046 s); a graph launches them all at once.
    Costs a compile and a recording for each width (up to ``max_seq_length / pad_multiple``),
    so off until the bench shows it pays; off with gradient checkpointing, whose recomputation
    runs outside the graphs."""
    pad_multiple: int = 64
    """Pad batch lengths to a multiple of this on CUDA: few distinct shapes for the kernels'
    per-shape choices and the caching allocator. With cuDNN attention off, 64 and 8 measure
    alike on an H100 (2.70x vs 2.37x HF in one 40-step run, 1.77x vs 1.89x as medians of 3
    80-step rounds); 64 also keeps cuDNN's attention fast if it is switched back on (2.27x)."""

    def compiles(self, device_kind: str, steps: int) -> bool:
        """``compile`` if set, else on CUDA for runs of :data:`COMPILE_MIN_STEPS` or more.

        On an H100 compiling a 1B model's layers costs about a minute once and then saves 0.043
        s a step (1.35x tokens/s, 0.80x peak memory), paid back after ~1,500 steps. MPS's
        inductor backend is a prototype and CPU runs are small, so they stay eager."""
        if self.compile is not None:
            return self.compile
        return device_kind == "cuda" and steps >= COMPILE_MIN_STEPS


COMPILE_MIN_STEPS = 1500


# --- data -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    ids: list[int]
    offset: int
    """Index of the first token that is trained; tokens before it are prompt (masked)."""

    @property
    def targets(self) -> int:
        return len(self.ids) - max(self.offset, 1)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DropError.one(
            f"cannot read the training data ({e})", str(path), "check the file is UTF-8 JSONL"
        ) from None
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DropError.one(
                f"line is not valid JSON ({e.msg})",
                f"{path}, line {i}",
                "write one JSON object per line",
            ) from None
        if not isinstance(row, dict):
            raise DropError.one("line is not a JSON object", f"{path}, line {i}", "use {...}")
        rows.append(row)
    return rows


def tokenize_row(row: dict[str, Any], tokenizer: Any, mask_prompt: bool) -> Example:
    """One example in mlx-lm's formats: ``messages``, ``prompt``/``completion`` or ``text``."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if "messages" in row:
        messages = row["messages"]
        tools = row.get("tools")
        ids = _chat_ids(tokenizer, messages, tools=tools)
        offset = 0
        if mask_prompt and messages and messages[-1].get("role") == "assistant":
            offset = len(_chat_ids(tokenizer, messages[:-1], tools=tools, generation_prompt=True))
        return Example(ids, offset)
    if "prompt" in row and "completion" in row:
        if has_template:
            messages = [
                {"role": "user", "content": row["prompt"]},
                {"role": "assistant", "content": row["completion"]},
            ]
            return tokenize_row({"messages": messages}, tokenizer, mask_prompt)
        prompt = tokenizer(row["prompt"]).input_ids
        rest = tokenizer(row["completion"], add_special_tokens=False).input_ids
        return Example(_with_eos(prompt + rest, tokenizer), len(prompt) if mask_prompt else 0)
    if "text" in row:
        return Example(_with_eos(tokenizer(row["text"]).input_ids, tokenizer), 0)
    raise ValueError('no "messages", "prompt"/"completion" or "text" key')


def _chat_ids(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    *,
    tools: Any = None,
    generation_prompt: bool = False,
) -> list[int]:
    ids = tokenizer.apply_chat_template(
        messages, tools=tools, add_generation_prompt=generation_prompt, return_dict=False
    )
    return list(ids)


def _with_eos(ids: list[int], tokenizer: Any) -> list[int]:
    eos = tokenizer.eos_token_id
    return ids if eos is None or (ids and ids[-1] == eos) else [*ids, eos]


def tokenize_file(path: Path, tokenizer: Any, max_len: int, mask_prompt: bool) -> list[Example]:
    """All examples of a JSONL file, cut to ``max_len``; ones left with nothing to learn go."""
    examples, empty = [], 0
    for i, row in enumerate(read_jsonl(path), 1):
        try:
            ex = tokenize_row(row, tokenizer, mask_prompt)
        except (ValueError, KeyError, TypeError) as e:
            raise DropError.one(
                f"cannot turn this example into tokens ({e})",
                f"{path}, example {i}",
                'use mlx-lm\'s formats: {"messages": [...]}, {"prompt", "completion"} or {"text"}',
            ) from None
        ex = truncate(ex, max_len)
        if ex is None:
            empty += 1
        else:
            examples.append(ex)
    if empty:
        log.warning(
            "%d examples in %s have no answer within %d tokens; skipped", empty, path, max_len
        )
    if not examples:
        raise DropError.one(
            f"no example has anything to learn within max_seq_length = {max_len} tokens",
            str(path),
            "raise [train] max_seq_length, or shorten the prompts",
        )
    return examples


def truncate(ex: Example, max_len: int) -> Example | None:
    ids = ex.ids[:max_len]
    if len(ids) < 2 or max(ex.offset, 1) >= len(ids):
        return None
    return Example(ids, ex.offset)


def planned_steps(train: TrainSpec, examples: int) -> int:
    """The run's optimizer steps: ``iters``, or ``epochs`` over batches of the recipe's size."""
    return total_steps(train, math.ceil(examples / train.batch_size))


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    """None when nothing is padded: SDPA then takes its fastest (causal) path."""
    targets: torch.Tensor
    """Next-token labels aligned with ``input_ids`` (shifted already), -100 where untrained."""
    target_index: torch.Tensor
    """Flat positions of the trained tokens, and their labels: the sparse head needs only these."""
    target_values: torch.Tensor
    tokens: int
    n_targets: int

    def to(self, device: torch.device) -> Batch:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        return replace(
            self,
            input_ids=move(self.input_ids),
            attention_mask=move(self.attention_mask),
            targets=move(self.targets),
            target_index=move(self.target_index),
            target_values=move(self.target_values),
        )


def collate(
    examples: Sequence[Example], pad_id: int, pad_multiple: int = 1, *, padding_mask: bool = True
) -> Batch:
    """Right-padded batch; labels are shifted here, on the host, so the device never waits."""
    width = max(len(e.ids) for e in examples)
    width = math.ceil(width / pad_multiple) * pad_multiple
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    targets = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for row, ex in enumerate(examples):
        n = len(ex.ids)
        seq = torch.tensor(ex.ids, dtype=torch.long)
        ids[row, :n] = seq
        mask[row, :n] = 1
        first = max(ex.offset, 1)
        targets[row, first - 1 : n - 1] = seq[first:]
    flat = targets.view(-1)
    index = torch.nonzero(flat != IGNORE).view(-1)
    tokens = int(mask.sum())
    padded = tokens != mask.numel()
    pin = torch.cuda.is_available()
    tensors = [t.pin_memory() if pin else t for t in (ids, mask, targets, index, flat[index])]
    return Batch(
        tensors[0],
        tensors[1] if padded and padding_mask else None,
        tensors[2],
        tensors[3],
        tensors[4],
        tokens,
        int(index.numel()),
    )


# --- model --------------------------------------------------------------------------------


def lora_config(lora: LoraSpec, model_type: str, num_hidden_layers: int) -> Any:
    """PEFT's LoraConfig from the recipe's [lora] table."""
    from peft import LoraConfig

    targets: list[str] | str
    if lora.keys:
        targets = list(lora.keys)
    elif model_type in ARCH_TARGETS:
        targets = list(ARCH_TARGETS[model_type])
    else:
        targets = "all-linear"
    layers = None
    if 0 <= lora.num_layers < num_hidden_layers:
        layers = list(range(num_hidden_layers - lora.num_layers, num_hidden_layers))
    if lora.num_layers == 0:
        raise DropError.one(
            "num_layers = 0 adapts no layer",
            "recipe.toml, [lora] num_layers",
            "use a positive number of layers, or -1 for all",
        )
    return LoraConfig(
        r=lora.rank,
        lora_alpha=lora_alpha(lora, DEFAULT_SCALE),
        lora_dropout=lora.dropout,
        target_modules=targets,
        layers_to_transform=layers,
        use_dora=lora.fine_tune_type == "dora",
        task_type="CAUSAL_LM",
    )


def lora_signature(recipe: Recipe, config: Any) -> dict[str, Any]:
    """What a checkpoint must share with the current run to be resumed."""
    targets = config.target_modules
    return {
        "base_model": recipe.base_model,
        "rank": config.r,
        "alpha": config.lora_alpha,
        "targets": sorted(targets) if isinstance(targets, (set, list)) else targets,
        "layers": config.layers_to_transform,
        "dora": config.use_dora,
    }


def check_torch_loadable(config: dict[str, Any], model_dir: Path) -> None:
    if config.get("quantization") or (
        "quantization_config" in config
        and config["quantization_config"].get("quant_method") not in ("bitsandbytes",)
        and "bits" in config["quantization_config"]
    ):
        raise DropError.one(
            "the base model is quantized for MLX; the PyTorch trainer needs unquantized weights",
            f"{BASE_WHERE} ({model_dir})",
            'use the original (bf16/fp16) model, or set trainer = "mlx" on a Mac',
        )


def load_base(model_dir: Path, setup: DeviceSetup, options: SpeedOptions) -> Any:
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(
        model_dir,
        dtype=setup.weight_dtype,
        attn_implementation="sdpa" if options.sdpa else "eager",
    )
    model.config.use_cache = False
    if setup.kind == "cuda" and options.no_cudnn_attention:
        torch.backends.cuda.enable_cudnn_sdp(False)
    return model.to(setup.device)


def loss_sum(model: Any, batch: Batch, sparse: bool) -> torch.Tensor:
    """Summed cross-entropy over the trained tokens (the caller divides by their count)."""
    if sparse:
        base = model.get_base_model()
        hidden = base.get_decoder()(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False
        ).last_hidden_state
        picked = hidden.flatten(0, 1).index_select(0, batch.target_index)
        logits = base.get_output_embeddings()(picked)
        return F.cross_entropy(logits.float(), batch.target_values, reduction="sum")
    logits = model(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False
    ).logits
    return F.cross_entropy(
        logits.flatten(0, 1).float(), batch.targets.flatten(), ignore_index=IGNORE, reduction="sum"
    )


def supports_sparse_logits(config: Any) -> bool:
    """Models that post-process logits (soft-capping, scaling) go through their own head."""
    text = getattr(config, "text_config", None) or config
    return not (
        getattr(text, "final_logit_softcapping", None) or getattr(text, "logit_scale", None)
    )


# --- trainer ------------------------------------------------------------------------------


class TorchLLMTrainer:
    """The :class:`~lorainbox.trainers.base.Trainer` for language models on PyTorch."""

    name = "torch"

    def __init__(
        self,
        options: SpeedOptions | None = None,
        on_step: Callable[[int, int], None] | None = None,
    ):
        self.options = options or SpeedOptions()
        self.on_step = on_step
        """Called after each optimizer step with (step, real tokens); the benchmark times it."""

    def train(self, ctx: TrainContext) -> TrainResult:
        recipe, t, opts = ctx.recipe, ctx.recipe.train, self.options
        setup = setup_device(t.device, ctx.memory_budget_gb, bf16=opts.bf16)
        seed_everything(t.seed)
        model_dir = ctx.base_model_dir or resolve_base_model(recipe.base_model, ctx.job_dir)
        hf_config = check_model_dir(model_dir)
        check_torch_loadable(hf_config, model_dir)

        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        pad_id = _pad_id(tokenizer)
        fp = self._footprint(ctx, setup)
        max_len = min(t.max_seq_length, fp.max_seq_length)
        train_set = tokenize_file(ctx.in_job(ctx.train_file), tokenizer, max_len, t.mask_prompt)
        valid_set = []
        if ctx.valid_file is not None and ctx.in_job(ctx.valid_file).exists():
            valid_set = tokenize_file(ctx.in_job(ctx.valid_file), tokenizer, max_len, t.mask_prompt)
        empty_cache(setup.device)

        with out_of_memory_guard(setup.device):
            compiled = opts.compiles(setup.kind, planned_steps(t, len(train_set)))
            model = self._model(model_dir, hf_config, setup, recipe.lora, fp, compiled)
            writes = ctx.world.writes
            if writes:
                ask_base = replier(model, tokenizer, setup, base_only=True)
                samples.before_training(ctx.work_dir, ctx.data_files, ask_base)
            run = _Run(
                self, ctx, setup, model, tokenizer, train_set, valid_set, fp, pad_id, compiled
            )
            fallbacks = MPSFallbackLog() if setup.kind == "mps" else None
            model.train()
            with fallbacks or contextlib.nullcontext():
                run.loop.run()
            spread = ctx.world.summary() if ctx.world.spread else None
            if writes:
                run.loop.save_adapter()
                samples.after_training(ctx.work_dir, replier(model, tokenizer, setup))
        empty_cache(setup.device)
        extra = {
            "trainer": self.name,
            "device": setup.kind,
            "footprint": asdict(fp),
            "compiled": compiled,
            "cuda_graphs": run.graphs,
            "peak_memory_gb": round(run.loop.meter.peak_gb(), 3),
        }
        if fallbacks is not None:
            extra["mps_fallback_ops"] = fallbacks.ops
        if spread is not None:
            extra["distributed"] = spread
        loop = run.loop
        return TrainResult(
            ctx.adapter_dir, loop.step, loop.last_train_loss, loop.last_valid_loss, extra
        )

    def _footprint(self, ctx: TrainContext, setup: DeviceSetup) -> Footprint:
        """The worker's footprint (its memory guard planned it), checkpointing on for MPS."""
        fp = replace(ctx.footprint, changes=list(ctx.footprint.changes))
        if setup.grad_checkpoint_default and not fp.grad_checkpoint:
            change = "grad checkpointing on (MPS shares memory with the whole Mac)"
            fp = replace(fp, grad_checkpoint=True, changes=[*fp.changes, change])
        return fp

    def _model(
        self,
        model_dir: Path,
        hf_config: dict[str, Any],
        setup: DeviceSetup,
        lora: LoraSpec,
        fp: Footprint,
        compiled: bool = False,
    ) -> Any:
        from peft import get_peft_model

        base = load_base(model_dir, setup, self.options)
        text = hf_config.get("text_config") or hf_config
        config = lora_config(lora, hf_config.get("model_type", ""), int(text["num_hidden_layers"]))
        with peft_quietly():
            model = get_peft_model(base, config)
        if setup.autocast_dtype is not None and self.options.skip_adapter_upcast:
            for module in model.modules():
                if hasattr(module, "cast_input_dtype_enabled"):
                    module.cast_input_dtype_enabled = False
        if fp.grad_checkpoint:
            checkpoint_activations(model)
        if compiled:
            from torch.fx.experimental import _config as shapes_config

            # Without duck shapes a batch as wide as the hidden size or a head (64 here, where
            # widths are multiples of 64) does not pin the width and compile everything again.
            shapes_config.use_duck_shape = False
            graphs = self.graphs(fp)
            if graphs:  # a static graph per width (two: the first layer has its own), and
                # past dynamo's limit of 8 the layers would quietly run eagerly
                pad = self.options.pad_multiple if setup.kind == "cuda" else 1
                widths = min(512, math.ceil(fp.max_seq_length / pad))
                limit = torch._dynamo.config.recompile_limit
                torch._dynamo.config.recompile_limit = max(limit, 2 * widths + 8)
            for layer in model.get_base_model().get_decoder().layers:
                if graphs:
                    layer.compile(dynamic=False, mode="reduce-overhead")
                else:
                    layer.compile(dynamic=True)
        return model

    def graphs(self, fp: Footprint) -> bool:
        """Whether compiled layers replay CUDA graphs (:attr:`SpeedOptions.cuda_graphs`)."""
        return self.options.cuda_graphs and not fp.grad_checkpoint

    def fuse(self, ctx: TrainContext) -> Path:
        """Merge the adapter into the base and write a Hugging Face folder llama.cpp converts."""
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        model_dir = ctx.base_model_dir or resolve_base_model(ctx.recipe.base_model, ctx.job_dir)
        if not (ctx.adapter_dir / "adapter_config.json").is_file():
            raise DropError.one(
                "there is no trained adapter to fuse",
                str(ctx.adapter_dir),
                "train the job again (`lorainbox retry NAME`)",
            )
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto")
        with peft_quietly():
            merged = PeftModel.from_pretrained(base, ctx.adapter_dir).merge_and_unload()
        merged.config.use_cache = True

        tokenizer = AutoTokenizer.from_pretrained(model_dir)

        def build(folder: Path) -> None:
            merged.save_pretrained(folder, safe_serialization=True)
            # Saved as mlx-lm saves it (tokenizer.json), the form export/converter.py mends for
            # llama.cpp. Copying the base's files kept its tokenizer.model, from which the
            # converter did not make <|im_start|> a special token: the GGUF read the chat's
            # first token as text and answered garbage.
            tokenizer.save_pretrained(folder)
            for extra in model_dir.glob("*.tiktoken"):
                shutil.copy(extra, folder / extra.name)

        return atomic_replace_dir(build, ctx.fused_dir)


@contextlib.contextmanager
def peft_quietly() -> Iterator[None]:
    """PEFT reads ``is_gradient_checkpointing``, which transformers 5 deprecated: a FutureWarning
    in every train.log that the person can do nothing about."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated")
        yield


def _fingerprint(path: Path) -> str:
    """The training data's identity: a checkpoint's data position means nothing for other data."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def replier(
    model: Any, tokenizer: Any, setup: DeviceSetup, *, base_only: bool = False
) -> samples.Generate:
    """Greedy replies of the PEFT model, or of its base with the adapter switched off.

    They run under the step's precision (:meth:`DeviceSetup.autocast`): on CUDA the frozen
    weights are bfloat16 and the adapters float32, and with ``skip_adapter_upcast`` only
    autocast brings the two to one dtype (without it: "expected mat1 and mat2 to have the same
    dtype")."""
    device = setup.device

    @torch.no_grad()
    def reply(messages: samples.Messages) -> str:
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False
            )
        else:
            text = "\n".join(m["content"] for m in messages) + "\n"
        enc = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(device)
        was_training = model.training
        model.eval()
        try:
            adapter = model.disable_adapter() if base_only else contextlib.nullcontext()
            with eager(), setup.autocast(), adapter:
                out = model.generate(
                    **enc,
                    max_new_tokens=samples.MAX_TOKENS,
                    do_sample=False,
                    pad_token_id=_pad_id(tokenizer),
                    use_cache=True,
                )
        finally:
            model.train(was_training)
        return tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)

    return reply


def eager() -> contextlib.AbstractContextManager[Any]:
    """Compiled layers run eagerly inside: generation and evaluation are not worth a compile."""
    return torch.compiler.set_stance("force_eager")


def _pad_id(tokenizer: Any) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


class _Run:
    """One training run's own part of the loop (a :class:`~lorainbox.trainers.loop.Task`):
    length-grouped batches in slices, the step's loss, evaluation, the PEFT adapter."""

    unit = "tokens"
    rate_digits = 1

    def __init__(
        self,
        trainer: TorchLLMTrainer,
        ctx: TrainContext,
        setup: DeviceSetup,
        model: Any,
        tokenizer: Any,
        train_set: list[Example],
        valid_set: list[Example],
        fp: Footprint,
        pad_id: int,
        compiled: bool = False,
    ):
        self.trainer, self.ctx, self.setup, self.model = trainer, ctx, setup, model
        self.opts = trainer.options
        self.t = ctx.recipe.train
        self.tokenizer = tokenizer
        self.train_set, self.valid_set, self.fp, self.pad_id = train_set, valid_set, fp, pad_id
        self.lengths = [len(e.ids) for e in train_set]
        self.micro = min(fp.batch_size, self.t.batch_size)
        """Examples per forward pass; a step still takes the recipe's batch, in slices if smaller."""
        self.sparse = self.opts.sparse_logits and supports_sparse_logits(model.config)
        self.graphs = compiled and trainer.graphs(fp)
        self.pad_multiple = self.opts.pad_multiple if setup.kind == "cuda" else 1
        total = planned_steps(self.t, len(train_set))
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = make_optimizer(
            params, self.t.learning_rate, setup.device, fused=self.opts.fused_adamw
        )
        signature = {
            **lora_signature(ctx.recipe, model.peft_config["default"]),
            "data": _fingerprint(ctx.in_job(ctx.train_file)),
        }
        self.loop = Loop(
            ctx,
            self,
            params,
            optimizer,
            make_scheduler(optimizer, self.t, total),
            total,
            signature,
            setup.device,
            evaluate=self.evaluate if valid_set else None,
            defer_sync=self.opts.defer_sync,
            on_step=trainer.on_step,
        )

    def plan(self, epoch: int) -> list[list[int]]:
        return by_length(
            self.lengths, self.t.batch_size, self.t.seed, epoch, self.opts.group_by_length
        )

    def lora_tensors(self) -> dict[str, torch.Tensor]:
        from peft import get_peft_model_state_dict

        return get_peft_model_state_dict(self.model)

    def load_lora_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(self.model, tensors)

    def write_adapter(self, folder: Path) -> None:
        self.model.save_pretrained(folder, safe_serialization=True)

    def step(self, batch: list[int]) -> Step:
        """The recipe's batch in slices the footprint allows, weighted by the whole batch's
        trained tokens (this rank's share of them, when data-parallel).

        Epochs are planned in whole recipe batches, so a footprint shrunk after an
        out-of-memory retry trains on exactly the examples it would have seen.
        """
        idx = sorted(batch, key=self.lengths.__getitem__)
        n_targets = sum(self.train_set[i].targets for i in idx)
        tokens = sum(self.lengths[i] for i in idx)
        idx = self.ctx.world.shard(idx)
        micro = [
            collate(
                [self.train_set[i] for i in idx[s : s + self.micro]],
                self.pad_id,
                self.pad_multiple,
                padding_mask=not self.opts.unmasked_padding,
            )
            for s in range(0, len(idx), self.micro)
        ]
        losses = []
        for part in micro:
            part = part.to(self.setup.device)
            if self.graphs:  # the last replay's outputs are done with (backward ran)
                torch.compiler.cudagraph_mark_step_begin()
            with self.setup.autocast():
                summed = loss_sum(self.model, part, self.sparse)
            (summed / n_targets).backward()
            losses.append(summed.detach())
        self.ctx.world.local_tokens += sum(b.tokens for b in micro)
        return Step(losses, n_targets, tokens)

    @torch.no_grad()
    def evaluate(self) -> float:
        """Token-weighted loss on the first ``val_batches`` batches of the validation set."""
        model, device = self.model, self.setup.device
        model.eval()
        order = sorted(range(len(self.valid_set)), key=lambda i: len(self.valid_set[i].ids))
        batches = [order[i : i + self.micro] for i in range(0, len(order), self.micro)]
        if self.t.val_batches >= 0:
            batches = batches[: max(1, self.t.val_batches)]
        total = torch.zeros((), device=device)
        count = 0
        for idx in batches:
            batch = collate(
                [self.valid_set[i] for i in idx],
                self.pad_id,
                self.pad_multiple,
                padding_mask=not self.opts.unmasked_padding,
            )
            with eager(), self.setup.autocast():
                total += loss_sum(model, batch.to(device), self.sparse).float()
            count += batch.n_targets
        model.train()
        return float(total.item()) / max(count, 1)
