"""PEFT LoRA state dicts -> kohya/A1111 key names, alphas, dtypes and metadata."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lorainbox.trainers.diffusion.kohya import (
    kohya_metadata,
    save_kohya,
    sgm_module_name,
    split_lora_state,
    to_kohya,
)

ATTN = "transformer_blocks.0.attn1.to_q"


def lora(module: str, rank: int = 4, fan_in: int = 8, fan_out: int = 6) -> dict[str, torch.Tensor]:
    return {
        f"{module}.lora_A.weight": torch.randn(rank, fan_in),
        f"{module}.lora_B.weight": torch.randn(fan_out, rank),
    }


def test_sd15_unet_and_text_encoder_keys_follow_sd_scripts() -> None:
    unet = {
        **lora("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0"),
        **lora("mid_block.attentions.0.transformer_blocks.0.attn2.to_k"),
    }
    te = lora("encoder.layers.11.self_attn.out_proj")  # transformers 5 drops "text_model."
    out = to_kohya(unet, 8.0, text_encoders=(te,))
    assert set(out) == {
        f"{name}.{part}"
        for name in (
            "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0",
            "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k",
            "lora_te_text_model_encoder_layers_11_self_attn_out_proj",
        )
        for part in ("lora_down.weight", "lora_up.weight", "alpha")
    }
    name = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k"
    assert out[f"{name}.lora_down.weight"].shape == (4, 8)  # PEFT's A: (rank, in)
    assert out[f"{name}.lora_up.weight"].shape == (6, 4)  # PEFT's B: (out, rank)
    assert out[f"{name}.alpha"].item() == 8.0 and out[f"{name}.alpha"].dtype == torch.float16
    src = unet["mid_block.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight"]
    torch.testing.assert_close(out[f"{name}.lora_down.weight"].float(), src, atol=1e-2, rtol=1e-3)


@pytest.mark.parametrize(
    ("diffusers", "sgm"),
    [
        ("down_blocks.1.attentions.0", "input_blocks.4.1"),
        ("down_blocks.1.attentions.1", "input_blocks.5.1"),
        ("down_blocks.2.attentions.1", "input_blocks.8.1"),
        ("mid_block.attentions.0", "middle_block.1"),
        ("up_blocks.0.attentions.0", "output_blocks.0.1"),
        ("up_blocks.0.attentions.2", "output_blocks.2.1"),
        ("up_blocks.1.attentions.2", "output_blocks.5.1"),
    ],
)
def test_sdxl_block_names_are_stabilitys(diffusers: str, sgm: str) -> None:
    """SDXL's real layout (layers_per_block = 2): the names sd-scripts writes for SDXL LoRAs."""
    assert sgm_module_name(f"{diffusers}.{ATTN}", 2) == f"{sgm}.{ATTN}"


def test_sdxl_files_use_te1_te2_and_refuse_non_attention_modules() -> None:
    unet = lora(f"down_blocks.1.attentions.0.{ATTN}")
    te1, te2 = (
        lora("encoder.layers.0.self_attn.q_proj"),
        lora("text_model.encoder.layers.0.mlp.fc1"),
    )
    out = to_kohya(unet, 4, text_encoders=(te1, te2), text_alpha=2.0, sdxl=True)
    assert f"lora_unet_input_blocks_4_1_{ATTN.replace('.', '_')}.alpha" in out
    assert out["lora_te1_text_model_encoder_layers_0_self_attn_q_proj.alpha"].item() == 2.0
    assert "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_up.weight" in out
    with pytest.raises(ValueError, match="attention blocks"):
        to_kohya(lora("down_blocks.0.resnets.0.conv1"), 4, sdxl=True)
    with pytest.raises(ValueError, match="text encoders"):
        to_kohya(unet, 4, text_encoders=(te1, te1))


def test_peft_prefixes_and_incomplete_pairs() -> None:
    state = {
        "base_model.model.down_blocks.0.attentions.0.proj_in.lora_A.default.weight": torch.ones(
            2, 3
        ),
        "base_model.model.down_blocks.0.attentions.0.proj_in.lora_B.default.weight": torch.ones(
            3, 2
        ),
    }
    assert list(split_lora_state(state)) == ["down_blocks.0.attentions.0.proj_in"]
    with pytest.raises(ValueError, match="both halves"):
        split_lora_state({"x.lora_A.weight": torch.ones(1)})
    with pytest.raises(ValueError, match="not a LoRA weight"):
        split_lora_state({"x.weight": torch.ones(1)})


def test_file_and_metadata(tmp_path: Path) -> None:
    from safetensors import safe_open

    meta = kohya_metadata(
        name="pirate",
        rank=16,
        alpha=16.0,
        sdxl=False,
        resolution=512,
        steps=1500,
        text_encoder=False,
    )
    assert all(isinstance(v, str) for v in meta.values())
    assert meta["ss_network_dim"] == "16" and meta["ss_base_model_version"] == "sd_v1"
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    path = save_kohya(
        tmp_path / "out" / "pirate.safetensors",
        to_kohya(lora(f"mid_block.attentions.0.{ATTN}"), 16),
        meta,
    )
    assert [p.name for p in path.parent.iterdir()] == ["pirate.safetensors"]
    with safe_open(path, "pt") as f:
        assert f.metadata() == meta
        assert len(list(f.keys())) == 3
