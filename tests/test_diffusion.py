"""The Stable Diffusion LoRA trainer on the CPU with tiny SD 1.5- and SDXL-shaped models.

Real training (seconds): the loss falls, the kohya file loads into diffusers' pipeline and
changes its images, pause/resume continues exactly, buckets and repeats shape the epochs, and
broken inputs fail with the file named.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from lorainbox.core.errors import DropError
from lorainbox.core.layout import SAMPLES_FILE
from lorainbox.drop.imagelist import read_images
from lorainbox.drop.recipe import Recipe
from lorainbox.models.base import resolve_diffusion_base
from lorainbox.trainers.base import Emitter, Footprint, Paused, TrainContext
from lorainbox.trainers.batches import by_bucket as plan_epoch
from lorainbox.trainers.diffusion.data import (
    assign_bucket,
    bucket_sizes,
    prepare_image,
)
from lorainbox.trainers.diffusion.footprint import plan_diffusion_footprint
from lorainbox.trainers.diffusion.model import vae_encode_dtype
from lorainbox.trainers.diffusion.output import DIFFUSERS_FILE
from lorainbox.trainers.diffusion.trainer import DiffusionOptions, DiffusionTrainer
from PIL import Image

FAST = DiffusionOptions(samples=False)


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lorainbox.models.tinysd import build_tiny_sd

    return build_tiny_sd(tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lorainbox.models.tinysd import build_tiny_sd

    return build_tiny_sd(
        tmp_path_factory.mktemp("tiny-sdxl"), xl=True, prediction_type="v_prediction"
    )


SIZES = [(64, 64), (64, 64), (128, 64), (64, 128)]


def write_images(folder: Path, sizes: list[tuple[int, int]] = SIZES, repeats: int = 2) -> Path:
    """Striped colour images, one caption each, and the images.jsonl the intake would write."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (w, h) in enumerate(sizes):
        pixels = np.zeros((h, w, 3), np.uint8)
        pixels[..., i % 3] = 200
        pixels[::8] = 255
        path = folder / f"img{i}.png"
        Image.fromarray(pixels).save(path)
        rows.append({"path": str(path), "caption": f"sks style picture {i}", "repeats": repeats})
    listing = folder / "images.jsonl"
    listing.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return listing


def make_ctx(
    job: Path,
    base: Path,
    *,
    train: dict[str, Any] | None = None,
    diffusion: dict[str, Any] | None = None,
    listing: Path | None = None,
) -> tuple[TrainContext, io.StringIO]:
    listing = listing or write_images(job / "data")
    recipe = Recipe.model_validate(
        {
            "name": "sks-style",
            "kind": "diffusion",
            "base_model": str(base),
            "trainer": "torch",
            "lora": {"rank": 4, "alpha": 4},
            "train": {
                "iters": 40,
                "batch_size": 4,
                "learning_rate": 1e-2,
                "steps_per_report": 1,
                "save_every": 1000,
                **(train or {}),
            },
            "diffusion": {"resolution": 64, **(diffusion or {})},
        }
    )
    out = io.StringIO()
    ctx = TrainContext(
        job_dir=job,
        work_dir=job / ".lorainbox",
        recipe=recipe,
        train_file=listing,
        valid_file=None,
        footprint=Footprint(recipe.train.batch_size, 2048, False),
        memory_budget_gb=8.0,
        emitter=Emitter(out),
        stop_requested=lambda: False,
    )
    return ctx, out


def lines(out: io.StringIO, kind: str = "progress") -> list[dict[str, Any]]:
    return [m for m in map(json.loads, out.getvalue().splitlines()) if m["type"] == kind]


def render(pipe: Any, prompt: str = "sks style picture 0") -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        prompt,
        num_inference_steps=3,
        height=64,
        width=64,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images[0]


