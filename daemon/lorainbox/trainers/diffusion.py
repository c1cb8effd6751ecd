"""Stable Diffusion (1.x, 2.x, XL) LoRA with diffusers + PEFT, on MPS, CUDA or the CPU.

The person drops captioned images; this trains a LoRA on the UNet's attention projections (and
the text encoder's when the recipe asks), and writes it twice: in diffusers' own format and in
the kohya format that AUTOMATIC1111, ComfyUI and Draw Things load. Images are sorted into
aspect-ratio buckets around the recipe's resolution, encoded by the VAE once and cached (as the
latent distribution's mean and spread, so every step still samples), and so are the captions'
embeddings while the text encoder is frozen: a training step then runs only the UNet. Sample
images before and after training end up side by side in ``samples.png``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import random
import shutil
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lorainbox.core.errors import DropError
from lorainbox.core.layout import SAMPLES_FILE
from lorainbox.drop.imagelist import IMAGE_FIX, ImageItem, read_images
from lorainbox.drop.recipe import Recipe
from lorainbox.trainers import kohya
from lorainbox.trainers.base import Footprint, Paused, TrainContext, TrainResult, total_steps
from lorainbox.trainers.pace import Pace, rounded
from lorainbox.trainers.torch_common import (
    GB,
    DeviceSetup,
    MemoryMeter,
    MPSFallbackLog,
    atomic_replace_dir,
    empty_cache,
    lora_alpha,
    make_optimizer,
    make_scheduler,
    optimizer_step,
    out_of_memory_guard,
    restore_training_state,
    resumable_checkpoint,
    save_checkpoint,
    seed_everything,
    setup_device,
    training_state,
)

log = logging.getLogger(__name__)

UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
BUCKET_STEP = 64
DEFAULT_SCALE = 1.0
"""alpha = rank when the recipe sets neither: the usual choice for image LoRAs."""
DIFFUSERS_FILE = "pytorch_lora_weights.safetensors"
MAX_SAMPLES = 4
BASE_WHERE = "recipe.toml, `base_model`"

ACT_BYTES_PER_PARAM = 6.0
"""Activation bytes per UNet parameter for one 512x512 image in 16-bit precision without
checkpointing: SD 1.5 (860M parameters) needs ~5 GB there. Scales with pixels and precision."""
CHECKPOINTED_SHARE = 0.25
"""Gradient checkpointing keeps roughly a quarter of those activations."""


@dataclass(frozen=True)
class DiffusionOptions:
    """Switches for speed and for what the trainer does besides training."""

    cache_latents: bool = True
    """Encode images (and frozen-text-encoder captions) once; off re-encodes every step."""
    bf16: bool = True
    """On CUDA: bfloat16 frozen weights and autocast; LoRA weights stay float32."""
    fused_adamw: bool = True
    defer_sync: bool = True
    channels_last: bool = True
    """UNet convolutions in NHWC on CUDA, where cuDNN's fastest kernels want it."""
    cudnn_benchmark: bool = True
    """Let cuDNN time its convolution algorithms once per shape (buckets keep shapes few)."""
    compile: bool = False
    samples: bool = True
    sample_steps: int = 25


# --- images and buckets ----------------------------------------------------------------------


