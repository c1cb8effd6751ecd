"""The GGUF answering a chat through llama.cpp, greedy: what Ollama will serve, asked directly."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from lorainbox.export.gguf import inspect_gguf, stop_tokens
from lorainbox.export.selfcheck import quiet_llama

Messages = list[dict[str, Any]]


def gguf_replier(gguf: Path, max_tokens: int, n_ctx: int = 1024) -> Callable[[Messages], str]:
    """Greedy replies of the GGUF with its own chat template, stopping at its turn markers."""
    from llama_cpp import Llama

    info = inspect_gguf(gguf)
    with quiet_llama():
        llm = Llama(
            str(gguf), n_ctx=min(n_ctx, info.context_length or n_ctx), seed=0, verbose=False
        )
    stops = stop_tokens(info) or None

    def reply(messages: Messages) -> str:
        out = llm.create_chat_completion(
            messages, temperature=0.0, max_tokens=max_tokens, stop=stops
        )
        return out["choices"][0]["message"]["content"] or ""

    return reply