def test_trains_exports_kohya_that_diffusers_loads_and_writes_samples(
    tiny_sd: Path, tmp_path: Path
) -> None:
    from diffusers import StableDiffusionPipeline
    from safetensors import safe_open

    job = tmp_path / "job"
    ctx, out = make_ctx(job, tiny_sd, diffusion={"copy_to": str(tmp_path / "comfy" / "loras")})
    result = DiffusionTrainer(DiffusionOptions(sample_steps=2)).train(ctx)

    losses = [p["train_loss"] for p in lines(out)]
    assert len(losses) == 40 and all(math.isfinite(x) for x in losses)
    first, last = np.mean(losses[:8]), np.mean(losses[-8:])
    assert last < first - 0.1, (first, last)
    assert lines(out)[-1]["trained_images"] == 160  # 40 steps of 4 (8 entries an epoch)
    assert lines(out)[-1]["epoch"] == 19
    assert lines(out, "footprint")[0]["estimate_gb"] > 0

    kohya = ctx.adapter_dir / "sks-style.safetensors"
    assert {p.name for p in ctx.adapter_dir.iterdir()} == {DIFFUSERS_FILE, kohya.name}
    assert (tmp_path / "comfy" / "loras" / kohya.name).read_bytes() == kohya.read_bytes()
    with safe_open(kohya, "pt") as f:
        keys = list(f.keys())
        assert f.metadata()["ss_network_dim"] == "4"
        assert f.metadata()["ss_base_model_version"] == "sd_v1"
        assert f.get_tensor(keys[0]).dtype == torch.float16
    assert all(k.startswith("lora_unet_down_blocks_") or "blocks" in k for k in keys)
    assert "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_out_0.alpha" in keys

    base = StableDiffusionPipeline.from_pretrained(tiny_sd)
    before = render(base)
    base.load_lora_weights(ctx.adapter_dir, weight_name=kohya.name)
    with_kohya = render(base)
    effect = np.abs(with_kohya - before)
    assert effect.mean() > 1e-3
    fresh = StableDiffusionPipeline.from_pretrained(tiny_sd)
    fresh.load_lora_weights(ctx.adapter_dir, weight_name=DIFFUSERS_FILE)
    # The two files hold the same LoRA: kohya's in float16 (as kohya writes it), so the images
    # differ by that rounding only, far less than the LoRA's own effect.
    assert np.abs(render(fresh) - with_kohya).max() < 0.05 * effect.max()

    grid = Image.open(job / SAMPLES_FILE)
    assert result.extra["samples"] == str(job / SAMPLES_FILE)
    prompts = 4  # the first four distinct captions
    assert grid.size == (150 + 128 * prompts, 60 + 2 * 128)
    rows = np.asarray(grid.convert("RGB"), dtype=np.float32)
    assert np.abs(rows[60 : 60 + 128, 150:] - rows[188:316, 150:]).mean() > 0.5  # after != before


