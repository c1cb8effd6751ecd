"""Sample images before and after training, side by side in one labelled grid.

Each prompt gets a fixed seed, so the two rows differ only by what the LoRA learned.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from lorainbox.trainers.diffusion.model import Parts
from lorainbox.trainers.torch_common import DeviceSetup

MAX_SAMPLES = 4


def sample_prompts(prompts: Sequence[str], captions: Iterable[str]) -> list[str]:
    """The recipe's sample prompts, else the first distinct captions."""
    chosen = list(prompts) or list(dict.fromkeys(c for c in captions if c))
    return chosen[:MAX_SAMPLES]


def render(
    parts: Parts,
    setup: DeviceSetup,
    prompts: Sequence[str],
    paths: Sequence[Path],
    resolution: int,
    steps: int,
    seed: int,
) -> None:
    """One image a prompt, in the step's precision (bf16 base, fp32 LoRA), prompt n seeded
    ``seed + n``."""
    parts.pipe.set_progress_bar_config(disable=True)
    with torch.no_grad(), setup.autocast():
        for n, (prompt, path) in enumerate(zip(prompts, paths, strict=True)):
            image = parts.pipe(
                prompt,
                height=resolution,
                width=resolution,
                num_inference_steps=steps,
                generator=torch.Generator("cpu").manual_seed(seed + n),
            ).images[0]
            image.save(path)


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
