"""Our SD LoRA training step against diffusers' own LoRA example scripts: SD 1.5 and SDXL.

Two settings (``--sets sd15,sdxl``, both by default), each against a faithful re-implementation
of the loop of diffusers' example with that example's default arguments, batch 1:

- ``sd15``: ``examples/text_to_image/train_text_to_image_lora.py`` at 512 px on a randomly
  initialised SD 1.5-shaped pipeline (UNet block_out_channels 320/640/1280/1280,
  cross_attention_dim 768, SD's VAE, CLIP-L text encoder; fp32 on disk). The VAE and the text
  encoder run every step in bf16.
- ``sdxl``: ``examples/text_to_image/train_text_to_image_lora_sdxl.py`` at 1024 px on a randomly
  initialised SDXL-shaped pipeline (UNet 320/640/1280 with 1/2/10 transformer layers, 2.57B
  parameters, cross_attention_dim 2048, text_time conditioning; SDXL's VAE; CLIP-L and the
  CLIP-bigG text encoder with projection; EulerDiscreteScheduler; bf16 on disk). Both text
  encoders run every step (prompt and pooled embeddings), the VAE stays float32 (the script
  does so when no separate VAE is given), add_time_ids come from original size, crop and
  target size.

Both baselines: accelerate with bf16 mixed precision, UNet LoRA rank 4 (alpha 4, gaussian init)
on to_k/to_q/to_v/to_out.0, AdamW (lr 1e-4, weight decay 1e-2), constant schedule, images
decoded and transformed in the main process (``dataloader_num_workers = 0``), the loss read
back every step, gradients clipped at 1.0. Ours is the real :class:`DiffusionTrainer` on the
same images and captions (samples off). --tiny uses the tiny test pipelines (SD 1.5- and
SDXL-shaped) at 64 px on the CPU. Each arm runs in its own process. Reported per setting:
seconds per step after warm-up, peak memory, and ours/example ratios of both.

Goal: ours at <= 0.8x the example's step time, at <= its peak memory, in both settings.

    python bench/sd_lora_vs_diffusers.py --budget-s 400 --out "$OUT/sd-sets.json"   # H200
    python bench/sd_lora_vs_diffusers.py --tiny --sets sd15,sdxl --out /tmp/sd-tiny.json  # CPU
    python bench/sd_lora_vs_diffusers.py --sets sdxl --arms diffusers-example,ours --repeat 3
    python bench/sd_lora_vs_diffusers.py --check-build   # full-size shapes on the meta device

The default CUDA run (both settings; diffusers-example, ours and ours+compile each; 40 steps
with 10 warm-up for sd15, 30 with 10 for sdxl) is estimated at 6-8 minutes on an H200: about
a minute to build both pipelines and the images, 35-60 s for each eager arm, and the two
compile arms most of the rest (compiling SDXL's UNet for training is the least known part,
perhaps 2-3 minutes). Arms run most wanted first across the settings: both settings' example
and ours arms, then the compile arms, then the ablations; ``--budget-s`` skips the arms left
after that many seconds and stops one still running ``--grace-s`` (60) seconds later, so
``--budget-s 400`` ends within about 8 minutes whatever compiling costs. The JSON is written
after every arm, so a run cut short keeps what it measured.

Ablation arms (``--ablations``; off by default) turn one of our switches off each (latent
caching, channels-last, bf16, cuDNN autotuning, deferred loss reads); ``ours+compile`` (the
trainer's compile switch) runs by default on CUDA, ``--with-compile``/``--no-with-compile`` to
choose. ``--repeat N`` runs N interleaved rounds over the arms and reports each arm's median
step time, every round's beside it.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from _harness import (
    COMPILE,
    RESULT,
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
)

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

BASELINE = "diffusers-example"
ABLATIONS = {
    "ours-no-latent-cache": {"cache_latents": False},
    "ours-no-channels-last": {"channels_last": False},
    "ours-fp32": {"bf16": False},
    "ours-no-cudnn-benchmark": {"cudnn_benchmark": False},
    "ours-sync-every-step": {"defer_sync": False},
}
OURS = ("ours", *COMPILE)
SUBJECTS = ["a red fox", "a lighthouse", "a sailing ship", "a bowl of fruit", "a castle"]
STYLES = ["in sks style", "sks style painting", "sks style, detailed", "sks style drawing"]

GOAL_TIME, GOAL_MEMORY = 0.8, 1.0
GOAL = "ours <= 0.8x the example's step time (>= 1.25x its speed) at <= its peak memory"
CUT_AT = "SD_BENCH_CUT_AT"
"""The environment variable that gives a child the wall-clock time (``time.time()``) at which
it stops itself: the bench's time budget plus the grace."""


