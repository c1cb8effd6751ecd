"""Base models: the tiny built-in ones, finding a recipe's model, and checking a model folder."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from lorainbox.core.errors import DropError
from lorainbox.models.base import (
    check_model_dir,
    resolve_base_model,
    resolve_diffusion_base,
    tiny_model,
)
from lorainbox.models.tinymodel import copy_model

from tests.models import TINY_FACT, tiny_llama  # noqa: F401


def test_tiny_model_is_built_once_and_loads_everywhere(tiny_llama: Path) -> None:  # noqa: F811
    assert tiny_llama.name == "tiny-llama-v2"
    weights = tiny_llama / "model.safetensors"
    before = weights.stat().st_mtime_ns
    leftover = tiny_llama.parent / ".tiny-llama-building-dead"
    leftover.mkdir(exist_ok=True)  # a builder that died half-way
    assert resolve_base_model("lorainbox:tiny-llama", Path("/nowhere")) == tiny_llama
    assert weights.stat().st_mtime_ns == before
    assert check_model_dir(tiny_llama)["model_type"] == "llama"

    from mlx_lm import load
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = load(str(tiny_llama))
    assert tokenizer.chat_template and len(model.layers) == 2
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    assert AutoModelForCausalLM.from_pretrained(tiny_llama).config.vocab_size == len(tok)


def test_tiny_qwen2_loads_in_mlx_lm_and_transformers_and_converts_to_gguf(tmp_path: Path) -> None:
    from lorainbox.export.converter import PRE_TOKENIZERS, pre_tokenizer_name
    from lorainbox.export.gguf import convert_to_gguf
    from lorainbox.models.tinymodel import QWEN2_PATTERN
    from mlx_lm import load
    from transformers import AutoModelForCausalLM

    qwen = tiny_model("tiny-qwen2")
    assert check_model_dir(qwen)["model_type"] == "qwen2"
    model, tokenizer = load(str(qwen))
    assert tokenizer.chat_template and len(model.layers) == 2
    assert AutoModelForCausalLM.from_pretrained(qwen).config.model_type == "qwen2"
    assert "Ġthe" in tokenizer._tokenizer.get_vocab()  # byte-level BPE, as Qwen2's
    data = TINY_FACT / "train.jsonl"
    info = convert_to_gguf(qwen, tmp_path / "qwen.gguf", data_files=[data])
    assert info.architecture == "qwen2" and info.chat_template and info.eos_token == "<|im_end|>"
    assert info.tokenizer_model == "gpt2" and pre_tokenizer_name(qwen / "tokenizer.json") == "qwen2"
    assert info.self_check is not None and info.self_check.examples == 8
    assert PRE_TOKENIZERS == {QWEN2_PATTERN: "qwen2"}


def test_unknown_tiny_model_names_the_known_ones() -> None:
    with pytest.raises(DropError, match="lorainbox:tiny-llama"):
        tiny_model("tiny-gpt5")


def test_local_paths_relative_absolute_and_home(
    tiny_llama: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    drop = tmp_path / "drop"
    copy_model(tiny_llama, drop / "base")
    assert resolve_base_model("base", drop) == (drop / "base").resolve()
    assert resolve_base_model(str(drop / "base"), tmp_path) == (drop / "base").resolve()
    monkeypatch.setenv("HOME", str(drop))
    assert resolve_base_model("~/base", tmp_path) == (drop / "base").resolve()
    with pytest.raises(DropError, match="is not a folder here"):
        resolve_base_model("./missing", drop)


@pytest.mark.parametrize("resolver", [resolve_base_model, resolve_diffusion_base])
def test_unreachable_hub_is_a_drop_error_that_suggests_a_local_folder(
    resolver: Callable[[str, Path], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(DropError) as e:
        resolver("lorainbox-tests/no-such-model", tmp_path)
    problem = e.value.problems[0]
    assert "could not reach the Hugging Face Hub" in problem.what
    assert "local folder" in problem.fix


@pytest.mark.parametrize(
    ("damage", "file", "what"),
    [
        (lambda d: (d / "config.json").write_text("{not json"), "config.json", "not valid JSON"),
        (lambda d: (d / "config.json").write_text("{}"), "config.json", "names no architecture"),
        (lambda d: (d / "config.json").unlink(), "", "no config.json"),
        (lambda d: _truncate(d / "model.safetensors", 0.5), "model.safetensors", "cut short"),
        (lambda d: _truncate(d / "model.safetensors", 4), "model.safetensors", "cut short"),
        (lambda d: (d / "model.safetensors").unlink(), "", "no .safetensors"),
        (lambda d: _remove_tokenizer(d), "", "no tokenizer"),
    ],
    ids=["bad-json", "no-arch", "no-config", "truncated", "header-only", "no-weights", "no-tok"],
)
def test_damaged_model_folder_names_the_file(
    tiny_llama: Path,  # noqa: F811
    tmp_path: Path,
    damage,
    file: str,
    what: str,
) -> None:
    model = copy_model(tiny_llama, tmp_path / "model")
    damage(model)
    with pytest.raises(DropError) as e:
        check_model_dir(model)
    problem = e.value.problems[0]
    assert what in problem.what
    assert problem.where == (str(model / file) if file else str(model))
    assert problem.fix


def test_index_naming_a_missing_shard(tiny_llama: Path, tmp_path: Path) -> None:  # noqa: F811
    model = copy_model(tiny_llama, tmp_path / "model")
    (model / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors"}})
    )
    with pytest.raises(DropError, match="model-00002-of-00002.safetensors"):
        check_model_dir(model)


def _truncate(file: Path, keep: float) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: int(len(data) * keep)] if keep < 1 else data[: int(keep)])


def _remove_tokenizer(model: Path) -> None:
    for name in ("tokenizer.json", "tokenizer.model"):
        (model / name).unlink()
