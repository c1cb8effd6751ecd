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

import json
import random
import sys
import tempfile
from dataclasses import dataclass
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


def build_data(path: Path, examples: int, max_words: int, seed: int = 0) -> Path:
    """Chat examples whose prompt and answer lengths vary over two orders of magnitude."""
    rng = random.Random(seed)

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


def run_hf(s: Settings, model_dir: Path, data: Path, work: Path, unsloth: bool) -> dict[str, Any]:
    """transformers' Trainer with defaults, as its docs and PEFT's examples set it up."""
    if unsloth:
        try:
            from unsloth import FastLanguageModel
        except ImportError as e:
            return {"skipped": f"unsloth is not installed ({e})"}
    import torch
    from lorainbox.trainers.torch_llm import read_jsonl, tokenize_row, truncate
    from peft import LoraConfig, get_peft_model
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
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    if unsloth:
        model, _ = FastLanguageModel.from_pretrained(
            model_name=str(model_dir), max_seq_length=s.seq, dtype=dtype, load_in_4bit=False
        )
        model = FastLanguageModel.get_peft_model(
            model,
            r=s.rank,
            lora_alpha=s.alpha,
            lora_dropout=0,
            target_modules=targets,
            bias="none",
            use_gradient_checkpointing="unsloth" if s.grad_checkpoint else False,
        )
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(s.device)
        config = LoraConfig(
            r=s.rank,
            lora_alpha=s.alpha,
            lora_dropout=0.0,
            target_modules=targets,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, config)
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
    return timed_result(clock, sum(counts[s.warmup : s.steps]))


def child(call: ArmCall) -> dict[str, Any]:
    s = Settings(**call.settings)
    if call.arm == "hf-peft-trainer":
        return run_hf(s, call.model, call.data, call.work, unsloth=False)
    if call.arm == "unsloth":
        return run_hf(s, call.model, call.data, call.work, unsloth=True)
    switches = {**ABLATIONS, **COMPILE}.get(call.arm, {})
    return run_ours(s, call.model, call.data, call.work, switches)


# --- the parent: fixtures, arms, table -----------------------------------------------------------------


def table(results: dict[str, dict[str, Any]], baseline: str) -> str:
    columns = [
        Column("tokens/s", 12, lambda r: r["tokens_per_second"], ".0f"),
        Column("s/step", 10, lambda r: r["seconds_per_step"], ".3f"),
        Column("peak GB", 10, lambda r: r["peak_memory_gb"], ".2f"),
        Column("speed vs HF", 13, ratio_to(results, baseline, "tokens_per_second"), ".2f", "x"),
    ]
    return results_table(results, columns, "tokens_per_second", arm_width=26)


def summarize(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Our default and compiled arms against HF PEFT + Trainer and Unsloth, as ratios of one run."""
    ratios = {}
    for base in ("hf-peft-trainer", "unsloth"):
        theirs = results.get(base, {})
        for arm in ("ours", *COMPILE):
            ours = results.get(arm, {})
            if "tokens_per_second" in theirs and "tokens_per_second" in ours:
                ratios[f"{arm} vs {base}"] = {
                    "tokens_per_second": ours["tokens_per_second"] / theirs["tokens_per_second"],
                    "peak_memory": ours["peak_memory_gb"] / theirs["peak_memory_gb"],
                }
    goal = ">= 2x HF PEFT + Trainer tokens/s, no slower than Unsloth"
    return {"ratios": ratios, "goal": goal} if ratios else {}


def main() -> None:
    p = bench_parser(__doc__, tiny_help="tiny model on the CPU: proves the bench runs")
    p.add_argument("--batch", type=int)
    p.add_argument("--seq", type=int)
    p.add_argument("--grad-checkpoint", action="store_true")
    add_round_args(p)
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument("--keep", type=Path, help="build the model and data here (and keep them)")
    args = parse_or_run_arm(p, child)
    if args is None:
        return

    device = resolve_device(args.device, args.tiny)
    big = not args.tiny
    s = Settings(
        device=device,
        steps=args.steps or (40 if big else 12),
        warmup=args.warmup or (10 if big else 3),
        batch=args.batch or (8 if big else 4),
        seq=args.seq or (1024 if big else 128),
        grad_checkpoint=args.grad_checkpoint,
    )
    arms = arms_to_run(
        args, device, ["hf-peft-trainer", "ours", "unsloth"], list(ABLATIONS), compile_on_cuda=True
    )

    work = args.keep or Path(tempfile.mkdtemp(prefix="llm-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"building the {'tiny' if args.tiny else '1.1B LLaMA-shaped'} model and data in {work}")
    model = build_model(work / "model", args.tiny, device)
    examples = max(4 * s.steps * s.batch, 256)
    data = build_data(work / "train.jsonl", examples, max_words=s.seq // 2)

    runs = run_rounds(
        arms, args.repeat, lambda arm: spawn_arm(__file__, arm, s, model, data, work, args.tiny)
    )
    results = {arm: median_run(found, "tokens_per_second") for arm, found in runs.items()}
    print()
    print(table(results, "hf-peft-trainer"))
    summary = summarize(results)
    for pair, ratio in summary.get("ratios", {}).items():
        print(
            f"{pair}: {ratio['tokens_per_second']:.2f}x tokens/s, "
            f"{ratio['peak_memory']:.2f}x peak memory"
        )
    name = "tiny" if args.tiny else "llama-1.1B (TinyLlama shape, random bf16 weights)"
    write_report(args.out, s, name, device, results, summary)


if __name__ == "__main__":
    main()
