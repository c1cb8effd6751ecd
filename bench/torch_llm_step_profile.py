"""Where our PyTorch LLM LoRA step spends its time: the host's dispatch, or the GPU's math.

Our trainer's own model set-up (PEFT LoRA rank 16 on all seven projections, bf16, SDPA without
cuDNN attention) and step (``loss_sum`` with the sparse head, ``optimizer_step``) on the 1.1B
LLaMA shape, over batches of 8 at five widths padded to multiples of 64, as the trainer pads
them on CUDA. Each variant runs in its own process. Reported per step: wall seconds, the
host's seconds to issue the step, the GPU's summed kernel time and the number of kernels. A
step whose issue time is its wall time waits on Python's dispatch, not on the GPU; compiling
cuts the operators dispatched per step (about 5,500 eager for 22 layers, about 750 compiled).

    python bench/torch_llm_step_profile.py --out bench/results/h100-step-profile.json
    python bench/torch_llm_step_profile.py --tiny   # CPU smoke test: all four variants in ~2 min
    python bench/torch_llm_step_profile.py --setting full --variants compiled,compiled-cudagraphs

``--setting full`` profiles the anchor's step (batch 8 of full 1024-token sequences). On CUDA
each result also splits the kernel time by the operator that launched it
(``kernel_seconds_by_part``): attention, the frozen projections' matmuls, LoRA's matmuls, the LM
head, the optimizer, Triton's fused elementwise kernels. A replayed CUDA graph launches its
kernels as one, so that split is read on the variants without graphs.
"""

from __future__ import annotations

import argparse
import bisect
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

VARIANTS: dict[str, dict[str, Any] | None] = {
    "eager": None,
    "compiled": None,
    "compiled-static": {"dynamic": False},
    "compiled-cudagraphs": {"dynamic": False, "mode": "reduce-overhead"},
    "compiled-dynamic-cudagraphs": {"dynamic": True, "mode": "reduce-overhead"},
}
"""``compiled`` is the trainer's compile switch (layers compiled with dynamic shapes); the next two
compile the layers here, one graph per width, then with CUDA graphs on top (one recording per
width), and the last compiles once for all widths and records CUDA graphs per width."""
WIDTHS = {"chats": (256, 320, 384, 448, 512), "full": (1024,)}
"""``chats``: five padded widths of chat-like batches, half of each example trained; ``full``:
the anchor's setting, every row a full 1024-token sequence, all of it trained."""