def bucket_sizes(resolution: int, step: int = BUCKET_STEP) -> list[tuple[int, int]]:
    """(width, height) pairs, multiples of ``step``, with about ``resolution``² pixels each.

    Sides range from half to twice the resolution; each width gets the tallest height that keeps
    the area within ``resolution``², so no bucket costs more memory than the square one.
    """
    area = resolution * resolution
    low = max(step, (resolution // 2) // step * step)
    high = max(step, resolution * 2 // step * step)
    buckets = set()
    for w in range(low, high + 1, step):
        h = min(high, area // w // step * step)
        if h >= low:
            buckets.add((w, h))
            buckets.add((h, w))
    return sorted(buckets)


def assign_bucket(size: tuple[int, int], buckets: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The bucket with the nearest aspect ratio (log scale); the larger one on a tie."""
    ratio = math.log(size[0] / size[1])
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - ratio), -b[0] * b[1]))


@dataclass(frozen=True)
class Prepared:
    """An image resized to cover its bucket and centre-cropped, with SDXL's size conditioning."""

    pixels: torch.Tensor
    """(3, h, w) in [-1, 1]."""
    original_size: tuple[int, int]
    """(height, width), SDXL's convention."""
    crop_top_left: tuple[int, int]


def prepare_image(path: Path, bucket: tuple[int, int]) -> Prepared:
    import numpy as np
    from PIL import Image

    width, height = bucket
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
    except (OSError, ValueError) as e:
        raise DropError.one(f"cannot read the image ({e})", str(path), IMAGE_FIX) from None
    scale = max(width / img.width, height / img.height)
    resized = (max(width, round(img.width * scale)), max(height, round(img.height * scale)))
    img = img.resize(resized, Image.Resampling.LANCZOS)
    left, top = (resized[0] - width) // 2, (resized[1] - height) // 2
    img = img.crop((left, top, left + width, top + height))
    array = torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1)
    return Prepared(array / 127.5 - 1.0, (resized[1], resized[0]), (top, left))


def plan_epoch(
    buckets: Sequence[tuple[int, int]],
    repeats: Sequence[int],
    batch_size: int,
    seed: int,
    epoch: int,
) -> list[list[int]]:
    """One epoch of batches: every image ``repeats`` times, each batch from a single bucket."""
    rng = random.Random(seed * 1_000_003 + epoch)
    by_bucket: dict[tuple[int, int], list[int]] = {}
    for i, (bucket, n) in enumerate(zip(buckets, repeats, strict=True)):
        by_bucket.setdefault(bucket, []).extend([i] * n)
    batches: list[list[int]] = []
    for bucket in sorted(by_bucket):
        entries = by_bucket[bucket]
        rng.shuffle(entries)
        batches += [entries[i : i + batch_size] for i in range(0, len(entries), batch_size)]
    rng.shuffle(batches)
    return batches


# --- base model --------------------------------------------------------------------------------


def resolve_diffusion_base(spec: str, drop_dir: Path) -> Path:
    """A diffusers folder or a single checkpoint file, local or downloaded from the Hub."""
    path = Path(spec.strip()).expanduser()
    if not path.is_absolute():
        path = Path(drop_dir) / path
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise DropError.one(
                f"{path} is not a diffusers model folder (it has no model_index.json)",
                BASE_WHERE,
                "point `base_model` at the folder that holds model_index.json, unet/ and vae/",
            )
        return path.resolve()
    if path.is_file() and path.suffix in (".safetensors", ".ckpt"):
        return path.resolve()
    if spec.count("/") == 1 and not spec.startswith(("/", "~", ".")) and not path.suffix:
        return _download(spec)
    raise DropError.one(
        f'the base model "{spec}" is neither a diffusers folder nor a checkpoint file here',
        BASE_WHERE,
        "give a diffusers folder, a .safetensors checkpoint (relative to the drop or absolute), "
        'or a Hugging Face id like "stable-diffusion-v1-5/stable-diffusion-v1-5"',
    )


def _download(repo_id: str) -> Path:
    from diffusers import DiffusionPipeline

    try:
        return Path(DiffusionPipeline.download(repo_id))
    except Exception as e:  # the Hub's errors are many; all mean the same to the person
        raise DropError.one(
            f'could not get "{repo_id}" from the Hugging Face Hub ({type(e).__name__}: {e})',
            BASE_WHERE,
            "check the name and the network (gated models need `hf auth login`), or download "
            "the model once as a diffusers folder and give its path",
        ) from None


def load_pipeline(base: Path, dtype: torch.dtype) -> Any:
    """The pipeline, its components on the CPU in ``dtype``; SD 1.x/2.x and SDXL."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as hf_logging

    diffusers_logging.disable_progress_bar()
    hf_logging.disable_progress_bar()
    if base.is_file():
        return _load_single_file(base, dtype)
    index = json.loads((base / "model_index.json").read_text(encoding="utf-8"))
    name = str(index.get("_class_name", ""))
    try:
        if "XL" in name:
            return StableDiffusionXLPipeline.from_pretrained(base, torch_dtype=dtype)
        if name.startswith("StableDiffusion") and "3" not in name:
            return StableDiffusionPipeline.from_pretrained(
                base, torch_dtype=dtype, safety_checker=None, requires_safety_checker=False
            )
    except (OSError, ValueError) as e:
        raise DropError.one(
            f"the diffusers model could not be loaded ({e})",
            str(base),
            "download the model again; a file is missing or damaged",
        ) from None
    raise DropError.one(
        f"{name or 'this pipeline'} is not a Stable Diffusion 1.x, 2.x or XL model",
        BASE_WHERE,
        "use an SD 1.5, SD 2.x or SDXL base model",
    )


def _load_single_file(path: Path, dtype: torch.dtype) -> Any:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from lorainbox.models.base import safetensors_header

    xl = path.suffix == ".safetensors" and any(
        k.startswith("conditioner.embedders.1") for k in safetensors_header(path)
    )
    cls: Any = StableDiffusionXLPipeline if xl else StableDiffusionPipeline
    try:
        return cls.from_single_file(path, torch_dtype=dtype, local_files_only=True)
    except Exception as e:  # any failure here leaves the person the same fix
        raise DropError.one(
            "a single-file checkpoint needs its model's configuration files, which are not on "
            f"this machine (loading it offline failed: {type(e).__name__}: {str(e)[:300]})",
            f"{BASE_WHERE} ({path})",
            "use the model as a diffusers folder (model_index.json, unet/, vae/...): download "
            "it in that form, or convert the file once with diffusers' "
            "convert_original_stable_diffusion_to_diffusers.py",
        ) from None


# --- conditioning and the loss ---------------------------------------------------------------


@dataclass
class Parts:
    """The pipeline's components the trainer drives directly."""

    pipe: Any
    unet: Any
    vae: Any
    text_encoders: list[Any]
    tokenizers: list[Any]
    noise_scheduler: Any
    xl: bool

    @property
    def prediction_type(self) -> str:
        return str(self.noise_scheduler.config.prediction_type)


def encode_text(
    parts: Parts, captions: Sequence[str], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Caption embeddings (and SDXL's pooled one) as the pipelines compute them."""
    embeds, pooled = [], None
    for tokenizer, encoder in zip(parts.tokenizers, parts.text_encoders, strict=True):
        ids = tokenizer(
            list(captions),
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(device)
        if not parts.xl:
            return encoder(ids)[0], None
        out = encoder(ids, output_hidden_states=True)
        embeds.append(out.hidden_states[-2])
        pooled = out.text_embeds if hasattr(out, "text_embeds") else out[0]
    return torch.cat(embeds, dim=-1), pooled


def time_ids(
    prepared: Sequence[tuple[tuple[int, int], tuple[int, int], tuple[int, int]]],
) -> torch.Tensor:
    """SDXL's size conditioning: original size, crop corner, target size per image."""
    return torch.tensor([[*o, *c, *t] for o, c, t in prepared], dtype=torch.float32)


def diffusion_loss(
    parts: Parts,
    latents: torch.Tensor,
    embeds: torch.Tensor,
    added: dict[str, torch.Tensor] | None,
    setup: DeviceSetup,
) -> torch.Tensor:
    """Noise-prediction MSE at a uniformly drawn timestep (epsilon or v target)."""
    sched = parts.noise_scheduler
    noise = torch.randn_like(latents)
    steps = torch.randint(
        0, sched.config.num_train_timesteps, (latents.shape[0],), device=latents.device
    )
    noisy = sched.add_noise(latents, noise, steps)
    if parts.prediction_type == "v_prediction":
        target = sched.get_velocity(latents, noise, steps)
    elif parts.prediction_type == "epsilon":
        target = noise
    else:
        raise DropError.one(
            f"the model's scheduler predicts {parts.prediction_type!r}",
            BASE_WHERE,
            "use a model that predicts epsilon or v (SD 1.x, 2.x, XL)",
        )
    if setup.autocast_dtype is None:  # half frozen weights without autocast (MPS) take half
        noisy = noisy.to(setup.weight_dtype)
    with setup.autocast():
        pred = parts.unet(noisy, steps, embeds, added_cond_kwargs=added).sample
    return F.mse_loss(pred.float(), target.float())


# --- memory --------------------------------------------------------------------------------------


def estimate_diffusion_gb(
    weight_bytes: int,
    unet_params: int,
    compute_bytes: int,
    resolution: int,
    batch_size: int,
    grad_checkpoint: bool,
    lora_params: int,
) -> float:
    """Rough peak of one step: weights, LoRA with its Adam state, activations, overhead."""
    pixels = (resolution / 512) ** 2
    acts = ACT_BYTES_PER_PARAM * unet_params * pixels * batch_size * compute_bytes / 2
    if grad_checkpoint:
        acts *= CHECKPOINTED_SHARE
    return (weight_bytes + 16 * lora_params + acts) / GB + 0.8


def vae_encode_dtype(weight_dtype: torch.dtype, force_upcast: bool) -> torch.dtype:
    """The VAE encodes in float32 when the weights are float16 and its config says it
    overflows there (``force_upcast``: SDXL's VAE gives NaN latents in float16; diffusers'
    SDXL scripts keep it float32 "to avoid NaN losses"). It is small: ~0.3 GB in float32."""
    if weight_dtype == torch.float16 and force_upcast:
        return torch.float32
    return weight_dtype


def plan_diffusion_footprint(
    start: Footprint, budget_gb: float, estimate: Callable[[Footprint], float]
) -> tuple[Footprint, float]:
    """Checkpointing first, then halve the batch, until the estimate fits (as for LLMs)."""
    fp = replace(start, changes=list(start.changes))
    while (gb := estimate(fp)) > budget_gb:
        if not fp.grad_checkpoint:
            fp = replace(fp, grad_checkpoint=True, changes=[*fp.changes, "grad checkpointing on"])
        elif fp.batch_size > 1:
            b = fp.batch_size // 2
            fp = replace(fp, batch_size=b, changes=[*fp.changes, f"batch {fp.batch_size} -> {b}"])
        else:
            raise DropError.one(
                f"training needs about {gb:.1f} GB even with batch 1 and checkpointing; the "
                f"budget is {budget_gb:g} GB",
                "recipe.toml, [memory] max_gb and [diffusion] resolution",
                "raise [memory] max_gb, or lower [diffusion] resolution",
            )
        fp.changes[-1] += f": estimated {gb:.1f} GB over the {budget_gb:g} GB budget"
    return fp, gb


# --- the trainer -------------------------------------------------------------------------------


class DiffusionTrainer:
    """The :class:`~lorainbox.trainers.base.Trainer` for Stable Diffusion LoRAs."""

    name = "diffusers"

    def __init__(
        self,
        options: DiffusionOptions | None = None,
        on_step: Callable[[int, int], None] | None = None,
    ):
        self.options = options or DiffusionOptions()
        self.on_step = on_step
        """Called after each optimizer step with (step, images); the benchmark times it."""

    def train(self, ctx: TrainContext) -> TrainResult:
        recipe = ctx.recipe
        if recipe.lora.fine_tune_type == "dora":
            raise DropError.one(
                "DoRA is not supported for Stable Diffusion here (the kohya file cannot carry it)",
                "recipe.toml, [lora] fine_tune_type",
                'use fine_tune_type = "lora"',
            )
        copy_to = _copy_target(recipe, ctx.job_dir)
        if copy_to is not None:
            _check_writable(copy_to)
        setup = setup_device(
            recipe.train.device, ctx.memory_budget_gb, bf16=self.options.bf16, half_on_mps=True
        )
        seed_everything(recipe.train.seed)
        listing = ctx.train_file if ctx.train_file.is_absolute() else ctx.job_dir / ctx.train_file
        items = read_images(listing)
        base = resolve_diffusion_base(recipe.base_model, ctx.job_dir)
        fallbacks = MPSFallbackLog() if setup.kind == "mps" else None
        with out_of_memory_guard(setup.device), fallbacks or contextlib.nullcontext():
            run = _Run(self, ctx, setup, base, items)
            run.prepare()
            run.sample("before")
            run.loop()
            run.write_outputs(copy_to)
            run.sample("after")
        empty_cache(setup.device)
        extra: dict[str, Any] = {
            "trainer": self.name,
            "device": setup.kind,
            "footprint": asdict(run.fp),
            "peak_memory_gb": round(run.meter.peak_gb(), 3),
            "kohya": str(run.kohya_path),
            "images": len(items),
        }
        if (ctx.job_dir / SAMPLES_FILE).is_file():
            extra["samples"] = str(ctx.job_dir / SAMPLES_FILE)
        if fallbacks is not None:
            extra["mps_fallback_ops"] = fallbacks.ops
        return TrainResult(ctx.adapter_dir, run.step, run.last_loss, None, extra)

    def fuse(self, ctx: TrainContext) -> Path:
        raise NotImplementedError(
            "Stable Diffusion LoRAs are not fused: load the kohya file from the adapters folder "
            "in ComfyUI, AUTOMATIC1111 or Draw Things, or the diffusers file with load_lora_weights"
        )


def _copy_target(recipe: Recipe, job_dir: Path) -> Path | None:
    if not recipe.diffusion.copy_to:
        return None
    path = Path(recipe.diffusion.copy_to).expanduser()
    return path if path.is_absolute() else job_dir / path


def _check_writable(folder: Path) -> None:
    """Fail before hours of training, not after, when the copy cannot be made."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".lorainbox-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise DropError.one(
            f"cannot write to the copy_to folder {folder} ({e.strerror or e})",
            "recipe.toml, [diffusion] copy_to",
            "give a folder you can write to (e.g. ComfyUI's models/loras), or remove copy_to",
        ) from None


class _Run:
    """One run: model, cached inputs, the loop, checkpoints, samples and outputs."""

    def __init__(
        self,
        trainer: DiffusionTrainer,
        ctx: TrainContext,
        setup: DeviceSetup,
        base: Path,
        items: list[ImageItem],
    ):
        self.trainer, self.opts, self.ctx, self.setup = trainer, trainer.options, ctx, setup
        self.recipe, self.t, self.items = ctx.recipe, ctx.recipe.train, items
        self.resolution = ctx.recipe.diffusion.resolution
        self.train_te = ctx.recipe.diffusion.train_text_encoder
        self.base = base
        sizes = bucket_sizes(self.resolution)
        self.buckets = [assign_bucket(i.size, sizes) for i in items]
        self.step = 0
        self.trained_images = 0
        self.epoch = -1
        self.remaining: list[list[int]] = []
        self.checkpoint_step: int | None = None
        self.last_loss: float | None = None
        self.kohya_path = ctx.adapter_dir / f"{ctx.recipe.name}.safetensors"
        self.samples_dir = ctx.work_dir / "samples"
        self.latents: dict[int, tuple[torch.Tensor, torch.Tensor, Prepared | None]] = {}
        self.embeds: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}

    # model

    def prepare(self) -> None:
        from diffusers import DDPMScheduler
        from peft import LoraConfig

        setup, lora = self.setup, self.recipe.lora
        pipe = load_pipeline(self.base, setup.weight_dtype)
        xl = hasattr(pipe, "text_encoder_2")
        encoders = [pipe.text_encoder, *([pipe.text_encoder_2] if xl else [])]
        tokenizers = [pipe.tokenizer, *([pipe.tokenizer_2] if xl else [])]
        noise = DDPMScheduler.from_config(pipe.scheduler.config)
        self.parts = Parts(pipe, pipe.unet, pipe.vae, encoders, tokenizers, noise, xl)
        for module in (pipe.unet, pipe.vae, *encoders):
            module.requires_grad_(False)
        alpha = lora_alpha(lora, DEFAULT_SCALE)
        targets = list(lora.keys) if lora.keys else list(UNET_TARGETS)
        pipe.unet.add_adapter(
            LoraConfig(
                r=lora.rank,
                lora_alpha=alpha,
                lora_dropout=lora.dropout,
                init_lora_weights="gaussian",
                target_modules=targets,
            )
        )
        if xl:
            self._check_sdxl_targets()
        if self.train_te:
            for encoder in encoders:
                encoder.add_adapter(
                    LoraConfig(
                        r=lora.rank,
                        lora_alpha=alpha,
                        lora_dropout=lora.dropout,
                        init_lora_weights="gaussian",
                        target_modules=list(TEXT_TARGETS),
                    )
                )
        self.trainable = [
            p for m in (pipe.unet, *encoders) for p in m.parameters() if p.requires_grad
        ]
        for p in self.trainable:
            p.data = p.data.float()
        self.signature = {
            "base_model": self.recipe.base_model,
            "rank": lora.rank,
            "alpha": alpha,
            "targets": sorted(targets),
            "text_encoder": self.train_te,
            "resolution": self.resolution,
            "data": self._cache_key(),
        }
        self.fp = self._plan(pipe, sum(p.numel() for p in self.trainable))
        self.micro = min(self.fp.batch_size, self.t.batch_size)
        """Images per forward pass; a step still takes the recipe's batch, in slices if smaller."""
        if self.fp.grad_checkpoint:
            pipe.unet.enable_gradient_checkpointing()
            if self.train_te:
                for encoder in encoders:
                    encoder.gradient_checkpointing_enable({"use_reentrant": False})
        pipe.unet.to(setup.device)
        if setup.kind == "cuda" and self.opts.cudnn_benchmark:
            torch.backends.cudnn.benchmark = True
        if setup.kind == "cuda" and self.opts.channels_last:
            pipe.unet.to(memory_format=torch.channels_last)
        if self.opts.compile:
            pipe.unet.compile()
        self.meter = MemoryMeter(setup.device, self.ctx.memory_budget_gb)
        repeats = [i.repeats for i in self.items]
        per_epoch = len(plan_epoch(self.buckets, repeats, self.t.batch_size, 0, 0))
        self.total = total_steps(self.t, per_epoch)
        self.optimizer = make_optimizer(
            self.trainable, self.t.learning_rate, setup.device, fused=self.opts.fused_adamw
        )
        self.scheduler = make_scheduler(self.optimizer, self.t, self.total)
        self._resume()
        if self.opts.cache_latents:
            self._cache_inputs()

    def _vae_dtype(self) -> torch.dtype:
        force_upcast = bool(getattr(self.parts.vae.config, "force_upcast", True))
        return vae_encode_dtype(self.setup.weight_dtype, force_upcast)

    def _check_sdxl_targets(self) -> None:
        from peft.utils import get_peft_model_state_dict

        for module in kohya.split_lora_state(get_peft_model_state_dict(self.parts.unet)):
            try:
                kohya.sgm_module_name(module, self.parts.unet.config.layers_per_block)
            except ValueError:
                raise DropError.one(
                    f"[lora] keys adapt {module}, outside the UNet's attention blocks; the "
                    "kohya SDXL format carries only those",
                    "recipe.toml, [lora] keys",
                    "adapt attention modules only (to_q, to_k, to_v, to_out.0, proj_in, "
                    "proj_out, ff.net.0.proj, ff.net.2), or leave keys out",
                ) from None

    def _plan(self, pipe: Any, lora_params: int) -> Footprint:
        start = self.ctx.footprint
        if self.setup.grad_checkpoint_default and not start.grad_checkpoint:
            start = replace(
                start, grad_checkpoint=True, changes=[*start.changes, "grad checkpointing on (MPS)"]
            )
        modules = [pipe.unet, pipe.vae, *self.parts.text_encoders]
        weight_bytes = sum(p.numel() * p.element_size() for m in modules for p in m.parameters())
        unet_params = sum(p.numel() for p in pipe.unet.parameters())
        compute = self.setup.autocast_dtype or self.setup.weight_dtype

        def estimate(fp: Footprint) -> float:
            return estimate_diffusion_gb(
                weight_bytes,
                unet_params,
                compute.itemsize,
                self.resolution,
                fp.batch_size,
                fp.grad_checkpoint,
                lora_params,
            )

        fp, gb = plan_diffusion_footprint(start, self.ctx.memory_budget_gb, estimate)
        self.ctx.emitter.emit(
            "footprint",
            **asdict(fp),
            budget_gb=self.ctx.memory_budget_gb,
            estimate_gb=round(gb, 2),
            device=self.setup.kind,
        )
        return fp

    # cached inputs

    def _cache_key(self) -> str:
        h = hashlib.sha256()
        h.update(
            json.dumps([str(self.base), self.resolution, str(self.setup.weight_dtype)]).encode()
        )
        for item, bucket in zip(self.items, self.buckets, strict=True):
            stat = item.path.stat()
            h.update(json.dumps([str(item.path), stat.st_size, stat.st_mtime_ns, bucket]).encode())
        return h.hexdigest()[:16]

    def _cache_inputs(self) -> None:
        """Latents of every image (and caption embeddings with a frozen text encoder), once."""
        from safetensors.torch import load_file, save_file

        device, vae = self.setup.device, self.parts.vae
        cache = self.ctx.work_dir / "cache" / f"latents-{self._cache_key()}.safetensors"
        meta_file = cache.with_suffix(".json")
        if cache.is_file() and meta_file.is_file():
            stored = load_file(cache)
            meta = json.loads(meta_file.read_text())
            for i in range(len(self.items)):
                o, c = meta[str(i)]
                cond = Prepared(torch.empty(0), tuple(o), tuple(c))  # type: ignore[arg-type]
                self.latents[i] = (stored[f"{i}.mean"], stored[f"{i}.std"], cond)
        else:
            vae.to(device, self._vae_dtype())
            tensors, meta = {}, {}
            with torch.no_grad():
                for i, (item, bucket) in enumerate(zip(self.items, self.buckets, strict=True)):
                    prepared = prepare_image(item.path, bucket)
                    pixels = prepared.pixels[None].to(device, vae.dtype)
                    dist = vae.encode(pixels).latent_dist
                    mean, std = (x[0].float().cpu() for x in (dist.mean, dist.std))
                    tensors[f"{i}.mean"], tensors[f"{i}.std"] = mean, std
                    meta[str(i)] = [prepared.original_size, prepared.crop_top_left]
                    cond = Prepared(torch.empty(0), prepared.original_size, prepared.crop_top_left)
                    self.latents[i] = (mean, std, cond)
            cache.parent.mkdir(parents=True, exist_ok=True)
            save_file(tensors, cache.with_name(cache.name + ".partial"))
            meta_file.write_text(json.dumps(meta))
            cache.with_name(cache.name + ".partial").replace(cache)
        vae.to("cpu", self.setup.weight_dtype)
        if not self.train_te:
            for encoder in self.parts.text_encoders:
                encoder.to(device)
            with torch.no_grad():
                for caption in sorted({i.caption for i in self.items}):
                    embeds, pooled = encode_text(self.parts, [caption], device)
                    self.embeds[caption] = (
                        embeds[0].cpu(),
                        None if pooled is None else pooled[0].cpu(),
                    )
            for encoder in self.parts.text_encoders:
                encoder.to("cpu")
        empty_cache(device)

    # batches

    def _batch(
        self, idx: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor] | None]:
        device, parts = self.setup.device, self.parts
        conds = []
        if self.opts.cache_latents:
            mean = torch.stack([self.latents[i][0] for i in idx]).to(device, non_blocking=True)
            std = torch.stack([self.latents[i][1] for i in idx]).to(device, non_blocking=True)
            latents = mean + std * torch.randn_like(mean)
            conds = [self.latents[i][2] for i in idx]
        else:
            prepared = [prepare_image(self.items[i].path, self.buckets[i]) for i in idx]
            pixels = torch.stack([p.pixels for p in prepared]).to(device, parts.vae.dtype)
            with torch.no_grad():
                latents = parts.vae.encode(pixels).latent_dist.sample().float()
            conds = prepared
        latents = latents * parts.vae.config.scaling_factor
        captions = [self.items[i].caption for i in idx]
        if self.train_te:
            with self.setup.autocast():
                embeds, pooled = encode_text(parts, captions, device)
        elif not self.embeds:
            with torch.no_grad():
                embeds, pooled = encode_text(parts, captions, device)
        else:
            embeds = torch.stack([self.embeds[c][0] for c in captions]).to(device)
            pooled_list = [self.embeds[c][1] for c in captions]
            pooled = None if pooled_list[0] is None else torch.stack(pooled_list).to(device)  # type: ignore[arg-type]
        added = None
        if parts.xl:
            target = [(self.buckets[i][1], self.buckets[i][0]) for i in idx]
            ids = time_ids(
                [(c.original_size, c.crop_top_left, s) for c, s in zip(conds, target, strict=True)]
            )
            added = {"text_embeds": pooled, "time_ids": ids.to(device)}  # type: ignore[dict-item]
        if self.setup.kind == "cuda" and self.opts.channels_last:
            latents = latents.contiguous(memory_format=torch.channels_last)
        return latents, embeds.to(self.setup.weight_dtype), added

    def _next_batch(self) -> list[int]:
        """The recipe's batch, planned per epoch so a smaller footprint sees the same images."""
        if not self.remaining:
            self.epoch += 1
            repeats = [i.repeats for i in self.items]
            self.remaining = plan_epoch(
                self.buckets, repeats, self.t.batch_size, self.t.seed, self.epoch
            )
        return self.remaining.pop(0)

    # the loop

    def loop(self) -> None:
        parts, device = self.parts, self.setup.device
        if not self.opts.cache_latents or self.train_te:
            parts.vae.to(device, self._vae_dtype())
            for encoder in parts.text_encoders:
                encoder.to(device)
        parts.unet.train()
        for encoder in parts.text_encoders:
            encoder.train(self.train_te)
        pace = Pace(self.step, self.total)
        loss_acc = torch.zeros((), device=device)
        count = 0
        while self.step < self.total:
            if self.ctx.stop_requested():
                if self.checkpoint_step != self.step:
                    self.save_checkpoint()
                raise Paused(self.step)
            idx = self._next_batch()
            for start in range(0, len(idx), self.micro):
                part = idx[start : start + self.micro]
                latents, embeds, added = self._batch(part)
                loss = diffusion_loss(parts, latents, embeds, added, self.setup)
                loss = loss * (len(part) / len(idx))
                loss.backward()
                loss_acc += loss.detach()
            optimizer_step(self.trainable, self.optimizer, self.scheduler)
            self.step += 1
            self.trained_images += len(idx)
            count += 1
            pace.add(len(idx))
            if not self.opts.defer_sync:
                loss_acc.item()
            if self.trainer.on_step is not None:
                self.trainer.on_step(self.step, len(idx))
            if self.step % self.t.steps_per_report == 0 or self.step == self.total:
                self.last_loss = float(loss_acc.item()) / count
                loss_acc.zero_()
                count = 0
                self._progress(pace)
            if self.step % self.t.save_every == 0 or self.step == self.total:
                self.save_checkpoint()

    def _progress(self, pace: Pace) -> None:
        rate, eta = pace.report(self.step)
        line: dict[str, Any] = {
            "step": self.step,
            "total": self.total,
            "train_loss": None if self.last_loss is None else round(self.last_loss, 5),
            "learning_rate": self.scheduler.get_last_lr()[0],
            "images_per_second": round(rate, 3),
            "trained_images": self.trained_images,
            "peak_memory_gb": round(self.meter.check(), 3),
            "eta_seconds": rounded(eta),
            "epoch": max(self.epoch, 0),
        }
        if self.checkpoint_step is not None:
            line["checkpoint_step"] = self.checkpoint_step
        self.ctx.emitter.progress(**line)

    # checkpoints

    def _lora_tensors(self) -> dict[str, torch.Tensor]:
        from peft.utils import get_peft_model_state_dict

        tensors = {f"unet.{k}": v for k, v in get_peft_model_state_dict(self.parts.unet).items()}
        if self.train_te:
            for n, encoder in enumerate(self.parts.text_encoders):
                state = get_peft_model_state_dict(encoder)
                tensors.update({f"te{n}.{k}": v for k, v in state.items()})
        return tensors

    def save_checkpoint(self) -> None:
        state = training_state(self.optimizer, self.scheduler)
        meta = {
            "signature": self.signature,
            "trained_images": self.trained_images,
            "total": self.total,
            "data": {"epoch": self.epoch, "remaining": self.remaining},
        }
        save_checkpoint(self.ctx.checkpoint_dir, self.step, self._lora_tensors(), state, meta)
        self.checkpoint_step = self.step
        self.ctx.emitter.emit("checkpoint", step=self.step)

    def _resume(self) -> None:
        from peft.utils import set_peft_model_state_dict

        ckpt = resumable_checkpoint(self.ctx.checkpoint_dir, self.setup.device, self.signature)
        if ckpt is None:
            return
        groups: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in ckpt.tensors.items():
            head, rest = key.split(".", 1)
            groups.setdefault(head, {})[rest] = value
        set_peft_model_state_dict(self.parts.unet, groups.get("unet", {}))
        for n, encoder in enumerate(self.parts.text_encoders):
            if f"te{n}" in groups:
                set_peft_model_state_dict(encoder, groups[f"te{n}"])
        restore_training_state(ckpt.state, self.optimizer, self.scheduler)
        self.step = ckpt.step
        self.trained_images = int(ckpt.meta.get("trained_images", 0))
        self.epoch = int(ckpt.meta["data"]["epoch"])
        self.remaining = ckpt.meta["data"]["remaining"]
        self.checkpoint_step = self.step
        log.info("resuming from %s at step %d of %d", ckpt.path, self.step, self.total)
        self.ctx.emitter.emit("resumed", step=self.step, total=self.total)

    # samples and outputs

    def sample_prompts(self) -> list[str]:
        prompts = list(self.recipe.diffusion.sample_prompts)
        if not prompts:
            prompts = list(dict.fromkeys(i.caption for i in self.items if i.caption))
        return prompts[:MAX_SAMPLES]

    def sample(self, which: str) -> None:
        """Images for the sample prompts with fixed seeds, saved for the before/after grid."""
        prompts = self.sample_prompts()
        if not self.opts.samples or not prompts:
            return
        paths = [self.samples_dir / f"{which}-{n}.png" for n in range(len(prompts))]
        if which == "before" and all(p.is_file() for p in paths):
            return  # a resumed run keeps the images the untrained model made
        parts, device = self.parts, self.setup.device
        for encoder in parts.text_encoders:
            encoder.to(device)
        # In the frozen weights' dtype, whatever encoding the latents left it in: the pipeline
        # upcasts a VAE that overflows in float16 itself (SDXL's ``force_upcast``), and a VAE in
        # float32 beside float16 latents it fixes only on MPS.
        parts.vae.to(device, self.setup.weight_dtype)
        parts.pipe.set_progress_bar_config(disable=True)
        parts.unet.eval()
        for encoder in parts.text_encoders:
            encoder.eval()
        self.samples_dir.mkdir(parents=True, exist_ok=True)
        with torch.no_grad(), self.setup.autocast():  # the step's precision: bf16 base, fp32 LoRA
            for n, (prompt, path) in enumerate(zip(prompts, paths, strict=True)):
                image = parts.pipe(
                    prompt,
                    height=self.resolution,
                    width=self.resolution,
                    num_inference_steps=self.opts.sample_steps,
                    generator=torch.Generator("cpu").manual_seed(self.t.seed + n),
                ).images[0]
                image.save(path)
        parts.unet.train()
        if not self.train_te:
            for encoder in parts.text_encoders:
                encoder.to("cpu")
            if self.opts.cache_latents:
                parts.vae.to("cpu")
        empty_cache(device)
        if which == "after":
            befores = [self.samples_dir / f"before-{n}.png" for n in range(len(prompts))]
            write_grid(self.ctx.job_dir / SAMPLES_FILE, prompts, befores, paths, self.step)

    def write_outputs(self, copy_to: Path | None) -> None:
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        parts, lora = self.parts, self.recipe.lora
        unet_state = get_peft_model_state_dict(parts.unet)
        te_states = (
            tuple(get_peft_model_state_dict(e) for e in parts.text_encoders)
            if self.train_te
            else ()
        )
        alpha = self.signature["alpha"]
        kohya_state = kohya.to_kohya(
            unet_state,
            alpha,
            text_encoders=te_states,
            sdxl=parts.xl,
            layers_per_block=parts.unet.config.layers_per_block,
        )
        sd2 = not parts.xl and parts.text_encoders[0].config.hidden_size == 1024
        metadata = kohya.kohya_metadata(
            name=self.recipe.name,
            rank=lora.rank,
            alpha=alpha,
            sdxl=parts.xl,
            resolution=self.resolution,
            steps=self.step,
            text_encoder=self.train_te,
            extra={"ss_v2": sd2, "lorainbox.base_model": self.recipe.base_model},
        )

        def build(folder: Path) -> None:
            layers: dict[str, Any] = {
                "unet_lora_layers": convert_state_dict_to_diffusers(unet_state)
            }
            names = ["text_encoder_lora_layers", "text_encoder_2_lora_layers"]
            for name, state in zip(names, te_states, strict=False):
                layers[name] = convert_state_dict_to_diffusers(state)
            cls: Any = StableDiffusionXLPipeline if parts.xl else StableDiffusionPipeline
            cls.save_lora_weights(folder, weight_name=DIFFUSERS_FILE, **layers)
            kohya.save_kohya(folder / self.kohya_path.name, kohya_state, metadata)

        atomic_replace_dir(build, self.ctx.adapter_dir)
        if copy_to is not None:
            try:
                copy_to.mkdir(parents=True, exist_ok=True)
                shutil.copy2(self.kohya_path, copy_to / self.kohya_path.name)
            except OSError as e:
                raise DropError.one(
                    f"could not copy the LoRA into {copy_to} ({e.strerror or e})",
                    "recipe.toml, [diffusion] copy_to",
                    "give a folder you can write to, or remove copy_to; the LoRA itself is in "
                    f"{self.ctx.adapter_dir}",
                ) from None


def write_grid(
    path: Path, prompts: Sequence[str], before: Sequence[Path], after: Sequence[Path], step: int
) -> Path:
    """Before row over after row, one column per prompt, labelled; PNG written atomically."""
    from PIL import Image, ImageDraw, ImageFont

    befores = [Image.open(p).convert("RGB") for p in before]
    afters = [Image.open(p).convert("RGB") for p in after]
    cell = max(max(i.width, i.height) for i in befores + afters)
    cell = max(cell, 128)
    margin, header = 150, 60
    grid = Image.new("RGB", (margin + cell * len(prompts), header + 2 * cell), "white")
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default(size=16)
    small = ImageFont.load_default(size=12)
    for col, prompt in enumerate(prompts):
        lines = textwrap.wrap(prompt, width=max(8, cell // 7), max_lines=3, placeholder="...")
        for k, line in enumerate(lines):
            draw.text((margin + col * cell + 4, 4 + 16 * k), line, fill="black", font=small)
    for row, (label, images) in enumerate((("before", befores), (f"after\n(step {step})", afters))):
        draw.multiline_text(
            (8, header + row * cell + cell // 2 - 16), label, fill="black", font=font
        )
        for col, image in enumerate(images):
            image = image.resize(
                (cell, cell * image.height // image.width), Image.Resampling.NEAREST
            )
            grid.paste(image, (margin + col * cell, header + row * cell))
    tmp = path.with_name(f".{path.name}.partial")
    grid.save(tmp, format="PNG")
    tmp.replace(path)
    return path
