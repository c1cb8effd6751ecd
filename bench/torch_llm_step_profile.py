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
"""

from __future__ import annotations

import argparse
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
WIDTHS = (256, 320, 384, 448, 512)


def batches(tiny: bool, device: str, count: int) -> list[Any]:
    from lorainbox.trainers.torch_llm import Example, collate

    rng = random.Random(0)
    vocab, widths, rows = (250, (32, 48, 64), 4) if tiny else (32000, WIDTHS, 8)
    out = []
    for i in range(count):
        width = widths[i % len(widths)]
        examples = []
        for _ in range(rows):
            n = rng.randint(width - min(63, width // 2), width)
            examples.append(Example([rng.randrange(3, vocab) for _ in range(n)], n // 2))
        out.append(collate(examples, 0, 64 if not tiny else 16, padding_mask=False).to(device))
    return out


def profile_variant(name: str, model_dir: Path, device: str, tiny: bool, steps: int) -> dict:
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
    data = batches(tiny, device, 2 * len(WIDTHS) + steps)
    warm, timed = data[: 2 * len(WIDTHS)], data[2 * len(WIDTHS) :]

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
    sample = timed[: len(WIDTHS)]
    with profile(activities=[activity]) as prof:
        for batch in sample:
            step(batch)
        sync()
    kernels = [e for e in prof.events() if e.device_type == kind and e.cpu_parent is None]
    busy = sum(e.device_time if device == "cuda" else e.cpu_time for e in kernels)
    return {
        "warm_up_seconds": round(warm_seconds, 1),
        "seconds_per_step": wall / len(timed),
        "issue_seconds_per_step": issue / len(timed),
        "kernel_seconds_per_step": busy / 1e6 / len(sample),
        "kernels_per_step": len(kernels) // len(sample),
        "tokens_per_second": sum(b.tokens for b in timed) / wall,
        "peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else None,
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
    p.add_argument("--out", type=Path)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    from _harness import resolve_device

    device = resolve_device("auto", args.tiny)
    if args.variant:
        result = profile_variant(args.variant, args.model, device, args.tiny, args.steps)
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
            *(["--tiny"] if args.tiny else []),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True)
        found = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        results[name] = json.loads(found[-1][7:]) if found else {"failed": failure(done)}
        print(name, json.dumps(results[name]), flush=True)
    if args.out:
        args.out.write_text(json.dumps({"device": device, "results": results}, indent=2))


if __name__ == "__main__":
    main()