@dataclass(frozen=True)
class Settings:
    device: str
    steps: int
    warmup: int
    resolution: int
    arch: str = "sd15"
    """``sd15`` or ``sdxl``: which pipeline, and which of diffusers' examples is the baseline."""
    rank: int = 4
    lr: float = 1e-4
    batch: int = 1


@dataclass(frozen=True)
class Setting:
    """One setting's defaults: full size (CUDA) and --tiny (the CPU)."""

    name: str
    example: str
    resolution: int
    steps: int
    warmup: int
    images: int


SETS = {
    "sd15": Setting(
        "SD 1.5-shaped, random fp32 weights", "train_text_to_image_lora.py", 512, 40, 10, 64
    ),
    "sdxl": Setting(
        "SDXL-shaped (2.57B UNet), random bf16 weights",
        "train_text_to_image_lora_sdxl.py",
        1024,
        30,
        10,
        32,
    ),
}
TINY = {"resolution": 64, "steps": 10, "warmup": 3, "images": 8}


# --- fixtures ---------------------------------------------------------------------------------


def clip_text_config(tokenizer: Any, **shape: Any) -> Any:
    """A CLIP text encoder config: CLIP's vocabulary and positions, the tokenizer's specials."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=49408,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **shape,
    )


CLIP_L = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "hidden_act": "quick_gelu",
}
"""SD 1.5's text encoder, and SDXL's first (CLIPTextModel: its config says projection_dim 768,
but the model has no projection; SDXL takes its penultimate hidden states)."""
CLIP_BIGG = {
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "hidden_act": "gelu",
    "projection_dim": 1280,
}
"""SDXL's second text encoder, OpenCLIP ViT-bigG/14's (CLIPTextModelWithProjection)."""
SD_VAE = {
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "latent_channels": 4,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
}
SD15_UNET = {
    "sample_size": 64,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
}
SDXL_UNET = {
    "sample_size": 128,
    "block_out_channels": (320, 640, 1280),
    "layers_per_block": 2,
    "transformer_layers_per_block": (1, 2, 10),
    "attention_head_dim": (5, 10, 20),
    "cross_attention_dim": 2048,
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
    "use_linear_projection": True,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
}
"""stabilityai/stable-diffusion-xl-base-1.0's unet/config.json (the rest are the defaults)."""
SCALED_LINEAR = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
}
SDXL_SCHEDULER = {
    **SCALED_LINEAR,
    "prediction_type": "epsilon",
    "interpolation_type": "linear",
    "timestep_spacing": "leading",
    "use_karras_sigmas": False,
}
"""SDXL base's scheduler_config.json, less the keys EulerDiscreteScheduler does not take
(clip_sample, sample_max_value, set_alpha_to_one, skip_prk_steps)."""


Done = Callable[[Any], Any]
"""Applied to each model as soon as it is made: ``build_model`` moves it to the CPU in the
dtype it is saved in, so that SDXL's 3.5B parameters are never all in float32 at once."""


def sd15_models(tokenizer: Any, done: Done = lambda m: m) -> dict[str, Any]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    return {
        "unet": done(UNet2DConditionModel(**SD15_UNET)),
        "vae": done(AutoencoderKL(**SD_VAE, sample_size=512)),
        "text_encoder": done(CLIPTextModel(clip_text_config(tokenizer, **CLIP_L))),
    }


