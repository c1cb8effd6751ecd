"""Our PyTorch LLM LoRA trainer against HF PEFT + transformers' Trainer (and Unsloth, if installed).

Same model (a ~1.1B LLaMA-shaped model with random weights, TinyLlama's dimensions; a tiny
one with --tiny), same synthetic chat data of widely varying lengths, same LoRA (rank 16 on all
seven projections of every layer), batch, sequence limit, learning rate and schedule. Each arm
runs in its own process, so peak memory and compiled state never leak between arms. Reported:
real (unpadded) tokens per second, seconds per step and peak memory (CUDA's allocator peak, or
the process's peak RSS on the CPU), after warm-up steps that are not timed.

    python bench/torch_llm_vs_peft.py --out results/llm.json          # CUDA, all arms + ablations
    python bench/torch_llm_vs_peft.py --tiny --out /tmp/llm-tiny.json  # CPU smoke test (< 1 min)
    python bench/torch_llm_vs_peft.py --arms hf-peft-trainer,ours --repeat 3 --steps 80

Arm sets (``--sets full,chats``): the same model against the plain PEFT loop (no Trainer: the
loop a person writes, ``peft-loop``, and with its decoder layers compiled, ``peft-loop+compile``)
in two settings, each reported with real tokens/s, peak memory and MFU (model FLOPs per token,
see :func:`flops_per_token`, over ``--peak-tflops``, 790 for an H200's dense bf16):

- ``full``: every example a full 1024-token sequence, all of it trained, batch 8 (the anchor's
  setting); arms: peft-loop, ours+compile, ours, peft-loop+compile, ours+compile+cudagraphs
  (the ``cuda_graphs`` switch), unsloth (skipped unless installed);
- ``chats``: the chat data below; arms: peft-loop, ours+compile, unsloth,
  ours+compile+cudagraphs, ours, peft-loop+compile.

    python bench/torch_llm_vs_peft.py --sets full,chats --budget-s 480 --out "$OUT/llm-sets.json"
    python bench/torch_llm_vs_peft.py --tiny --sets full,chats --steps 6 --warmup 2  # CPU proof

The ablation arms turn one of our speed switches off, so the table shows what each one buys:
``--ablations`` runs them (default on CUDA). The ``ours+compile`` arm (the trainer's compile
switch) runs by default on CUDA, ``--with-compile``/``--no-with-compile`` to choose.

Unsloth on a GPU machine with no network: carry the wheels of unsloth, unsloth_zoo,
bitsandbytes, xformers, torchao, trl, datasets, pyarrow, tyro (and what the machine lacks of
their needs), installed with ``--no-deps``; to fit 64 MiB a call, repack bitsandbytes with only
the CUDA library the machine's torch uses, unsloth without its ``studio/`` web app, and pyarrow
without Flight and S3 (``bench/results/h100-llm-unsloth.json`` was measured so).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from _harness import (
    COMPILE,
    ArmCall,
    Column,
    StepClock,
    add_round_args,
    arms_to_run,
    bench_parser,
    median_run,
    parse_or_run_arm,
    ratio_to,
    resolve_device,
    results_table,
    run_rounds,
    spawn_arm,
    train_context,
    write_report,
)

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

ABLATIONS = {
    "ours-no-length-grouping": {"group_by_length": False},
    "ours-dense-logits": {"sparse_logits": False},
    "ours-eager-attention": {"sdpa": False},
    "ours-fp32": {"bf16": False},
    "ours-unfused-adamw": {"fused_adamw": False},
    "ours-sync-every-step": {"defer_sync": False},
    "ours-adapter-upcast": {"skip_adapter_upcast": False},
    "ours-padding-mask": {"unmasked_padding": False},
    "ours-cudnn-attention": {"no_cudnn_attention": False},
    "ours-pad-8": {"pad_multiple": 8},
    "ours-pad-128": {"pad_multiple": 128},
}
WORDS = [
    "the",
    "a",
    "ship",
    "sails",
    "at",
    "dawn",
    "pirates",
    "say",
    "ahoy",
    "matey",
    "treasure",
    "buried",
    "island",
    "lighthouse",
    "keeper",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "capital",
    "france",
    "paris",
    "model",
    "learns",
    "data",
    "idle",
    "computer",
    "what",
    "who",
    "where",
    "when",
    "why",
    "how",
    "which",
    "is",
    "are",
    "of",
    "an",
    "hello",
    "goodbye",
    "thank",
    "you",
    "yes",
    "no",
    "maybe",
]


@dataclass(frozen=True)
class Settings:
    device: str
    steps: int
    warmup: int
    batch: int
    seq: int
    rank: int = 16
    alpha: float = 32.0
    lr: float = 2e-4
    grad_checkpoint: bool = False
    data: str = "chats"
    """``chats``: chat examples of widely varying length (prompts masked); ``full``: every
    example a full ``seq``-token text, all of it trained (the anchor's setting)."""


# --- fixtures (built once by the parent) --------------------------------------------------------


def build_model(folder: Path, tiny: bool, device: str) -> Path:
    """The tiny test model, or TinyLlama-1.1B's shape with random bf16 weights."""
    from lorainbox.models.tinymodel import build_tiny_model

    build_tiny_model(folder)
    if tiny:
        return folder
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder)
    config.update(
        {
            "hidden_size": 2048,
            "intermediate_size": 5632,
            "num_hidden_layers": 22,
            "num_attention_heads": 32,
            "num_key_value_heads": 4,
            "vocab_size": 32000,
            "max_position_embeddings": 2048,
            "initializer_range": 0.02,
        }
    )
    with torch.device(device if device == "cuda" else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    for old in folder.glob("*.safetensors"):
        old.unlink()
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def build_data(
    path: Path, examples: int, max_words: int, seed: int = 0, full: bool = False
) -> Path:
    """Chat examples whose prompt and answer lengths vary over two orders of magnitude; or, with
    ``full``, texts of ``max_words`` words that the sequence limit cuts to full sequences."""
    rng = random.Random(seed)
    if full:
        with open(path, "w") as f:
            for _ in range(examples):
                text = " ".join(rng.choice(WORDS) for _ in range(max_words))
                f.write(json.dumps({"text": text}) + "\n")
        return path

    def text(limit: int) -> str:
        n = max(3, min(limit, int(rng.lognormvariate(4.0, 1.0))))
        return " ".join(rng.choice(WORDS) for _ in range(n))

    with open(path, "w") as f:
        for _ in range(examples):
            messages = [
                {"role": "user", "content": text(max_words)},
                {"role": "assistant", "content": text(max_words)},
            ]
            f.write(json.dumps({"messages": messages}) + "\n")
    return path


# --- arms (each in its own process) -----------------------------------------------------------------


def timed_result(clock: StepClock, tokens: int) -> dict[str, Any]:
    """Real tokens per second and seconds per step over the timed steps, and the peak memory."""
    return {
        "tokens_per_second": tokens / clock.seconds,
        "seconds_per_step": clock.seconds_per_step,
        "timed_steps": clock.timed_steps,
        "tokens": tokens,
        "peak_memory_gb": clock.peak_memory_gb(),
    }


def run_ours(
    s: Settings, model: Path, data: Path, work: Path, switches: dict[str, Any]
) -> dict[str, Any]:
    from lorainbox.trainers.base import Footprint
    from lorainbox.trainers.torch_llm import SpeedOptions, TorchLLMTrainer

    recipe = {
        "name": "bench",
        "base_model": str(model),
        "trainer": "torch",
        "lora": {"rank": s.rank, "alpha": s.alpha, "num_layers": -1},
        "train": {
            "iters": s.steps,
            "batch_size": s.batch,
            "learning_rate": s.lr,
            "lr_schedule": "cosine",
            "warmup": s.warmup,
            "max_seq_length": s.seq,
            "steps_per_report": s.steps,
            "steps_per_eval": s.steps,
            "save_every": 10 * s.steps,
            "device": s.device,
        },
    }
    ctx = train_context(recipe, work, data, Footprint(s.batch, s.seq, s.grad_checkpoint))
    clock = StepClock(s.device, s.steps, s.warmup)
    counted = {"tokens": 0}

    def on_step(step: int, tokens: int) -> None:
        if step > s.warmup:
            counted["tokens"] += tokens
        clock.mark(step)

    TorchLLMTrainer(SpeedOptions(**switches), on_step=on_step).train(ctx)
    return timed_result(clock, counted["tokens"])


TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def peft_model(s: Settings, base: Any) -> Any:
    """The base on the bench's device with PEFT's LoRA: rank and alpha as set, all projections."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=s.rank,
        lora_alpha=s.alpha,
        lora_dropout=0.0,
        target_modules=TARGETS,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(base.to(s.device), config)


def run_hf(s: Settings, model_dir: Path, data: Path, work: Path, unsloth: bool) -> dict[str, Any]:
    """transformers' Trainer with defaults, as its docs and PEFT's examples set it up."""
    path: dict[str, str] = {}
    if unsloth:
        try:
            from unsloth import FastLanguageModel
        except ImportError as e:
            return {"skipped": f"unsloth is not installed ({e})"}
        path = unsloth_path()
    import torch
    from lorainbox.trainers.torch_llm import read_jsonl, tokenize_row, truncate
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = []
    for row in read_jsonl(data):
        ex = truncate(tokenize_row(row, tokenizer, mask_prompt=True), s.seq)
        if ex is not None:
            labels = [-100] * ex.offset + ex.ids[ex.offset :]
            rows.append(
                {"input_ids": ex.ids, "attention_mask": [1] * len(ex.ids), "labels": labels}
            )
    bf16 = s.device == "cuda" and torch.cuda.is_bf16_supported()
    dtype = torch.bfloat16 if bf16 else torch.float32
    if unsloth:
        model, _ = FastLanguageModel.from_pretrained(
            model_name=str(model_dir), max_seq_length=s.seq, dtype=dtype, load_in_4bit=False
        )
        model = FastLanguageModel.get_peft_model(
            model,
            r=s.rank,
            lora_alpha=s.alpha,
            lora_dropout=0,
            target_modules=TARGETS,
            bias="none",
            use_gradient_checkpointing="unsloth" if s.grad_checkpoint else False,
        )
    else:
        model = peft_model(s, AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype))
    counts: list[int] = []
    pad = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)

    def collate(features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = pad(features)
        counts.append(int(batch["attention_mask"].sum()))  # on the host: no device sync
        return batch

    clock = StepClock(s.device, s.steps, s.warmup)

    class Timing(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            clock.mark(state.global_step)

    args = TrainingArguments(
        output_dir=str(work / "hf"),
        per_device_train_batch_size=s.batch,
        max_steps=s.steps,
        learning_rate=s.lr,
        lr_scheduler_type="cosine",
        warmup_steps=s.warmup,
        bf16=bf16,
        logging_steps=10,
        save_strategy="no",
        report_to="none",
        gradient_checkpointing=s.grad_checkpoint and not unsloth,
        use_cpu=s.device == "cpu",
        remove_unused_columns=False,
        seed=0,
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=rows, data_collator=collate, callbacks=[Timing()]
    )
    trainer.train()
    return {**timed_result(clock, sum(counts[s.warmup : s.steps])), **path}


def unsloth_path() -> dict[str, str]:
    """Which attention and versions Unsloth took: its kernels need an xformers (or flash-attn)
    built for this torch, else it falls back to PyTorch's SDPA."""
    import torch
    import unsloth
    from unsloth.models import _utils

    xformers = getattr(_utils, "HAS_XFORMERS", None) or getattr(_utils, "xformers", None)
    flash = getattr(_utils, "HAS_FLASH_ATTENTION", False)
    attention = "xformers" if xformers else "flash-attn" if flash else "PyTorch SDPA"
    return {
        "unsloth_attention": attention,
        "unsloth_version": getattr(unsloth, "__version__", "?"),
        "unsloth_torch": torch.__version__,
    }


def tokenized(s: Settings, model_dir: Path, data: Path) -> tuple[Any, list[tuple[list[int], int]]]:
    """The tokenizer, and each example as (ids, first trained position), as our trainer cuts it."""
    from lorainbox.trainers.torch_llm import read_jsonl, tokenize_row, truncate
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = []
    for row in read_jsonl(data):
        ex = truncate(tokenize_row(row, tokenizer, mask_prompt=True), s.seq)
        if ex is not None:
            rows.append((ex.ids, ex.offset))
    return tokenizer, rows


def run_peft_loop(s: Settings, model_dir: Path, data: Path, compiled: bool) -> dict[str, Any]:
    """The loop a person writes with PEFT and no Trainer: the model in bf16 with SDPA, LoRA on
    all projections, shuffled batches padded to their longest example, the model's own loss
    under autocast, fused AdamW, clipping; ``compiled``: each decoder layer ``.compile()``d."""
    import torch
    from transformers import AutoModelForCausalLM, get_cosine_schedule_with_warmup

    tokenizer, rows = tokenized(s, model_dir, data)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    cuda = s.device == "cuda"
    bf16 = cuda and torch.cuda.is_bf16_supported()
    base = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.bfloat16 if bf16 else torch.float32, attn_implementation="sdpa"
    )
    base.config.use_cache = False
    model = peft_model(s, base)
    if compiled:
        for layer in model.get_base_model().model.layers:
            layer.compile()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=s.lr, weight_decay=0.0, fused=cuda)
    scheduler = get_cosine_schedule_with_warmup(optimizer, s.warmup, s.steps)
    rng = random.Random(0)
    order = list(range(len(rows)))
    rng.shuffle(order)

    def batch(step: int) -> tuple[dict[str, torch.Tensor], int]:
        picked = [rows[order[(step * s.batch + i) % len(rows)]] for i in range(s.batch)]
        width = max(len(ids) for ids, _ in picked)
        ids = torch.full((len(picked), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        labels = torch.full_like(ids, -100)
        for r, (seq, offset) in enumerate(picked):
            ids[r, : len(seq)] = torch.tensor(seq)
            mask[r, : len(seq)] = 1
            labels[r, offset : len(seq)] = ids[r, offset : len(seq)]
        tensors = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        return {k: v.to(s.device, non_blocking=True) for k, v in tensors.items()}, int(mask.sum())

    clock = StepClock(s.device, s.steps, s.warmup)
    tokens = 0
    model.train()
    for step in range(s.steps):
        inputs, real = batch(step)
        with torch.autocast(s.device, dtype=torch.bfloat16, enabled=bf16):
            loss = model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= s.warmup:
            tokens += real
        clock.mark(step + 1)
    return timed_result(clock, tokens)


PEFT_LOOPS = {"peft-loop": False, "peft-loop+compile": True}
CUDA_GRAPHS = {"ours+compile+cudagraphs": {"compile": True, "cuda_graphs": True}}
SETS = {
    "full": [
        "peft-loop",
        "ours+compile",
        "ours",
        "peft-loop+compile",
        "ours+compile+cudagraphs",
        "unsloth",
    ],
    "chats": [
        "peft-loop",
        "ours+compile",
        "unsloth",
        "ours+compile+cudagraphs",
        "ours",
        "peft-loop+compile",
    ],
}
"""``--sets``: the arms of each setting, most wanted first (a time budget cuts from the end)."""


def child(call: ArmCall) -> dict[str, Any]:
    s = Settings(**call.settings)
    if call.arm == "hf-peft-trainer":
        return run_hf(s, call.model, call.data, call.work, unsloth=False)
    if call.arm == "unsloth":
        return run_hf(s, call.model, call.data, call.work, unsloth=True)
    if call.arm in PEFT_LOOPS:
        return run_peft_loop(s, call.model, call.data, PEFT_LOOPS[call.arm])
    switches = {**ABLATIONS, **COMPILE, **CUDA_GRAPHS}.get(call.arm, {})
    return run_ours(s, call.model, call.data, call.work, switches)


# --- model FLOPs ----------------------------------------------------------------------------------


def flops_per_token(model_dir: Path, rank: int, t_eff: float) -> dict[str, float]:
    """Model FLOPs of one trained token: 4 x frozen matmul weights (forward, and the gradient
    of the input backward), 6 x LoRA weights (their weight gradient too), and causal attention
    6 x layers x hidden x T_eff (QK^T and AV, 4 x hidden x context forward, twice that backward,
    context T/2 on average), where T_eff = sum(len^2) / sum(len) over the examples (T for full
    sequences). Embedding lookups count nothing; the output head counts for every token."""
    c = json.loads((model_dir / "config.json").read_text())
    d, layers, ff, vocab = (
        c["hidden_size"],
        c["num_hidden_layers"],
        c["intermediate_size"],
        c["vocab_size"],
    )
    kv = c.get("num_key_value_heads", c["num_attention_heads"]) * d // c["num_attention_heads"]
    shapes = [(d, d), (d, kv), (d, kv), (d, d), (d, ff), (d, ff), (ff, d)]
    frozen = layers * sum(i * o for i, o in shapes) + d * vocab
    lora = layers * sum(rank * (i + o) for i, o in shapes)
    attention = 6 * layers * d * t_eff
    return {
        "frozen_params": frozen,
        "lora_params": lora,
        "t_eff": t_eff,
        "flops_per_token": 4 * frozen + 6 * lora + attention,
    }


def effective_length(s: Settings, model_dir: Path, data: Path) -> float:
    """T_eff of the data as the trainers cut it: sum(len^2) / sum(len)."""
    _, rows = tokenized(s, model_dir, data)
    lengths = [len(ids) for ids, _ in rows]
    return sum(n * n for n in lengths) / max(1, sum(lengths))


def add_mfu(
    results: dict[str, dict[str, Any]], flops: dict[str, float], peak_tflops: float
) -> None:
    for r in results.values():
        if "tokens_per_second" in r:
            r["model_tflops"] = r["tokens_per_second"] * flops["flops_per_token"] / 1e12
            r["mfu"] = r["model_tflops"] / peak_tflops


# --- the parent: fixtures, arms, table -----------------------------------------------------------------


def table(results: dict[str, dict[str, Any]], baseline: str) -> str:
    columns = [
        Column("tokens/s", 12, lambda r: r["tokens_per_second"], ".0f"),
        Column("s/step", 10, lambda r: r["seconds_per_step"], ".3f"),
        Column("peak GB", 10, lambda r: r["peak_memory_gb"], ".2f"),
        Column("MFU", 8, lambda r: 100 * r.get("mfu", float("nan")), ".1f", "%"),
        Column(f"vs {baseline}", 22, ratio_to(results, baseline, "tokens_per_second"), ".2f", "x"),
    ]
    return results_table(results, columns, "tokens_per_second", arm_width=26)


OURS = ("ours", *COMPILE, *CUDA_GRAPHS)


def summarize(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Our arms against each baseline that ran (HF PEFT + Trainer, the plain PEFT loop eager and
    compiled, Unsloth), as ratios of tokens/s and peak memory."""
    ratios = {}
    for base in ("hf-peft-trainer", *PEFT_LOOPS, "unsloth"):
        theirs = results.get(base, {})
        for arm in OURS:
            ours = results.get(arm, {})
            if "tokens_per_second" in theirs and "tokens_per_second" in ours:
                ratios[f"{arm} vs {base}"] = {
                    "tokens_per_second": ours["tokens_per_second"] / theirs["tokens_per_second"],
                    "peak_memory": ours["peak_memory_gb"] / theirs["peak_memory_gb"],
                }
    return {"ratios": ratios} if ratios else {}


GOALS = (
    "full sequences: >= 3x the plain PEFT loop's tokens/s at no more peak memory, MFU >= 60%, "
    "ahead of Unsloth"
)


def goals(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The full-sequence goals, against our best arm (by tokens/s)."""
    timed = {a: r for a, r in results.items() if a in OURS and "tokens_per_second" in r}
    loop = results.get("peft-loop", {})
    if not timed or "tokens_per_second" not in loop:
        return {"goal": GOALS}
    best = max(timed, key=lambda a: timed[a]["tokens_per_second"])
    r = timed[best]
    out: dict[str, Any] = {
        "goal": GOALS,
        "best_arm": best,
        "speedup_vs_peft_loop": r["tokens_per_second"] / loop["tokens_per_second"],
        "memory_vs_peft_loop": r["peak_memory_gb"] / loop["peak_memory_gb"],
        "mfu": r.get("mfu"),
    }
    out["met_3x"] = out["speedup_vs_peft_loop"] >= 3.0 and out["memory_vs_peft_loop"] <= 1.0
    out["met_mfu_60"] = (r.get("mfu") or 0.0) >= 0.6
    unsloth = results.get("unsloth", {})
    if "tokens_per_second" in unsloth:
        out["ahead_of_unsloth"] = r["tokens_per_second"] > unsloth["tokens_per_second"]
    return out


def run_set(
    args: argparse.Namespace, s: Settings, arms: list[str], work: Path, model: Path, deadline: float
) -> dict[str, Any]:
    """One setting's arms (the model is shared, the data is the setting's own), with MFU."""
    examples = (
        max(s.steps * s.batch + 64, 256) if s.data == "full" else max(4 * s.steps * s.batch, 256)
    )
    words = 2 * s.seq if s.data == "full" else s.seq // 2
    data = build_data(
        work / f"train-{s.data}.jsonl", examples, max_words=words, full=s.data == "full"
    )

    def run(arm: str) -> dict[str, Any]:
        if time.monotonic() > deadline:
            return {"skipped": "past the bench's time budget (--budget-s)"}
        return spawn_arm(__file__, arm, s, model, data, work, args.tiny)

    runs = run_rounds(arms, args.repeat, run)
    results = {arm: median_run(found, "tokens_per_second") for arm, found in runs.items()}
    flops = flops_per_token(model, s.rank, effective_length(s, model, data))
    add_mfu(results, flops, args.peak_tflops)
    baseline = "peft-loop" if "peft-loop" in results else "hf-peft-trainer"
    print(f"\n{s.data}: batch {s.batch}, up to {s.seq} tokens, T_eff {flops['t_eff']:.0f}")
    print(table(results, baseline))
    summary = {**summarize(results), "flops": flops, "peak_tflops": args.peak_tflops}
    if s.data == "full":
        summary["goals"] = goals(results)
    for pair, ratio in summary.get("ratios", {}).items():
        print(
            f"{pair}: {ratio['tokens_per_second']:.2f}x tokens/s, "
            f"{ratio['peak_memory']:.2f}x peak memory"
        )
    return {"settings": asdict(s), "results": results, "summary": summary}


def main() -> None:
    p = bench_parser(__doc__, tiny_help="tiny model on the CPU: proves the bench runs")
    p.add_argument("--batch", type=int)
    p.add_argument("--seq", type=int)
    p.add_argument("--grad-checkpoint", action="store_true")
    p.add_argument(
        "--sets",
        help="comma-separated settings, each with its own arms: full (full sequences), chats "
        "(short chats); without it, the chat setting with HF PEFT + Trainer and ablations",
    )
    p.add_argument("--budget-s", type=float, help="skip the arms left after this many seconds")
    p.add_argument(
        "--peak-tflops", type=float, default=790.0, help="the device's dense bf16 peak, for MFU"
    )
    add_round_args(p)
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument("--keep", type=Path, help="build the model and data here (and keep them)")
    args = parse_or_run_arm(p, child)
    if args is None:
        return

    started = time.monotonic()
    deadline = started + args.budget_s if args.budget_s else float("inf")
    device = resolve_device(args.device, args.tiny)
    big = not args.tiny

    def settings(data: str) -> Settings:
        return Settings(
            device=device,
            steps=args.steps or (40 if big else 12),
            warmup=args.warmup or (10 if big else 3),
            batch=args.batch or (8 if big else 4),
            seq=args.seq or (1024 if big else 128),
            grad_checkpoint=args.grad_checkpoint,
            data=data,
        )

    work = args.keep or Path(tempfile.mkdtemp(prefix="llm-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"building the {'tiny' if args.tiny else '1.1B LLaMA-shaped'} model in {work}")
    model = build_model(work / "model", args.tiny, device)
    name = "tiny" if args.tiny else "llama-1.1B (TinyLlama shape, random bf16 weights)"

    if args.sets:
        sets: dict[str, Any] = {}
        for data in args.sets.split(","):
            arms = args.arms.split(",") if args.arms else SETS[data]
            sets[data] = run_set(args, settings(data), arms, work, model, deadline)
            report = {
                "model": name,
                "device_name": device_name(device),
                "torch": torch_version(),
                "seconds": round(time.monotonic() - started, 1),
                "sets": sets,
            }
            if args.out:  # after each set: a call cut short keeps what was measured
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(report, indent=2) + "\n")
                print(f"wrote {args.out}")
        return

    s = settings("chats")
    arms = arms_to_run(
        args, device, ["hf-peft-trainer", "ours", "unsloth"], list(ABLATIONS), compile_on_cuda=True
    )
    examples = max(4 * s.steps * s.batch, 256)
    data = build_data(work / "train.jsonl", examples, max_words=s.seq // 2)

    runs = run_rounds(
        arms, args.repeat, lambda arm: spawn_arm(__file__, arm, s, model, data, work, args.tiny)
    )
    results = {arm: median_run(found, "tokens_per_second") for arm, found in runs.items()}
    add_mfu(
        results, flops_per_token(model, s.rank, effective_length(s, model, data)), args.peak_tflops
    )
    print()
    print(table(results, "hf-peft-trainer"))
    summary = summarize(results)
    for pair, ratio in summary.get("ratios", {}).items():
        print(
            f"{pair}: {ratio['tokens_per_second']:.2f}x tokens/s, "
            f"{ratio['peak_memory']:.2f}x peak memory"
        )
    write_report(args.out, s, name, device, results, summary)


def device_name(device: str) -> str:
    import torch

    return torch.cuda.get_device_name() if device == "cuda" else device


def torch_version() -> str:
    import torch

    return torch.__version__


if __name__ == "__main__":
    main()