def test_pause_then_resume_continues_exactly(tiny_sd: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    train = {"iters": 6, "batch_size": 2}
    ctx, _ = make_ctx(tmp_path / "straight", tiny_sd, train=train)
    DiffusionTrainer(FAST).train(ctx)
    straight = load_file(ctx.adapter_dir / DIFFUSERS_FILE)

    ctx, _ = make_ctx(tmp_path / "paused", tiny_sd, train=train)
    steps = {"n": 0}
    ctx.stop_requested = lambda: steps["n"] >= 3
    with pytest.raises(Paused) as paused:
        DiffusionTrainer(FAST, on_step=lambda s, n: steps.update(n=s)).train(ctx)
    assert paused.value.step == 3
    assert list((ctx.work_dir / "cache").glob("latents-*.safetensors"))

    ctx.stop_requested = lambda: False
    ctx.emitter = Emitter(out := io.StringIO())
    assert DiffusionTrainer(FAST).train(ctx).steps == 6
    assert lines(out, "resumed") == [{"type": "resumed", "step": 3, "total": 6}]
    resumed = load_file(ctx.adapter_dir / DIFFUSERS_FILE)
    assert resumed.keys() == straight.keys()
    for name, value in straight.items():
        torch.testing.assert_close(resumed[name], value)


def test_sdxl_with_text_encoders_and_v_prediction(tiny_sdxl: Path, tmp_path: Path) -> None:
    from diffusers import StableDiffusionXLPipeline
    from safetensors import safe_open

    ctx, out = make_ctx(
        tmp_path / "job",
        tiny_sdxl,
        train={"iters": 4, "batch_size": 2},
        diffusion={"train_text_encoder": True},
    )
    DiffusionTrainer(FAST).train(ctx)
    assert all(math.isfinite(p["train_loss"]) for p in lines(out))
    kohya = ctx.adapter_dir / "sks-style.safetensors"
    with safe_open(kohya, "pt") as f:
        keys = set(f.keys())
        assert f.metadata()["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert {k.split("_")[1] for k in keys} == {"unet", "te1", "te2"}
    assert "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q.lora_down.weight" in keys
    assert "lora_unet_output_blocks_5_1_transformer_blocks_0_attn2_to_v.lora_up.weight" in keys
    assert "lora_te2_text_model_encoder_layers_1_self_attn_out_proj.alpha" in keys

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl)
    before = render(pipe)
    pipe.load_lora_weights(ctx.adapter_dir, weight_name=kohya.name)
    assert set(pipe.get_list_adapters()) == {"unet", "text_encoder", "text_encoder_2"}
    assert np.abs(render(pipe) - before).mean() > 1e-4


# --- data ---------------------------------------------------------------------------------------


def test_buckets_are_multiples_of_64_around_the_resolution() -> None:
    buckets = bucket_sizes(512)
    assert (512, 512) in buckets and (256, 1024) in buckets and (1024, 256) in buckets
    for w, h in buckets:
        assert w % 64 == 0 and h % 64 == 0 and w * h <= 512 * 512 and min(w, h) >= 256
    assert assign_bucket((1000, 1000), buckets) == (512, 512)
    wide = assign_bucket((1920, 1080), buckets)
    tall = assign_bucket((1080, 1920), buckets)
    assert wide == (tall[1], tall[0]) and wide[0] > wide[1]
    assert abs(math.log(wide[0] / wide[1]) - math.log(1920 / 1080)) < 0.1
    assert assign_bucket((4000, 500), buckets) == (1024, 256)  # as wide as buckets go
    assert bucket_sizes(64) == [(64, 64)]


def test_batches_stay_in_one_bucket_and_repeats_count() -> None:
    buckets = [(512, 512), (512, 512), (704, 320), (320, 704), (704, 320)]
    repeats = [3, 1, 2, 1, 5]
    batches = plan_epoch(buckets, repeats, 2, seed=0, epoch=0)
    for batch in batches:
        assert len({buckets[i] for i in batch}) == 1
    seen = [i for b in batches for i in b]
    assert [seen.count(i) for i in range(5)] == repeats
    assert plan_epoch(buckets, repeats, 2, seed=0, epoch=1) != batches


def test_images_are_resized_to_cover_and_centre_cropped(tmp_path: Path) -> None:
    path = tmp_path / "wide.png"
    Image.new("RGB", (300, 100), (255, 0, 0)).save(path)
    prepared = prepare_image(path, (192, 128))
    assert prepared.pixels.shape == (3, 128, 192)
    assert prepared.pixels.min() >= -1 and prepared.pixels.max() <= 1
    assert prepared.original_size == (128, 384)  # (height, width) after resizing to cover
    assert prepared.crop_top_left == (0, 96)


def test_unreadable_images_are_drop_errors_naming_the_file(tiny_sd: Path, tmp_path: Path) -> None:
    listing = write_images(tmp_path / "data", SIZES[:2])
    broken = tmp_path / "data" / "img1.png"
    broken.write_bytes(b"not a png at all")
    ctx, _ = make_ctx(tmp_path / "job", tiny_sd, listing=listing)
    with pytest.raises(DropError) as e:
        DiffusionTrainer(FAST).train(ctx)
    assert e.value.problems[0].where == str(broken)
    assert "cannot read the image" in e.value.problems[0].what

    broken.unlink()
    with pytest.raises(DropError, match="missing") as e:
        read_images(listing)
    assert e.value.problems[0].where == str(broken)

    good = tmp_path / "data" / "img0.png"
    data = good.read_bytes()
    good.write_bytes(data[: len(data) // 2])  # a header that opens, pixels that do not
    with pytest.raises(DropError) as e:
        prepare_image(good, (64, 64))
    assert e.value.problems[0].where == str(good)


# --- base model, outputs, memory ---------------------------------------------------------------


def test_base_model_must_be_a_diffusers_folder_or_a_loadable_file(tmp_path: Path) -> None:
    from lorainbox.trainers.diffusion.model import load_pipeline

    (tmp_path / "not-diffusers").mkdir()
    with pytest.raises(DropError, match="model_index.json"):
        resolve_diffusion_base("not-diffusers", tmp_path)
    with pytest.raises(DropError, match="neither a diffusers folder"):
        resolve_diffusion_base("missing.safetensors", tmp_path)

    from safetensors.torch import save_file

    single = tmp_path / "model.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3)}, single)
    assert resolve_diffusion_base("model.safetensors", tmp_path) == single
    with pytest.raises(DropError) as e:
        load_pipeline(single, torch.float32)
    assert "diffusers folder" in e.value.problems[0].fix


def test_copy_to_that_cannot_be_written_fails_before_training(
    tiny_sd: Path, tmp_path: Path
) -> None:
    (tmp_path / "a-file").write_text("")
    ctx, _ = make_ctx(
        tmp_path / "job", tiny_sd, diffusion={"copy_to": str(tmp_path / "a-file" / "loras")}
    )
    with pytest.raises(DropError) as e:
        DiffusionTrainer(FAST).train(ctx)
    assert e.value.problems[0].where == "recipe.toml, [diffusion] copy_to"
    assert not ctx.checkpoint_dir.exists()


def test_dora_and_fuse_are_refused(tiny_sd: Path, tmp_path: Path) -> None:
    ctx, _ = make_ctx(tmp_path / "job", tiny_sd)
    ctx.recipe.lora.fine_tune_type = "dora"
    with pytest.raises(DropError, match="DoRA"):
        DiffusionTrainer().train(ctx)
    with pytest.raises(NotImplementedError, match="not fused"):
        DiffusionTrainer().fuse(ctx)


def test_memory_plan_turns_on_checkpointing_then_halves_the_batch() -> None:
    def estimate(fp: Footprint) -> float:
        return fp.batch_size * (3.0 if fp.grad_checkpoint else 10.0)

    fp, gb = plan_diffusion_footprint(Footprint(4, 2048, False), 7.0, estimate)
    assert (fp.batch_size, fp.grad_checkpoint, gb) == (2, True, 6.0)
    assert fp.changes[0].startswith("grad checkpointing on: estimated 40.0 GB")
    assert fp.changes[1].startswith("batch 4 -> 2")
    with pytest.raises(DropError, match="resolution"):
        plan_diffusion_footprint(Footprint(1, 2048, True), 2.0, estimate)


@pytest.mark.parametrize(
    ("model", "weights", "autocast"),
    [("tiny_sd", torch.bfloat16, torch.bfloat16), ("tiny_sdxl", torch.float16, None)],
    ids=["cuda-bf16-autocast", "mps-fp16-no-autocast"],
)
def test_half_frozen_weights_as_on_cuda_and_mps(
    model: str,
    weights: torch.dtype,
    autocast: torch.dtype | None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    """CUDA's path (bfloat16 frozen weights, float32 LoRA, autocast) and MPS's (float16 frozen
    weights, float32 LoRA, no autocast, SDXL's VAE encoding in float32) on the CPU, which runs
    both: every place the dtypes meet is exercised."""
    import lorainbox.trainers.diffusion.trainer as diffusion
    from lorainbox.trainers.torch_common import DeviceSetup

    setup = DeviceSetup(torch.device("cpu"), weights, autocast, autocast is None)
    monkeypatch.setattr(diffusion, "setup_device", lambda *a, **k: setup)
    ctx, out = make_ctx(
        tmp_path / "job",
        request.getfixturevalue(model),
        train={"iters": 3, "batch_size": 2},
        diffusion={"train_text_encoder": True},
    )
    result = DiffusionTrainer(DiffusionOptions(sample_steps=2)).train(ctx)
    assert all(math.isfinite(p["train_loss"]) for p in lines(out))
    assert (ctx.adapter_dir / "sks-style.safetensors").is_file()
    assert result.extra["samples"] == str(ctx.job_dir / SAMPLES_FILE)  # sampled under autocast


def test_vae_encodes_in_float32_when_half_would_overflow() -> None:
    assert vae_encode_dtype(torch.float16, force_upcast=True) == torch.float32
    assert vae_encode_dtype(torch.float16, force_upcast=False) == torch.float16
    assert vae_encode_dtype(torch.bfloat16, force_upcast=True) == torch.bfloat16
    assert vae_encode_dtype(torch.float32, force_upcast=True) == torch.float32