def sdxl_models(tokenizer: Any, tokenizer_2: Any, done: Done = lambda m: m) -> dict[str, Any]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    vae = {"sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True}
    clip_l = clip_text_config(tokenizer, **CLIP_L, projection_dim=768)
    return {
        "unet": done(UNet2DConditionModel(**SDXL_UNET)),
        "vae": done(AutoencoderKL(**SD_VAE, **vae)),
        "text_encoder": done(CLIPTextModel(clip_l)),
        "text_encoder_2": done(
            CLIPTextModelWithProjection(clip_text_config(tokenizer_2, **CLIP_BIGG))
        ),
    }


def build_model(folder: Path, arch: str, tiny: bool, device: str) -> Path:
    """The tiny pipeline, or SD 1.5's (fp32 on disk) or SDXL's (bf16 on disk) architecture
    with random weights; initialised on the GPU where there is one (SDXL is 3.5B parameters),
    each model moved to the CPU as soon as it is made."""
    if tiny:
        from lorainbox.models.tinysd import build_tiny_sd

        return build_tiny_sd(folder, xl=arch == "sdxl")
    import torch
    from diffusers import (
        EulerDiscreteScheduler,
        PNDMScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
    )
    from lorainbox.models.tinysd import write_clip_tokenizer
    from transformers import CLIPTokenizer

    torch.manual_seed(0)
    dtype = torch.bfloat16 if arch == "sdxl" else torch.float32
    tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(folder / "tokenizer"))

    def done(model: Any) -> Any:
        return model.to("cpu", dtype)

    pipe: Any
    if arch == "sdxl":
        tokenizer_2 = CLIPTokenizer.from_pretrained(write_clip_tokenizer(folder / "tokenizer_2"))
        with torch.device("cuda" if device == "cuda" else "cpu"):
            models = sdxl_models(tokenizer, tokenizer_2, done)
        pipe = StableDiffusionXLPipeline(
            **models,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER),
        )
    else:
        with torch.device("cuda" if device == "cuda" else "cpu"):
            models = sd15_models(tokenizer, done)
        pipe = StableDiffusionPipeline(
            **models,
            tokenizer=tokenizer,
            scheduler=PNDMScheduler(**SCALED_LINEAR, skip_prk_steps=True),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    pipe.save_pretrained(folder, safe_serialization=True)
    if device == "cuda":
        torch.cuda.empty_cache()
    return folder


def check_build() -> dict[str, dict[str, int]]:
    """Both full-size architectures built on the meta device (no memory): parameters each."""
    import torch
    from lorainbox.models.tinysd import write_clip_tokenizer
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(Path(tmp)))
        with torch.device("meta"):
            built = {"sd15": sd15_models(tokenizer), "sdxl": sdxl_models(tokenizer, tokenizer)}
    return {
        arch: {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
        for arch, models in built.items()
    }


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
    from lorainbox.trainers.diffusion.trainer import DiffusionOptions, DiffusionTrainer

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


def example_pixels(path: str, resolution: int) -> tuple[Any, tuple[int, int], tuple[int, int]]:
    """Both examples' default image transform: Resize (shorter side, Lanczos: their default
    image_interpolation_mode) -> RandomCrop -> ToTensor -> Normalize([0.5], [0.5]); with the
    original (height, width) and the crop's (top, left), which SDXL's script conditions on."""
    import numpy as np
    import torch
    from PIL import Image

    image = Image.open(path).convert("RGB")
    original = (image.height, image.width)
    scale = resolution / min(image.size)
    size = (round(image.width * scale), round(image.height * scale))
    image = image.resize(size, Image.Resampling.LANCZOS)
    top = int(torch.randint(0, size[1] - resolution + 1, (1,)))  # RandomCrop.get_params
    left = int(torch.randint(0, size[0] - resolution + 1, (1,)))
    image = image.crop((left, top, left + resolution, top + resolution))
    array = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (array - 0.5) / 0.5, original, (top, left)


def token_ids(tokenizer: Any, caption: str) -> Any:
    return tokenizer(
        caption,
        max_length=tokenizer.model_max_length,
        padding="max_length",
        truncation=True,
        return_tensors="pt",
    ).input_ids[0]


def run_diffusers_example(s: Settings, model: Path, listing: Path) -> dict[str, Any]:
    """train_text_to_image_lora.py's training loop with its default arguments, bf16 on CUDA."""
    import torch
    import torch.nn.functional as F
    from accelerate import Accelerator
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from diffusers.optimization import get_scheduler
    from peft import LoraConfig
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

    class Images(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(rows)

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            pixels, _, _ = example_pixels(rows[i]["path"], s.resolution)
            return {"pixel_values": pixels, "input_ids": token_ids(tokenizer, rows[i]["caption"])}

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


def text_encoder_class(model: Path, subfolder: str) -> Any:
    """The script's import_model_class_from_model_name_or_path: the config's architecture."""
    import transformers

    name = json.loads((model / subfolder / "config.json").read_text())["architectures"][0]
    if name not in ("CLIPTextModel", "CLIPTextModelWithProjection"):
        raise ValueError(f"{name} is not supported.")
    return getattr(transformers, name)


def run_diffusers_example_sdxl(s: Settings, model: Path, listing: Path) -> dict[str, Any]:
    """train_text_to_image_lora_sdxl.py's training loop with its default arguments (but batch 1,
    as for SD 1.5; the script's default is 16), bf16 mixed precision on CUDA."""
    import torch
    import torch.nn.functional as F
    from accelerate import Accelerator
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from diffusers.optimization import get_scheduler
    from peft import LoraConfig
    from transformers import AutoTokenizer

    clock = StepClock(s.device, s.steps, s.warmup)
    bf16 = s.device == "cuda" and torch.cuda.is_bf16_supported()
    accelerator = Accelerator(mixed_precision="bf16" if bf16 else "no", cpu=s.device == "cpu")
    tokenizer_one = AutoTokenizer.from_pretrained(model, subfolder="tokenizer", use_fast=False)
    tokenizer_two = AutoTokenizer.from_pretrained(model, subfolder="tokenizer_2", use_fast=False)
    text_encoder_cls_one = text_encoder_class(model, "text_encoder")
    text_encoder_cls_two = text_encoder_class(model, "text_encoder_2")
    noise_scheduler = DDPMScheduler.from_pretrained(model, subfolder="scheduler")
    text_encoder_one = text_encoder_cls_one.from_pretrained(model, subfolder="text_encoder")
    text_encoder_two = text_encoder_cls_two.from_pretrained(model, subfolder="text_encoder_2")
    vae = AutoencoderKL.from_pretrained(model, subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet")
    for module in (vae, text_encoder_one, text_encoder_two, unet):
        module.requires_grad_(False)
    weight_dtype = torch.bfloat16 if bf16 else torch.float32
    unet.to(accelerator.device, dtype=weight_dtype)
    vae.to(accelerator.device, dtype=torch.float32)  # no --pretrained_vae_model_name_or_path
    text_encoder_one.to(accelerator.device, dtype=weight_dtype)
    text_encoder_two.to(accelerator.device, dtype=weight_dtype)
    unet.add_adapter(
        LoraConfig(
            r=s.rank,
            lora_alpha=s.rank,
            init_lora_weights="gaussian",
            target_modules=["to_k", "to_q", "to_v", "to_out.0"],
        )
    )
    params_to_optimize = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params_to_optimize, lr=s.lr, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-08
    )
    rows = [json.loads(line) for line in listing.read_text().splitlines()]

    class Images(torch.utils.data.Dataset):
        """preprocess_train, one example at a time (the dataset's with_transform)."""

        def __len__(self) -> int:
            return len(rows)

        def __getitem__(self, i: int) -> dict[str, Any]:
            pixels, original_size, crop_top_left = example_pixels(rows[i]["path"], s.resolution)
            return {
                "pixel_values": pixels,
                "original_sizes": original_size,
                "crop_top_lefts": crop_top_left,
                "input_ids_one": token_ids(tokenizer_one, rows[i]["caption"]),
                "input_ids_two": token_ids(tokenizer_two, rows[i]["caption"]),
            }

    def collate_fn(examples: list[dict[str, Any]]) -> dict[str, Any]:
        pixel_values = torch.stack([e["pixel_values"] for e in examples])
        pixel_values = pixel_values.to(memory_format=torch.contiguous_format).float()
        return {
            "pixel_values": pixel_values,
            "input_ids_one": torch.stack([e["input_ids_one"] for e in examples]),
            "input_ids_two": torch.stack([e["input_ids_two"] for e in examples]),
            "original_sizes": [e["original_sizes"] for e in examples],
            "crop_top_lefts": [e["crop_top_lefts"] for e in examples],
        }

    loader = torch.utils.data.DataLoader(
        Images(), shuffle=True, collate_fn=collate_fn, batch_size=s.batch, num_workers=0
    )
    lr_scheduler = get_scheduler(
        "constant", optimizer=optimizer, num_warmup_steps=500, num_training_steps=s.steps
    )
    unet, optimizer, loader, lr_scheduler = accelerator.prepare(
        unet, optimizer, loader, lr_scheduler
    )

    def encode_prompt(input_ids_list: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Penultimate hidden states of both encoders side by side; the last one's pooled."""
        prompt_embeds_list = []
        for text_encoder, ids in zip(
            (text_encoder_one, text_encoder_two), input_ids_list, strict=True
        ):
            out = text_encoder(
                ids.to(text_encoder.device), output_hidden_states=True, return_dict=False
            )
            pooled_prompt_embeds = out[0]
            prompt_embeds = out[-1][-2]
            bs_embed, seq_len, _ = prompt_embeds.shape
            prompt_embeds_list.append(prompt_embeds.view(bs_embed, seq_len, -1))
        return torch.concat(prompt_embeds_list, dim=-1), pooled_prompt_embeds.view(bs_embed, -1)

    def compute_time_ids(original_size: tuple, crops_coords_top_left: tuple) -> torch.Tensor:
        add_time_ids = list(original_size + crops_coords_top_left + (s.resolution, s.resolution))
        return torch.tensor([add_time_ids]).to(accelerator.device, dtype=weight_dtype)

    step = 0
    while step < s.steps:
        unet.train()
        train_loss = 0.0
        for batch in loader:
            with accelerator.accumulate(unet):
                model_input = vae.encode(batch["pixel_values"]).latent_dist.sample()
                model_input = model_input * vae.config.scaling_factor
                model_input = model_input.to(weight_dtype)
                noise = torch.randn_like(model_input)
                bsz = model_input.shape[0]
                timesteps = torch.randint(
                    0, noise_scheduler.config.num_train_timesteps, (bsz,), device=model_input.device
                ).long()
                noisy_model_input = noise_scheduler.add_noise(model_input, noise, timesteps)
                add_time_ids = torch.cat(
                    [
                        compute_time_ids(o, c)
                        for o, c in zip(
                            batch["original_sizes"], batch["crop_top_lefts"], strict=True
                        )
                    ]
                )
                unet_added_conditions = {"time_ids": add_time_ids}
                prompt_embeds, pooled_prompt_embeds = encode_prompt(
                    [batch["input_ids_one"], batch["input_ids_two"]]
                )
                unet_added_conditions["text_embeds"] = pooled_prompt_embeds
                model_pred = unet(
                    noisy_model_input,
                    timesteps,
                    prompt_embeds,
                    added_cond_kwargs=unet_added_conditions,
                    return_dict=False,
                )[0]
                if noise_scheduler.config.prediction_type == "epsilon":
                    target = noise
                elif noise_scheduler.config.prediction_type == "v_prediction":
                    target = noise_scheduler.get_velocity(model_input, noise, timesteps)
                else:
                    raise ValueError(noise_scheduler.config.prediction_type)
                loss = F.mse_loss(model_pred.float(), target.float(), reduction="mean")
                avg_loss = accelerator.gather(loss.repeat(s.batch)).mean()
                train_loss += avg_loss.item()
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(params_to_optimize, 1.0)
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


class ArmCut(Exception):
    """Raised in a child at its cut time (SIGALRM)."""


def stop_at_cut_time() -> None:
    """Arm SIGALRM for the cut time the parent gave, if any."""
    cut = os.environ.get(CUT_AT)
    if not cut:
        return

    def alarm(signum: int, frame: Any) -> None:
        raise ArmCut

    signal.signal(signal.SIGALRM, alarm)
    signal.alarm(max(1, math.ceil(float(cut) - time.time())))


def child(call: ArmCall) -> dict[str, Any]:
    s = Settings(**call.settings)
    random.seed(0)
    stop_at_cut_time()
    try:
        if call.arm == BASELINE:
            run = run_diffusers_example_sdxl if s.arch == "sdxl" else run_diffusers_example
            result = run(s, call.model, call.data)
        else:
            switches = {**ABLATIONS, **COMPILE}.get(call.arm, {})
            result = run_ours(s, call.model, call.data, call.work, switches)
        signal.alarm(0)
        return result
    except ArmCut:
        # Out at once: compile workers and CUDA state need no tidy exit, the report does.
        cut = {"skipped": "stopped: still running --grace-s seconds past --budget-s"}
        print(RESULT + json.dumps(cut), flush=True)
        os._exit(0)


# --- the parent -----------------------------------------------------------------------------------


def table(results: dict[str, dict[str, Any]]) -> str:
    columns = [
        Column("s/step", 10, lambda r: r["seconds_per_step"], ".4f"),
        Column("peak GB", 10, lambda r: r["peak_memory_gb"], ".2f"),
        Column("setup s", 10, lambda r: r["setup_seconds"] or 0, ".1f"),
        Column("wall s", 9, lambda r: r.get("wall_seconds", float("nan")), ".0f"),
        Column("time vs example", 17, ratio_to(results, BASELINE, "seconds_per_step"), ".2f", "x"),
        Column("mem vs example", 16, ratio_to(results, BASELINE, "peak_memory_gb"), ".2f", "x"),
    ]
    return results_table(results, columns, "seconds_per_step", arm_width=24)


def summarize(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each of our arms against the example: time and memory ratios, and whether it meets the
    goal; the top-level figures are the trainer's default (``ours``, no compile)."""
    base = results.get(BASELINE, {})
    summary: dict[str, Any] = {"goal": GOAL}
    if "seconds_per_step" not in base:
        return summary
    ratios = {}
    for arm in OURS:
        r = results.get(arm, {})
        if "seconds_per_step" in r:
            time_ratio = r["seconds_per_step"] / base["seconds_per_step"]
            memory_ratio = r["peak_memory_gb"] / base["peak_memory_gb"]
            ratios[arm] = {
                "time_ratio": time_ratio,
                "speed_vs_example": 1 / time_ratio,
                "memory_ratio": memory_ratio,
                "met": time_ratio <= GOAL_TIME and memory_ratio <= GOAL_MEMORY,
            }
    if ratios:
        summary["ratios"] = ratios
    if "ours" in ratios:
        summary.update(ratios["ours"])
    return summary


def tasks_in_order(args: Any, device: str, sets: list[str]) -> list[tuple[str, str]]:
    """(setting, arm) pairs, most wanted first across the settings: the example and ours, then
    the compile arm, then the ablations; --arms' order within each of those."""
    if args.ablations is None:
        args.ablations = False  # the ablations run when asked for, on CUDA too
    arms = arms_to_run(args, device, [BASELINE, "ours"], list(ABLATIONS), compile_on_cuda=True)
    known = {BASELINE, "ours", *COMPILE, *ABLATIONS}
    unknown = [a for a in arms if a not in known]
    if unknown:
        raise SystemExit(f"unknown arms: {', '.join(unknown)} (known: {', '.join(known)})")
    tiers = [[BASELINE, "ours"], list(COMPILE), list(ABLATIONS)]
    return [(arch, arm) for tier in tiers for arch in sets for arm in arms if arm in tier]


def main() -> None:
    p = bench_parser(__doc__, tiny_help="tiny pipelines at 64 px on the CPU")
    p.add_argument(
        "--sets",
        default="sd15,sdxl",
        help="comma-separated settings: sd15 (512 px, train_text_to_image_lora.py), sdxl "
        "(1024 px, train_text_to_image_lora_sdxl.py); default both",
    )
    p.add_argument("--images", type=int, help="images per setting (default 64 sd15, 32 sdxl)")
    p.add_argument(
        "--budget-s",
        type=float,
        help="skip the arms left after this many seconds (building included); an arm still "
        "running --grace-s seconds later is stopped",
    )
    p.add_argument("--grace-s", type=float, default=60.0)
    p.add_argument(
        "--check-build",
        action="store_true",
        help="build the full-size architectures on the meta device, print their parameter "
        "counts and exit",
    )
    add_round_args(p)
    p.add_argument("--out", type=Path)
    p.add_argument("--keep", type=Path, help="build the models and images here (and keep them)")
    args = parse_or_run_arm(p, child)
    if args is None:
        return
    if args.check_build:
        for arch, counts in check_build().items():
            parts = ", ".join(f"{name} {n / 1e6:,.1f}M" for name, n in counts.items())
            print(f"{arch}: {parts}; total {sum(counts.values()) / 1e9:.3f}B")
        return

    started = time.time()
    deadline = started + args.budget_s if args.budget_s else math.inf
    device = resolve_device(args.device, args.tiny)
    sets = args.sets.split(",")
    for arch in sets:
        if arch not in SETS:
            raise SystemExit(f"unknown setting {arch!r} (known: {', '.join(SETS)})")
    tasks = tasks_in_order(args, device, sets)

    settings: dict[str, Settings] = {}
    for arch in sets:
        d = {**asdict(SETS[arch]), **(TINY if args.tiny else {})}
        settings[arch] = Settings(
            device=device,
            steps=args.steps or d["steps"],
            warmup=args.warmup or d["warmup"],
            resolution=d["resolution"],
            arch=arch,
        )
    work = args.keep or Path(tempfile.mkdtemp(prefix="sd-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    fixtures: dict[str, tuple[Path, Path]] = {}
    for arch in sets:
        s = settings[arch]
        kind = "tiny" if args.tiny else SETS[arch].name
        print(f"building the {arch} pipeline ({kind}) and images in {work}", flush=True)
        built = time.time()
        model = build_model(work / f"model-{arch}", arch, args.tiny, device)
        count = args.images or (TINY["images"] if args.tiny else SETS[arch].images)
        listing = build_images(work / f"images-{arch}", count, s.resolution)
        fixtures[arch] = (model, listing)
        print(f"  built in {time.time() - built:.0f} s", flush=True)

    found: dict[tuple[str, str], list[dict[str, Any]]] = {task: [] for task in tasks}

    def report() -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": {arch: "tiny" if args.tiny else SETS[arch].name for arch in sets},
            "device_name": device_name(device),
            "torch": torch_version(),
            "seconds": round(time.time() - started, 1),
            "goal": GOAL,
            "sets": {},
        }
        for arch in sets:
            results = {}
            for (a, arm), runs in found.items():
                if a == arch and runs:
                    results[arm] = (
                        median_run(runs, "seconds_per_step", higher_is_better=False, digits=4)
                        if args.repeat > 1
                        else runs[0]
                    )
            out["sets"][arch] = {
                "example": SETS[arch].example,
                "settings": asdict(settings[arch]),
                "results": results,
                "summary": summarize(results),
            }
        verdicts = [out["sets"][arch]["summary"].get("met") for arch in sets]
        out["met"] = None if None in verdicts else all(verdicts)
        return out

    def run(task: str) -> dict[str, Any]:
        arch, arm = task.split("/", 1)
        if time.time() > deadline:
            result: dict[str, Any] = {"skipped": "past the bench's time budget (--budget-s)"}
        else:
            os.environ[CUT_AT] = str(deadline + args.grace_s) if args.budget_s else ""
            model, listing = fixtures[arch]
            result = spawn_arm(__file__, arm, settings[arch], model, listing, work, args.tiny)
        found[arch, arm].append(result)
        if args.out:  # after every arm: a run cut short keeps what it measured
            write_json(args.out, report())
        return result

    run_rounds([f"{arch}/{arm}" for arch, arm in tasks], args.repeat, run)
    final = report()
    for arch in sets:
        entry = final["sets"][arch]
        s = settings[arch]
        print(f"\n{arch}: {entry['example']} vs ours, {s.resolution} px, batch {s.batch}")
        print(table(entry["results"]))
        for arm, r in entry["summary"].get("ratios", {}).items():
            print(
                f"{arm} vs the example: {r['time_ratio']:.2f}x the step time "
                f"({r['speed_vs_example']:.2f}x speed), {r['memory_ratio']:.2f}x peak memory"
                f" -> goal {'met' if r['met'] else 'not met'}"
            )
    print(f"\ngoal ({GOAL}), ours in every setting: {final['met']}")
    if args.out:
        write_json(args.out, final)
        print(f"wrote {args.out}")


def write_json(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


def device_name(device: str) -> str:
    import torch

    return torch.cuda.get_device_name() if device == "cuda" else device


def torch_version() -> str:
    import torch

    return torch.__version__


if __name__ == "__main__":
    main()
