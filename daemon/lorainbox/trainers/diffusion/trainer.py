"""Stable Diffusion (1.x, 2.x, XL) LoRA with diffusers + PEFT, on MPS, CUDA or the CPU.

The person drops captioned images; this trains a LoRA on the UNet's attention projections (and
the text encoder's when the recipe asks), and writes it twice: in diffusers' own format and in
the kohya format that AUTOMATIC1111, ComfyUI and Draw Things load. Images are sorted into
aspect-ratio buckets around the recipe's resolution, encoded by the VAE once and cached (as the
latent distribution's mean and spread, so every step still samples), and so are the captions'
embeddings while the text encoder is frozen: a training step then runs only the UNet. Sample
images before and after training end up side by side in ``samples.png``.

This module is the trainer: it prepares the run and supplies its steps to the shared
:class:`~lorainbox.trainers.loop.Loop`; images, the model, the loss, memory, outputs and
samples each have a ``diffusion_*`` module of their own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from lorainbox.core.errors import DropError
from lorainbox.core.layout import SAMPLES_FILE
from lorainbox.drop.imagelist import ImageItem, read_images
from lorainbox.models.base import resolve_diffusion_base
from lorainbox.trainers.base import Footprint, TrainContext, TrainResult, total_steps
from lorainbox.trainers.batches import by_bucket
from lorainbox.trainers.diffusion.cache import (
    Embedding,
    Latent,
    cache_key,
    encode_captions,
    encode_latents,
)
from lorainbox.trainers.diffusion.data import (
    assign_bucket,
    bucket_sizes,
    prepare_image,
)
from lorainbox.trainers.diffusion.footprint import estimate_diffusion_gb, plan_diffusion_footprint
from lorainbox.trainers.diffusion.loss import diffusion_loss, encode_text, time_ids
from lorainbox.trainers.diffusion.model import (
    TEXT_TARGETS,
    UNET_TARGETS,
    add_lora,
    check_sdxl_targets,
    load_pipeline,
    split_pipeline,
    vae_encode_dtype,
)
from lorainbox.trainers.diffusion.output import (
    check_writable,
    copy_lora,
    copy_target,
    write_lora,
)
from lorainbox.trainers.diffusion.samples import render, sample_prompts, write_grid
from lorainbox.trainers.loop import Loop, Step
from lorainbox.trainers.torch_common import (
    DeviceSetup,
    MPSFallbackLog,
    checkpoint_activations,
    empty_cache,
    lora_alpha,
    make_optimizer,
    make_scheduler,
    out_of_memory_guard,
    seed_everything,
    setup_device,
)

DEFAULT_SCALE = 1.0
"""alpha = rank when the recipe sets neither: the usual choice for image LoRAs."""


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
        copy_to = copy_target(recipe, ctx.job_dir)
        if copy_to is not None:
            check_writable(copy_to)
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
            run.train()
            run.loop.save_adapter()
            if copy_to is not None:
                copy_lora(run.kohya_path, copy_to, ctx.adapter_dir)
            run.sample("after")
        empty_cache(setup.device)
        extra: dict[str, Any] = {
            "trainer": self.name,
            "device": setup.kind,
            "footprint": asdict(run.fp),
            "peak_memory_gb": round(run.loop.meter.peak_gb(), 3),
            "kohya": str(run.kohya_path),
            "images": len(items),
        }
        if (ctx.job_dir / SAMPLES_FILE).is_file():
            extra["samples"] = str(ctx.job_dir / SAMPLES_FILE)
        if fallbacks is not None:
            extra["mps_fallback_ops"] = fallbacks.ops
        return TrainResult(ctx.adapter_dir, run.loop.step, run.loop.last_train_loss, None, extra)

    def fuse(self, ctx: TrainContext) -> Path:
        raise NotImplementedError(
            "Stable Diffusion LoRAs are not fused: load the kohya file from the adapters folder "
            "in ComfyUI, AUTOMATIC1111 or Draw Things, or the diffusers file with load_lora_weights"
        )


class _Run:
    """One run's own part of the loop (a :class:`~lorainbox.trainers.loop.Task`): the model,
    cached inputs, the step, samples and outputs."""

    unit = "images"
    rate_digits = 3

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
        self.kohya_path = ctx.adapter_dir / f"{ctx.recipe.name}.safetensors"
        self.samples_dir = ctx.work_dir / "samples"
        self.latents: dict[int, Latent] = {}
        self.embeds: dict[str, Embedding] = {}

    # model

    def prepare(self) -> None:
        setup, lora = self.setup, self.recipe.lora
        pipe = load_pipeline(self.base, setup.weight_dtype)
        self.parts = parts = split_pipeline(pipe)
        alpha = lora_alpha(lora, DEFAULT_SCALE)
        targets = list(lora.keys) if lora.keys else list(UNET_TARGETS)
        add_lora(pipe.unet, lora, alpha, targets)
        if parts.xl:
            check_sdxl_targets(pipe.unet)
        if self.train_te:
            for encoder in parts.text_encoders:
                add_lora(encoder, lora, alpha, list(TEXT_TARGETS))
        self.trainable = [
            p for m in (pipe.unet, *parts.text_encoders) for p in m.parameters() if p.requires_grad
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
                for encoder in parts.text_encoders:
                    checkpoint_activations(encoder)
        pipe.unet.to(setup.device)
        if setup.kind == "cuda" and self.opts.cudnn_benchmark:
            torch.backends.cudnn.benchmark = True
        if setup.kind == "cuda" and self.opts.channels_last:
            pipe.unet.to(memory_format=torch.channels_last)
        if self.opts.compile:
            pipe.unet.compile()
        total = total_steps(self.t, len(self.plan(0)))
        optimizer = make_optimizer(
            self.trainable, self.t.learning_rate, setup.device, fused=self.opts.fused_adamw
        )
        self.loop = Loop(
            self.ctx,
            self,
            self.trainable,
            optimizer,
            make_scheduler(optimizer, self.t, total),
            total,
            self.signature,
            setup.device,
            defer_sync=self.opts.defer_sync,
            on_step=self.trainer.on_step,
        )
        if self.opts.cache_latents:
            self._cache_inputs()

    def _vae_dtype(self) -> torch.dtype:
        force_upcast = bool(getattr(self.parts.vae.config, "force_upcast", True))
        return vae_encode_dtype(self.setup.weight_dtype, force_upcast)

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
        return cache_key(
            self.base, self.resolution, self.setup.weight_dtype, self.items, self.buckets
        )

    def _cache_inputs(self) -> None:
        """Latents of every image (and caption embeddings with a frozen text encoder), once."""
        device = self.setup.device
        cache = self.ctx.work_dir / "cache" / f"latents-{self._cache_key()}.safetensors"
        self.latents = encode_latents(
            self.parts, self.setup, self.items, self.buckets, cache, self._vae_dtype()
        )
        if not self.train_te:
            self.embeds = encode_captions(self.parts, device, (i.caption for i in self.items))
        empty_cache(device)

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

    # the loop's task

    def plan(self, epoch: int) -> list[list[int]]:
        repeats = [i.repeats for i in self.items]
        return by_bucket(self.buckets, repeats, self.t.batch_size, self.t.seed, epoch)

    def train(self) -> None:
        parts, device = self.parts, self.setup.device
        if not self.opts.cache_latents or self.train_te:
            parts.vae.to(device, self._vae_dtype())
            for encoder in parts.text_encoders:
                encoder.to(device)
        parts.unet.train()
        for encoder in parts.text_encoders:
            encoder.train(self.train_te)
        self.loop.run()

    def step(self, batch: list[int]) -> Step:
        losses = []
        for start in range(0, len(batch), self.micro):
            part = batch[start : start + self.micro]
            latents, embeds, added = self._batch(part)
            loss = diffusion_loss(self.parts, latents, embeds, added, self.setup)
            loss = loss * (len(part) / len(batch))
            loss.backward()
            losses.append(loss.detach())
        return Step(losses, 1, len(batch))

    def lora_tensors(self) -> dict[str, torch.Tensor]:
        from peft.utils import get_peft_model_state_dict

        tensors = {f"unet.{k}": v for k, v in get_peft_model_state_dict(self.parts.unet).items()}
        if self.train_te:
            for n, encoder in enumerate(self.parts.text_encoders):
                state = get_peft_model_state_dict(encoder)
                tensors.update({f"te{n}.{k}": v for k, v in state.items()})
        return tensors

    def load_lora_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        from peft.utils import set_peft_model_state_dict

        groups: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            head, rest = key.split(".", 1)
            groups.setdefault(head, {})[rest] = value
        set_peft_model_state_dict(self.parts.unet, groups.get("unet", {}))
        for n, encoder in enumerate(self.parts.text_encoders):
            if f"te{n}" in groups:
                set_peft_model_state_dict(encoder, groups[f"te{n}"])

    def write_adapter(self, folder: Path) -> None:
        write_lora(
            folder,
            self.parts,
            self.recipe,
            alpha=self.signature["alpha"],
            resolution=self.resolution,
            steps=self.loop.step,
            text_encoder=self.train_te,
            kohya_name=self.kohya_path.name,
        )

    # samples

    def sample(self, which: str) -> None:
        """Images for the sample prompts with fixed seeds, saved for the before/after grid."""
        prompts = sample_prompts(
            self.recipe.diffusion.sample_prompts, (i.caption for i in self.items)
        )
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
        parts.unet.eval()
        for encoder in parts.text_encoders:
            encoder.eval()
        self.samples_dir.mkdir(parents=True, exist_ok=True)
        render(
            parts, self.setup, prompts, paths, self.resolution, self.opts.sample_steps, self.t.seed
        )
        parts.unet.train()
        if not self.train_te:
            for encoder in parts.text_encoders:
                encoder.to("cpu")
            if self.opts.cache_latents:
                parts.vae.to("cpu")
        empty_cache(device)
        if which == "after":
            befores = [self.samples_dir / f"before-{n}.png" for n in range(len(prompts))]
            write_grid(self.ctx.job_dir / SAMPLES_FILE, prompts, befores, paths, self.loop.step)
