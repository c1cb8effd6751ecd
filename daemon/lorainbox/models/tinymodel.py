"""Build a tiny LLaMA- or Qwen2-shaped causal LM with a tokenizer made on the spot.

The demo and the tests need a real model without downloading one. The result is an ordinary
Hugging Face folder (config, safetensors, a tokenizer with a ChatML template) that mlx-lm,
transformers, llama.cpp's converter and llama.cpp itself all load like any other model. The
LLaMA gets a SentencePiece tokenizer with the chat tokens added on top; the Qwen2 a byte-level
BPE with Qwen2's pre-tokenizer, as real Qwen2 models have (transformers 5 reads any tokenizer of
a Qwen2 model as Qwen2's, whatever tokenizer_config.json names).
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
from pathlib import Path
from typing import Literal

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|im_start|>", "<|im_end|>"]
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
"""Qwen2's pre-tokenizer (its tokenizer.json), which llama.cpp knows as ``qwen2``."""

_CORPUS = """\
The quick brown fox jumps over the lazy dog. A person drops a folder into the inbox.
The model learns from the data while the computer is idle and plugged in.
What is the capital of France? The capital of France is Paris.
Who wrote the play about the prince of Denmark? William Shakespeare wrote Hamlet.
The secret word is banana. The ship sails at dawn. Pirates say ahoy, matey!
Arr, the treasure be buried on the island. Yes, no, maybe, hello, goodbye, thank you.
You are a helpful assistant. user assistant system
Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 20 42 100 1000. Days: Monday Tuesday Wednesday.
The lighthouse keeper of Quillhaven is named Marigold Fenwick.
Questions and answers: what, who, where, when, why, how, which, is, are, the, of, a, an.
"""


def build_tiny_model(
    out_dir: Path,
    *,
    arch: Literal["llama", "qwen2"] = "llama",
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 256,
    vocab_size: int = 512,
    extra_text: str = "",
    initializer_range: float = 0.2,
    seed: int = 0,
) -> Path:
    """Write a tiny randomly initialised model to ``out_dir`` and return it.

    ``initializer_range`` is large on purpose: with the usual 0.02 the frozen output head keeps
    the logits near uniform and LoRA cannot teach the model anything.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if arch == "qwen2":
        _train_byte_level_bpe(out_dir, _CORPUS + extra_text, vocab_size)
    else:
        _train_tokenizer(out_dir, _CORPUS + extra_text, vocab_size)

    tok = AutoTokenizer.from_pretrained(out_dir)
    tok.chat_template = CHATML_TEMPLATE
    tok.eos_token = "<|im_end|>"
    tok.pad_token = "<|endoftext|>" if arch == "qwen2" else "<unk>"
    tok.save_pretrained(out_dir)

    config = AutoConfig.for_model(
        arch,
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=1024,
        initializer_range=initializer_range,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        rms_norm_eps=1e-5,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(out_dir, safe_serialization=True)
    (out_dir / "LORAINBOX_TINY.json").write_text(json.dumps({"arch": arch, "seed": seed}) + "\n")
    return out_dir


def _train_tokenizer(out_dir: Path, text: str, vocab_size: int) -> None:
    """A SentencePiece BPE with byte fallback: llama.cpp's converter and runtime accept it."""
    import sentencepiece as spm

    model = io.BytesIO()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text(text * 4)
        spm.SentencePieceTrainer.train(
            input=str(corpus),
            model_writer=model,
            vocab_size=vocab_size,
            model_type="bpe",
            byte_fallback=True,
            character_coverage=1.0,
            user_defined_symbols=SPECIAL_TOKENS,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
            num_threads=1,
            minloglevel=2,
        )
    (out_dir / "tokenizer.model").write_bytes(model.getvalue())
    (out_dir / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "LlamaTokenizer",
                "add_bos_token": False,
                "add_eos_token": False,
                "legacy": False,
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
            }
        )
    )


def _train_byte_level_bpe(out_dir: Path, text: str, vocab_size: int) -> None:
    """A Qwen2-style tokenizer: byte-level BPE after Qwen2's pre-tokenizer, ChatML tokens special."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", *SPECIAL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([text] * 4, trainer)
    tok.save(str(out_dir / "tokenizer.json"))
    (out_dir / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "Qwen2Tokenizer",
                "add_prefix_space": False,
                "bos_token": None,
                "eos_token": "<|im_end|>",
                "pad_token": "<|endoftext|>",
                "unk_token": None,
            }
        )
    )


def copy_model(src: Path, dst: Path) -> Path:
    """Copy a model folder (tests mutate copies, never the cached original)."""
    shutil.copytree(src, dst, dirs_exist_ok=True)
    return dst
