"""Our SD LoRA training step against diffusers' ``train_text_to_image_lora.py`` at 512 px.

The baseline re-implements that example's defaults faithfully: accelerate with bf16 mixed
precision, UNet LoRA rank 4 (alpha 4, gaussian init) on to_q/to_k/to_v/to_out.0, AdamW (lr 1e-4,
weight decay 1e-2), constant schedule, batch 1, images decoded and transformed in the main
process (``dataloader_num_workers = 0``), the VAE and text encoder run every step, the loss read
back every step, gradients clipped at 1.0. Ours is the real :class:`DiffusionTrainer` on the
same images and captions (samples off). Both use a randomly initialised SD 1.5-shaped UNet
(block_out_channels 320/640/1280/1280, cross_attention_dim 768) with SD's VAE and CLIP-L text
encoder shapes; --tiny uses the tiny test pipeline at 64 px on the CPU. Each arm runs in its own
process. Reported: seconds per step after warm-up, peak memory, and ours/baseline time ratio
(goal: at most 1.25, i.e. at least 0.8x the example's speed).

    python bench/sd_lora_vs_diffusers.py --out results/sd.json
    python bench/sd_lora_vs_diffusers.py --tiny --out /tmp/sd-tiny.json   # CPU smoke test
    python bench/sd_lora_vs_diffusers.py --arms diffusers-example,ours --repeat 3

Ablation arms (``--ablations``, default on CUDA) turn one of our switches off each (latent
caching, channels-last, bf16, cuDNN autotuning, deferred loss reads); ``--with-compile`` adds
a ``torch.compile`` arm. ``--repeat N`` runs N interleaved rounds over the arms and reports
each arm's median step time, every round's beside it.
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
    "ours-no-latent-cache": {"cache_latents": False},
    "ours-no-channels-last": {"channels_last": False},
    "ours-fp32": {"bf16": False},
    "ours-no-cudnn-benchmark": {"cudnn_benchmark": False},
    "ours-sync-every-step": {"defer_sync": False},
}
SUBJECTS = ["a red fox", "a lighthouse", "a sailing ship", "a bowl of fruit", "a castle"]
STYLES = ["in sks style", "sks style painting", "sks style, detailed", "sks style drawing"]


@dataclass(frozen=True)
class Settings:
    device: str
    steps: int
    warmup: int
    resolution: int
    rank: int = 4
    lr: float = 1e-4
    batch: int = 1


# --- fixtures ---------------------------------------------------------------------------------


def build_model(folder: Path, tiny: bool) -> Path:
    """The tiny pipeline, or SD 1.5's architecture with random weights (fp32 on disk)."""
    from lorainbox.models.tinysd import build_tiny_sd

    if tiny:
        return build_tiny_sd(folder)
    import torch
    from diffusers import (
        AutoencoderKL,
        PNDMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from lorainbox.models.tinysd import write_clip_tokenizer
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(folder / "tokenizer"))
    unet = UNet2DConditionModel(
        sample_size=64,
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        cross_attention_dim=768,
        attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    )
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=512,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
        skip_prk_steps=True,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def build_images(folder: Path, count: int, size: int, seed: int = 0) -> Path:
    """Smooth random colour fields with captions, and the images.jsonl our trainer reads."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    pick = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)
        path = folder / f"{i:04d}.png"
        image.save(path)
        caption = f"{pick.choice(SUBJECTS)} {pick.choice(STYLES)}"
        rows.append({"path": str(path), "caption": caption, "repeats": 1})
    listing = folder / "images.jsonl"
    listing.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return listing


# --- arms -------------------------------------------------------------------------------------


def timed_result(clock: StepClock) -> dict[str, Any]:
    """Seconds per step over the timed steps, setup time (to the end of step 1), peak memory."""
    return {
        "seconds_per_step": clock.seconds_per_step,
        "timed_steps": clock.timed_steps,
        "setup_seconds": clock.first_step,
        "peak_memory_gb": clock.peak_memory_gb(),
    }


def run_ours(
    s: Settings, model: Path, listing: Path, work: Path, switches: dict[str, Any]
) -> dict[str, Any]:
    from lorainbox.trainers.base import Footprint
    from lorainbox.trainers.diffusion import DiffusionOptions, DiffusionTrainer

    recipe = {
        "name": "bench",
        "kind": "diffusion",
        "base_model": str(model),
        "trainer": "torch",
        "lora": {"rank": s.rank, "alpha": s.rank},
        "train": {
            "iters": s.steps,
            "batch_size": s.batch,
            "learning_rate": s.lr,
            "steps_per_report": s.steps,
            "save_every": 10 * s.steps,
            "device": s.device,
        },
        "diffusion": {"resolution": s.resolution},
    }
    ctx = train_context(recipe, work, listing, Footprint(s.batch, 2048, False))
    clock = StepClock(s.device, s.steps, s.warmup)
    options = DiffusionOptions(samples=False, **switches)
    DiffusionTrainer(options, on_step=lambda step, n: clock.mark(step)).train(ctx)
    return timed_result(clock)


def run_diffusers_example(s: Settings, model: Path, listing: Path) -> dict[str, Any]:
    """train_text_to_image_lora.py's training loop with its default arguments, bf16 on CUDA."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from accelerate import Accelerator
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from diffusers.optimization import get_scheduler
    from peft import LoraConfig
    from PIL import Image
    from transformers import CLIPTextModel, CLIPTokenizer

    clock = StepClock(s.device, s.steps, s.warmup)
    bf16 = s.device == "cuda" and torch.cuda.is_bf16_supported()
    accelerator = Accelerator(mixed_precision="bf16" if bf16 else "no", cpu=s.device == "cpu")
    noise_scheduler = DDPMScheduler.from_pretrained(model, subfolder="scheduler")
    tokenizer = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(model, subfolder="text_encoder")
    vae = AutoencoderKL.from_pretrained(model, subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet")
    for module in (unet, vae, text_encoder):
        module.requires_grad_(False)
    weight_dtype = torch.bfloat16 if bf16 else torch.float32
    unet_lora_config = LoraConfig(
        r=s.rank,
        lora_alpha=s.rank,
        init_lora_weights="gaussian",
        target_modules=["to_k", "to_q", "to_v", "to_out.0"],
    )
    unet.to(accelerator.device, dtype=weight_dtype)
    vae.to(accelerator.device, dtype=weight_dtype)
    text_encoder.to(accelerator.device, dtype=weight_dtype)
    unet.add_adapter(unet_lora_config)
    lora_layers = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        lora_layers, lr=s.lr, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-08
    )
    rows = [json.loads(line) for line in listing.read_text().splitlines()]

    def transform(path: str) -> torch.Tensor:
        """Resize (Lanczos, the script's default, shorter side) -> RandomCrop -> ToTensor ->
        Normalize([0.5], [0.5])."""
        image = Image.open(path).convert("RGB")
        scale = s.resolution / min(image.size)
        size = (round(image.width * scale), round(image.height * scale))
        image = image.resize(size, Image.Resampling.LANCZOS)
        left = random.randint(0, size[0] - s.resolution)
        top = random.randint(0, size[1] - s.resolution)
        image = image.crop((left, top, left + s.resolution, top + s.resolution))
        array = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (array - 0.5) / 0.5

    class Images(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(rows)

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            ids = tokenizer(
                rows[i]["caption"],
                max_length=tokenizer.model_max_length,
                padding="max_length",
                truncation=True,
                return_tensors="pt",
            ).input_ids[0]
            return {"pixel_values": transform(rows[i]["path"]), "input_ids": ids}

    def collate_fn(examples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        pixel_values = torch.stack([e["pixel_values"] for e in examples])
        pixel_values = pixel_values.to(memory_format=torch.contiguous_format).float()
        return {
            "pixel_values": pixel_values,
            "input_ids": torch.stack([e["input_ids"] for e in examples]),
        }

    loader = torch.utils.data.DataLoader(
        Images(), shuffle=True, collate_fn=collate_fn, batch_size=s.batch, num_workers=0
    )
    lr_scheduler = get_scheduler(
        "constant", optimizer=optimizer, num_warmup_steps=0, num_training_steps=s.steps
    )
    unet, optimizer, loader, lr_scheduler = accelerator.prepare(
        unet, optimizer, loader, lr_scheduler
    )
    step = 0
    while step < s.steps:
        unet.train()
        train_loss = 0.0
        for batch in loader:
            with accelerator.accumulate(unet):
                latents = vae.encode(
                    batch["pixel_values"].to(dtype=weight_dtype)
                ).latent_dist.sample()
                latents = latents * vae.config.scaling_factor
                noise = torch.randn_like(latents)
                bsz = latents.shape[0]
                timesteps = torch.randint(
                    0, noise_scheduler.config.num_train_timesteps, (bsz,), device=latents.device
                ).long()
                noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
                encoder_hidden_states = text_encoder(batch["input_ids"], return_dict=False)[0]
                if noise_scheduler.config.prediction_type == "epsilon":
                    target = noise
                else:
                    target = noise_scheduler.get_velocity(latents, noise, timesteps)
                model_pred = unet(
                    noisy_latents, timesteps, encoder_hidden_states, return_dict=False
                )[0]
                loss = F.mse_loss(model_pred.float(), target.float(), reduction="mean")
                avg_loss = accelerator.gather(loss.repeat(s.batch)).mean()
                train_loss += avg_loss.item()
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(lora_layers, 1.0)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            if accelerator.sync_gradients:
                step += 1
                clock.mark(step)
                train_loss = 0.0
            _logs = {"step_loss": loss.detach().item(), "lr": lr_scheduler.get_last_lr()[0]}
            if step >= s.steps:
                break
    return timed_result(clock)


def child(call: ArmCall) -> dict[str, Any]:
    s = Settings(**call.settings)
    random.seed(0)
    if call.arm == "diffusers-example":
        return run_diffusers_example(s, call.model, call.data)
    switches = {**ABLATIONS, **COMPILE}.get(call.arm, {})
    return run_ours(s, call.model, call.data, call.work, switches)


# --- the parent -----------------------------------------------------------------------------------


def table(results: dict[str, dict[str, Any]], baseline: str) -> str:
    columns = [
        Column("s/step", 10, lambda r: r["seconds_per_step"], ".4f"),
        Column("peak GB", 10, lambda r: r["peak_memory_gb"], ".2f"),
        Column("setup s", 10, lambda r: r["setup_seconds"] or 0, ".1f"),
        Column("time vs example", 17, ratio_to(results, baseline, "seconds_per_step"), ".2f", "x"),
    ]
    return results_table(results, columns, "seconds_per_step", arm_width=24)


def main() -> None:
    p = bench_parser(__doc__, tiny_help="tiny pipeline at 64 px on the CPU")
    p.add_argument("--images", type=int)
    add_round_args(p)
    p.add_argument("--out", type=Path)
    p.add_argument("--keep", type=Path, help="build the model and images here (and keep them)")
    args = parse_or_run_arm(p, child)
    if args is None:
        return

    device = resolve_device(args.device, args.tiny)
    big = not args.tiny
    s = Settings(
        device=device,
        steps=args.steps or (40 if big else 10),
        warmup=args.warmup or (10 if big else 3),
        resolution=512 if big else 64,
    )
    arms = arms_to_run(args, device, ["diffusers-example", "ours"], list(ABLATIONS))
    work = args.keep or Path(tempfile.mkdtemp(prefix="sd-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"building the {'tiny' if args.tiny else 'SD 1.5-shaped'} pipeline and images in {work}")
    model = build_model(work / "model", args.tiny)
    listing = build_images(work / "images", args.images or (64 if big else 8), s.resolution)

    runs = run_rounds(
        arms, args.repeat, lambda arm: spawn_arm(__file__, arm, s, model, listing, work, args.tiny)
    )
    results = {arm: found[0] for arm, found in runs.items()}
    if args.repeat > 1:
        results = {
            arm: median_run(found, "seconds_per_step", higher_is_better=False, digits=4)
            for arm, found in runs.items()
        }
    print()
    print(table(results, "diffusers-example"))
    base, ours = results.get("diffusers-example", {}), results.get("ours", {})
    summary = {}
    if "seconds_per_step" in base and "seconds_per_step" in ours:
        ratio = ours["seconds_per_step"] / base["seconds_per_step"]
        summary = {
            "time_ratio": ratio,
            "speed_vs_example": 1 / ratio,
            "memory_ratio": ours["peak_memory_gb"] / base["peak_memory_gb"],
            "goal": "time_ratio <= 1.25 (at least 0.8x the example's speed)",
            "met": ratio <= 1.25,
        }
        print(
            f"\nours vs diffusers' example: {ratio:.2f}x the step time ({1 / ratio:.2f}x speed), "
            f"{summary['memory_ratio']:.2f}x peak memory"
        )
    name = "tiny" if args.tiny else "SD 1.5-shaped, random weights"
    write_report(args.out, s, name, device, results, summary)


if __name__ == "__main__":
    main()
