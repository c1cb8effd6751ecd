"""Build a tiny Stable Diffusion (1.5- or XL-shaped) with a CLIP tokenizer made on the spot.

Tests and the benchmark need a real diffusers pipeline without downloading one. The result is
an ordinary diffusers folder (``model_index.json``, unet, vae, text encoder(s), tokenizer(s),
scheduler) that ``StableDiffusionPipeline.from_pretrained`` (or the XL one) loads offline, so
the trainer, the LoRA export and diffusers' own LoRA loader treat it like any other model.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

_CORPUS = """\
a photo of a cat sitting on a red chair. a painting of a lighthouse by the sea at dawn.
a drawing of a dog in the style of a watercolor. a portrait of a woman with a blue hat.
sks style, pixel art of a castle on a hill. a green tree under a yellow sun. the ship sails.
an orange fox in the snow, digital art, highly detailed. a bowl of fruit on a wooden table.
"""
MAX_LENGTH = 77
SPECIALS = ("<|startoftext|>", "<|endoftext|>")


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's (and GPT-2's) printable stand-in for every byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))


def write_clip_tokenizer(out_dir: Path, corpus: str = _CORPUS, merges: int = 200) -> Path:
    """vocab.json + merges.txt of a CLIP BPE learned on ``corpus`` (every byte stays encodable)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    base = list(bytes_to_unicode().values())
    vocab = [*base, *(c + "</w>" for c in base)]
    words = Counter(w for w in corpus.lower().replace(".", " ").replace(",", " ").split())
    split = {w: [*w[:-1], w[-1] + "</w>"] for w in words}
    learned: list[tuple[str, str]] = []
    for _ in range(merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for w, parts in split.items():
            for a, b in zip(parts, parts[1:], strict=False):
                pairs[a, b] += words[w]
        if not pairs:
            break
        (a, b), _count = pairs.most_common(1)[0]
        learned.append((a, b))
        for w, parts in split.items():
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and parts[i] == a and parts[i + 1] == b:
                    merged.append(a + b)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            split[w] = merged
    vocab += [a + b for a, b in learned if a + b not in vocab]
    vocab += list(SPECIALS)
    (out_dir / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (out_dir / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in learned)
    )
    (out_dir / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "CLIPTokenizer",
                "model_max_length": MAX_LENGTH,
                "bos_token": SPECIALS[0],
                "eos_token": SPECIALS[1],
                "unk_token": SPECIALS[1],
                "pad_token": SPECIALS[1],
                "do_lower_case": True,
            }
        )
    )
    return out_dir


def build_tiny_sd(
    out_dir: Path,
    *,
    xl: bool = False,
    prediction_type: str = "epsilon",
    seed: int = 0,
) -> Path:
    """Write a tiny randomly initialised SD 1.5- (or SDXL-) shaped pipeline to ``out_dir``.

    The VAE downsamples by 8 like the real one, so bucket and latent sizes behave the same;
    everything else is a few thousand parameters wide and runs in milliseconds on a CPU.
    """
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tok_dir = write_clip_tokenizer(out_dir / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    tokenizer.save_pretrained(tok_dir)
    text_encoder = _clip_text(len(tokenizer), tokenizer, projection=False)
    unet_kwargs: dict[str, Any] = {}
    if xl:
        unet_kwargs = {
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": 8,
            "projection_class_embeddings_input_dim": 6 * 8 + 32,
            "cross_attention_dim": 64,
            "transformer_layers_per_block": (1, 1),
        }
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=unet_kwargs.pop("cross_attention_dim", 32),
        attention_head_dim=8,
        norm_num_groups=32,
        **unet_kwargs,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )
    if xl:
        from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

        tok2_dir = out_dir / "tokenizer_2"
        tokenizer.save_pretrained(tok2_dir)
        pipe: Any = StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=_clip_text(len(tokenizer), tokenizer, projection=True),
            tokenizer=tokenizer,
            tokenizer_2=CLIPTokenizer.from_pretrained(tok2_dir),
            unet=unet,
            scheduler=EulerDiscreteScheduler(**_betas(), prediction_type=prediction_type),
        )
    else:
        from diffusers import PNDMScheduler, StableDiffusionPipeline

        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=PNDMScheduler(
                **_betas(), prediction_type=prediction_type, skip_prk_steps=True
            ),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    pipe.save_pretrained(out_dir, safe_serialization=True)
    (out_dir / "LORAINBOX_TINY_SD.json").write_text(json.dumps({"xl": xl, "seed": seed}) + "\n")
    return out_dir


def _betas() -> dict[str, Any]:
    """SD 1.5's noise schedule."""
    return {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "steps_offset": 1,
    }


def _clip_text(vocab_size: int, tokenizer: Any, *, projection: bool) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_LENGTH,
        projection_dim=32,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_act="gelu",
    )
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return cls(config)