def batches(tiny: bool, device: str, count: int, setting: str) -> list[Any]:
    from lorainbox.trainers.torch_llm import Example, collate

    rng = random.Random(0)
    full = setting == "full"
    vocab, widths, rows = (
        (250, (64,) if full else (32, 48, 64), 4) if tiny else (32000, WIDTHS[setting], 8)
    )
    out = []
    for i in range(count):
        width = widths[i % len(widths)]
        examples = []
        for _ in range(rows):
            n = width if full else rng.randint(width - min(63, width // 2), width)
            ids = [rng.randrange(3, vocab) for _ in range(n)]
            examples.append(Example(ids, 0 if full else n // 2))
        out.append(collate(examples, 0, 64 if not tiny else 16, padding_mask=False).to(device))
    return out


def breakdown(trace: dict[str, Any], rank: int, vocab: int, steps: int) -> dict[str, float]:
    """Kernel seconds per step by the operator that launched each kernel, read from the
    profiler's Chrome trace: a kernel's launch (same correlation id) sits inside the innermost
    CPU operator around it. Matrix products tell LoRA's (a dimension equal to the rank) from
    the LM head's (the vocabulary) and the frozen projections' (the rest) by their shapes."""
    events = trace["traceEvents"]
    ops: dict[Any, list[dict[str, Any]]] = {}
    for e in events:
        if e.get("cat") == "cpu_op":
            ops.setdefault((e["pid"], e["tid"]), []).append(e)
    for found in ops.values():
        found.sort(key=lambda e: e["ts"])
    starts = {key: [e["ts"] for e in found] for key, found in ops.items()}
    launches = {
        e["args"]["correlation"]: e
        for e in events
        if e.get("cat") in ("cuda_runtime", "cuda_driver") and "correlation" in e.get("args", {})
    }
    totals: dict[str, float] = {}
    for kernel in (e for e in events if e.get("cat") == "kernel"):
        launch = launches.get(kernel.get("args", {}).get("correlation"))
        op = launch and innermost(ops, starts, launch)
        part = part_of(op, kernel["name"], rank, vocab)
        totals[part] = totals.get(part, 0.0) + kernel["dur"] / 1e6 / steps
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def innermost(
    ops: dict[Any, list[dict[str, Any]]], starts: dict[Any, list[float]], launch: dict[str, Any]
) -> dict[str, Any] | None:
    """The latest-starting operator on the launch's thread whose span holds the launch."""
    key = (launch["pid"], launch["tid"])
    found, at = ops.get(key, []), launch["ts"]
    for i in range(bisect.bisect_right(starts.get(key, []), at) - 1, -1, -1):
        if found[i]["ts"] + found[i].get("dur", 0) >= at:
            return found[i]
    return None


def part_of(op: dict[str, Any] | None, kernel: str, rank: int, vocab: int) -> str:
    name, kernel = (op["name"] if op else "").lower(), kernel.lower()
    dims = {d for shape in (op or {}).get("args", {}).get("Input Dims", []) for d in shape or []}
    both = f"{name} {kernel}"
    if any(w in both for w in ("attention", "flash", "fmha")):
        return "attention (SDPA, forward and backward)"
    if any(w in both for w in ("adam", "foreach", "multi_tensor")):
        return "optimizer and clipping"
    if name in MATMULS or any(w in kernel for w in ("gemm", "nvjet", "cutlass", "xmma")):
        if rank in dims:
            return "LoRA matmuls"
        if vocab in dims:
            return "LM head (sparse logits) matmuls"
        return "frozen projection matmuls"
    if "triton" in both:
        return "Triton kernels (Inductor: norms, RoPE, SwiGLU, loss, casts, templated matmuls)"
    return f"other kernels ({name or 'no operator'})"


MATMULS = {
    "aten::mm",
    "aten::addmm",
    "aten::bmm",
    "aten::matmul",
    "aten::linear",
    "aten::_addmm_activation",
}


def profile_variant(
    name: str, model_dir: Path, device: str, tiny: bool, steps: int, setting: str
) -> dict:
    import torch
    from lorainbox.drop.recipe import LoraSpec
    from lorainbox.trainers.base import Footprint
    from lorainbox.trainers.torch_common import optimizer_step, setup_device
    from lorainbox.trainers.torch_llm import SpeedOptions, TorchLLMTrainer, loss_sum
    from torch.profiler import ProfilerActivity, profile

    spec = VARIANTS[name]
    setup = setup_device(device, 64.0)
    trainer = TorchLLMTrainer(SpeedOptions())
    config = json.loads((model_dir / "config.json").read_text())
    started = time.perf_counter()
    model = trainer._model(
        model_dir,
        config,
        setup,
        LoraSpec(rank=16, alpha=32, num_layers=-1),
        Footprint(8, 1024, False),
        compiled=name == "compiled",
    )
    if spec is not None:
        # One graph per width and layer input can pass dynamo's default limit of 8, after which
        # it would quietly run the rest eagerly.
        torch._dynamo.config.recompile_limit = 64
        from torch.fx.experimental import _config as shapes_config

        shapes_config.use_duck_shape = False
        for layer in model.get_base_model().get_decoder().layers:
            layer.compile(**spec)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=2e-4, weight_decay=0.0, fused=device == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    widths = len(WIDTHS[setting])
    data = batches(tiny, device, 2 * widths + steps, setting)
    warm, timed = data[: 2 * widths], data[2 * widths :]

    graphs = spec is not None and spec.get("mode") == "reduce-overhead"

    def step(batch: Any) -> None:
        if graphs:  # the previous step's graph outputs are done with
            torch.compiler.cudagraph_mark_step_begin()
        with setup.autocast():
            summed = loss_sum(model, batch, True)
        (summed / batch.n_targets).backward()
        optimizer_step(params, optimizer, scheduler)

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    model.train()
    for batch in warm:  # every width twice: compiled, then recorded if CUDA graphs
        step(batch)
    sync()
    warm_seconds = time.perf_counter() - started
    issue = 0.0
    t0 = time.perf_counter()
    for batch in timed:
        t = time.perf_counter()
        step(batch)
        issue += time.perf_counter() - t
    sync()
    wall = time.perf_counter() - t0
    activity = ProfilerActivity.CUDA if device == "cuda" else ProfilerActivity.CPU
    kind = torch.autograd.DeviceType.CUDA if device == "cuda" else torch.autograd.DeviceType.CPU
    sample = timed[:widths]
    with profile(activities=[activity], record_shapes=True) as prof:
        for batch in sample:
            step(batch)
        sync()
    kernels = [e for e in prof.events() if e.device_type == kind and e.cpu_parent is None]
    parts: dict[str, float] = {}
    if device == "cuda":
        with tempfile.TemporaryDirectory() as tmp:  # a trace per variant, not kept
            trace_file = Path(tmp) / "trace.json"
            prof.export_chrome_trace(str(trace_file))
            trace = json.loads(trace_file.read_text())
        parts = breakdown(trace, 16, config["vocab_size"], len(sample))
    busy = sum(e.device_time if device == "cuda" else e.cpu_time for e in kernels)
    return {
        "warm_up_seconds": round(warm_seconds, 1),
        "seconds_per_step": wall / len(timed),
        "issue_seconds_per_step": issue / len(timed),
        "kernel_seconds_per_step": busy / 1e6 / len(sample),
        "kernels_per_step": len(kernels) // len(sample),
        "tokens_per_second": sum(b.tokens for b in timed) / wall,
        "peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else None,
        "kernel_seconds_by_part": parts,
    }


def failure(done: subprocess.CompletedProcess[str]) -> str:
    """The exit status and the traceback's last lines, past any warnings printed after it."""
    output = (done.stderr or done.stdout).splitlines()
    lines = [line for line in output if "Warning" not in line and "warnings.warn" not in line]
    return "\n".join([f"exit status {done.returncode}", *lines[-12:]])


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tiny", action="store_true", help="tiny model on the CPU: proves it runs")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--setting", choices=list(WIDTHS), default="chats")
    p.add_argument("--out", type=Path)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    from _harness import resolve_device

    device = resolve_device("auto", args.tiny)
    if args.variant:
        result = profile_variant(
            args.variant, args.model, device, args.tiny, args.steps, args.setting
        )
        print("RESULT " + json.dumps(result), flush=True)
        return
    from torch_llm_vs_peft import build_model

    work = Path(tempfile.mkdtemp(prefix="step-profile-"))
    model = build_model(work / "model", args.tiny, device)
    results: dict[str, Any] = {}
    for name in args.variants.split(","):
        cmd = [
            sys.executable,
            __file__,
            "--variant",
            name,
            "--model",
            str(model),
            "--steps",
            str(args.steps),
            "--setting",
            args.setting,
            *(["--tiny"] if args.tiny else []),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True)
        found = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        results[name] = json.loads(found[-1][7:]) if found else {"failed": failure(done)}
        print(name, json.dumps(results[name]), flush=True)
    if args.out:
        report = {"device": device, "setting": args.setting, "results": results}
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
