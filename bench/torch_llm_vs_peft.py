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
``--ablations`` runs them (default on CUDA); ``--with-compile`` adds a ``torch.compile`` arm.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

COMPILE = {"ours+compile": {"compile": True}}
"""Opt-in (--with-compile): compiling costs minutes up front, so it only pays on long runs."""
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
    from daemon.tinymodel import build_tiny_model

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


class Clock:
    """Wall time and real tokens from the end of the warm-up step to the end of the last step."""

    def __init__(self, s: Settings):
        self.s = s
        self.start = self.end = 0.0

    def mark(self, step: int) -> None:
        if step in (self.s.warmup, self.s.steps):
            _sync(self.s.device)
            now = time.perf_counter()
            if step == self.s.warmup:
                self.start = now
            else:
                self.end = now

    def result(self, tokens: int) -> dict[str, Any]:
        seconds = self.end - self.start
        timed = self.s.steps - self.s.warmup
        return {
            "tokens_per_second": tokens / seconds,
            "seconds_per_step": seconds / timed,
            "timed_steps": timed,
            "tokens": tokens,
            "peak_memory_gb": _peak_gb(self.s.device),
        }


def run_ours(
    s: Settings, model: Path, data: Path, work: Path, switches: dict[str, Any]
) -> dict[str, Any]:
    import io

    from daemon.recipe import Recipe
    from daemon.trainers.base import Emitter, Footprint, TrainContext
    from daemon.trainers.torch_llm import SpeedOptions, TorchLLMTrainer

    recipe = Recipe.model_validate(
        {
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
    )
    ctx = TrainContext(
        job_dir=work,
        work_dir=work / ".lorainbox",
        recipe=recipe,
        train_file=data,
        valid_file=None,
        footprint=Footprint(s.batch, s.seq, s.grad_checkpoint),
        memory_budget_gb=1e6,
        emitter=Emitter(io.StringIO()),
        stop_requested=lambda: False,
    )
    clock = Clock(s)
    counted = {"tokens": 0}

    def on_step(step: int, tokens: int) -> None:
        if step > s.warmup:
            counted["tokens"] += tokens
        clock.mark(step)

    TorchLLMTrainer(SpeedOptions(**switches), on_step=on_step).train(ctx)
    return clock.result(counted["tokens"])


def run_hf(s: Settings, model_dir: Path, data: Path, work: Path, unsloth: bool) -> dict[str, Any]:
    """transformers' Trainer with defaults, as its docs and PEFT's examples set it up."""
    if unsloth:
        try:
            from unsloth import FastLanguageModel
        except ImportError as e:
            return {"skipped": f"unsloth is not installed ({e})"}
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from daemon.trainers.torch_llm import read_jsonl, tokenize_row, truncate

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

    clock = Clock(s)

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
    return clock.result(sum(counts[s.warmup : s.steps]))


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
    elif device == "mps":
        torch.mps.synchronize()


def _peak_gb(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 1e9
    from daemon.trainers.torch_common import process_peak_rss_gb

    return process_peak_rss_gb()


def child(args: argparse.Namespace) -> None:
    s = Settings(**json.loads(args.settings))
    work = Path(tempfile.mkdtemp(prefix=f"{args.arm}-", dir=args.work))
    if args.arm == "hf-peft-trainer":
        result = run_hf(s, Path(args.model), Path(args.data), work, unsloth=False)
    elif args.arm == "unsloth":
        result = run_hf(s, Path(args.model), Path(args.data), work, unsloth=True)
    else:
        switches = {**ABLATIONS, **COMPILE}.get(args.arm, {})
        result = run_ours(s, Path(args.model), Path(args.data), work, switches)
    print("RESULT " + json.dumps(result), flush=True)


# --- the parent: fixtures, arms, table -----------------------------------------------------------------


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median tokens/s, with every run's tokens/s beside it."""
    timed = sorted(
        (r for r in runs if "tokens_per_second" in r), key=lambda r: r["tokens_per_second"]
    )
    if not timed:
        return runs[-1]
    return {
        **timed[(len(timed) - 1) // 2],
        "runs_tokens_per_second": [round(r["tokens_per_second"]) for r in timed],
    }


def run_arm(
    arm: str, s: Settings, model: Path, data: Path, work: Path, tiny: bool
) -> dict[str, Any]:
    env = dict(os.environ)
    if tiny:
        env["OMP_NUM_THREADS"] = "1"  # tiny matrices: a shared CPU's thread pool only adds spinning
    cmd = [
        sys.executable,
        __file__,
        "--arm",
        arm,
        "--settings",
        json.dumps(asdict(s)),
        "--model",
        str(model),
        "--data",
        str(data),
        "--work",
        str(work),
    ]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return {**json.loads(line[7:]), "wall_seconds": time.perf_counter() - started}
    tail = (proc.stderr or proc.stdout)[-3000:]
    return {"error": f"exit {proc.returncode}", "log_tail": tail}


def table(results: dict[str, dict[str, Any]], baseline: str) -> str:
    base = results.get(baseline, {})
    rows = [f"{'arm':<26}{'tokens/s':>12}{'s/step':>10}{'peak GB':>10}{'speed vs HF':>13}"]
    for arm, r in results.items():
        if "tokens_per_second" not in r:
            rows.append(f"{arm:<26}  {r.get('skipped') or r.get('error')}")
            continue
        ratio = (
            r["tokens_per_second"] / base["tokens_per_second"]
            if "tokens_per_second" in base
            else float("nan")
        )
        rows.append(
            f"{arm:<26}{r['tokens_per_second']:>12.0f}{r['seconds_per_step']:>10.3f}"
            f"{r['peak_memory_gb']:>10.2f}{ratio:>12.2f}x"
        )
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--tiny", action="store_true", help="tiny model on the CPU: proves the bench runs"
    )
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"])
    p.add_argument("--steps", type=int)
    p.add_argument("--warmup", type=int)
    p.add_argument("--batch", type=int)
    p.add_argument("--seq", type=int)
    p.add_argument("--grad-checkpoint", action="store_true")
    p.add_argument("--ablations", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--with-compile", action="store_true", help="also run the torch.compile arm")
    p.add_argument("--arms", help="comma-separated arms to run (default: all that apply)")
    p.add_argument(
        "--repeat", type=int, default=1, help="rounds over all arms; each arm reports its median"
    )
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument("--keep", type=Path, help="build the model and data here (and keep them)")
    p.add_argument("--arm", help=argparse.SUPPRESS)
    p.add_argument("--settings", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.arm:
        child(args)
        return

    import torch

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    big = not args.tiny
    s = Settings(
        device=device,
        steps=args.steps or (40 if big else 12),
        warmup=args.warmup or (10 if big else 3),
        batch=args.batch or (8 if big else 4),
        seq=args.seq or (1024 if big else 128),
        grad_checkpoint=args.grad_checkpoint,
    )
    ablations = args.ablations if args.ablations is not None else device == "cuda"
    arms = ["hf-peft-trainer", "ours", "unsloth", *(ABLATIONS if ablations else [])]
    arms += list(COMPILE) if args.with_compile else []
    if args.arms:
        arms = args.arms.split(",")

    work = args.keep or Path(tempfile.mkdtemp(prefix="llm-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"building the {'tiny' if args.tiny else '1.1B LLaMA-shaped'} model and data in {work}")
    model = build_model(work / "model", args.tiny, device)
    examples = max(4 * s.steps * s.batch, 256)
    data = build_data(work / "train.jsonl", examples, max_words=s.seq // 2)

    runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in arms}
    for round_ in range(args.repeat):
        for arm in arms:  # interleaved, so a slow spell of a shared GPU hits every arm alike
            print(f"running {arm} ({round_ + 1}/{args.repeat}) ...", flush=True)
            result = run_arm(arm, s, model, data, work, args.tiny)
            runs[arm].append(result)
            if "skipped" in result:
                print(f"  note: {arm} skipped: {result['skipped']}")
            elif "error" in result:
                print(f"  {arm} failed:\n{result['log_tail']}")
    results = {arm: median_run(found) for arm, found in runs.items()}
    print()
    print(table(results, "hf-peft-trainer"))
    hf, ours = results.get("hf-peft-trainer", {}), results.get("ours", {})
    summary = {}
    if "tokens_per_second" in hf and "tokens_per_second" in ours:
        summary = {
            "speedup_tokens_per_second": ours["tokens_per_second"] / hf["tokens_per_second"],
            "memory_ratio": ours["peak_memory_gb"] / hf["peak_memory_gb"],
            "goal": ">= 2x HF PEFT + Trainer tokens/s",
        }
        print(
            f"\nours vs HF PEFT Trainer: {summary['speedup_tokens_per_second']:.2f}x tokens/s, "
            f"{summary['memory_ratio']:.2f}x peak memory"
        )
    report = {
        "settings": asdict(s),
        "model": "tiny" if args.tiny else "llama-1.1B (TinyLlama shape, random bf16 weights)",
        "device_name": torch.cuda.get_device_name() if device == "cuda" else device,
        "torch": torch.__version__,
        "results": results,
        "summary": summary,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
