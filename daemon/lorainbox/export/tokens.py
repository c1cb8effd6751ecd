"""The token ids training saw for a drop's examples, and what llama.cpp must be told to see them.

Both trainers turn a chat into ids through the Hugging Face tokenizer's ``apply_chat_template``
(``trainers/torch_llm.tokenize_row``; mlx-lm's ``ChatDataset``), with no BOS but the template's
own; a ``prompt``/``completion`` pair becomes a two-turn chat when the model has a template.
llama.cpp and Ollama render the same template, drop a leading BOS text when the GGUF says to add
one, and tokenize with special tokens parsed: :func:`llama_text` is that rendering.

:func:`plan` reads two GGUF settings off the tokenizer instead of trusting the converter's
defaults: whether to add a BOS (only if training's ids start with one that opens the sequence,
not a turn: SmolLM2's BOS is ChatML's ``<|im_start|>``, which Ollama's template writes before
every turn, so a GGUF adding it too would double it) and, for SentencePiece,
whether to put a "▁" before text (llama.cpp does so at the start *and* after every special
token; a ``legacy: false`` tokenizer only at the start, so the drop's chats decide).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

Messages = list[dict[str, Any]]
SAMPLE_SIZE = 8


@dataclass(frozen=True)
class Sample:
    """One example as the model meets it: a chat (with a template) or plain text (without)."""

    messages: Messages | None = None
    text: str | None = None
    generation_prompt: bool = False
    """The chat's turns before its answer, ending in the assistant's header: what is served."""

    def describe(self) -> str:
        if self.messages is None:
            return f"text {self.text!r:.60}"
        first = next((m["content"] for m in self.messages if m.get("role") == "user"), "")
        served = " (the prompt as served)" if self.generation_prompt else ""
        return f"chat {str(first)!r:.60}{served}"


@dataclass(frozen=True)
class TokenizerPlan:
    add_bos: bool
    space_prefix: bool | None
    """None where the tokenizer is not SentencePiece-like and the key means nothing."""


def load_tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def read_samples(
    files: Iterable[Path], has_template: bool, limit: int = SAMPLE_SIZE
) -> list[Sample]:
    """Up to ``limit`` distinct examples of the drop; each chat also as the prompt served."""
    found: dict[str, Sample] = {}
    for file in files:
        if not Path(file).is_file():
            continue
        for line in Path(file).read_text(encoding="utf-8").splitlines():
            if len(found) >= limit:
                return list(found.values())
            try:
                samples = _samples_of(json.loads(line), has_template)
            except (ValueError, TypeError, KeyError, AttributeError):
                continue
            found.update((json.dumps(asdict(s), sort_keys=True), s) for s in samples)
    return list(found.values())


def _samples_of(row: dict[str, Any], has_template: bool) -> list[Sample]:
    if has_template and "messages" in row:
        messages = [dict(m) for m in row["messages"]]
    elif has_template and "prompt" in row:
        messages = [
            {"role": "user", "content": str(row["prompt"])},
            {"role": "assistant", "content": str(row["completion"])},
        ]
    elif "text" in row or "prompt" in row:
        return [Sample(text=str(row.get("text", row.get("prompt"))))]
    else:
        return []
    samples = [Sample(messages=messages)]
    if len(messages) > 1 and messages[-1].get("role") == "assistant":
        samples.append(Sample(messages=messages[:-1], generation_prompt=True))
    return samples


def training_ids(tokenizer: Any, sample: Sample) -> list[int]:
    """The ids training used for ``sample`` (before cutting to the sequence length)."""
    if sample.messages is None:
        return list(tokenizer(sample.text)["input_ids"])
    ids = tokenizer.apply_chat_template(
        sample.messages, add_generation_prompt=sample.generation_prompt, return_dict=False
    )
    return list(ids)


def llama_text(tokenizer: Any, sample: Sample, gguf_adds_bos: bool) -> str:
    """The text llama.cpp tokenizes for ``sample``: the template's output, a leading BOS text
    dropped when the GGUF adds a BOS token itself (llama.cpp's ``common_chat_templates_apply``)."""
    if sample.messages is None:
        return str(sample.text)
    text = tokenizer.apply_chat_template(
        sample.messages, add_generation_prompt=sample.generation_prompt, tokenize=False
    )
    bos = tokenizer.bos_token
    if gguf_adds_bos and bos and text.startswith(bos):
        text = text[len(bos) :]
    return text


def plan(tokenizer: Any, samples: Sequence[Sample]) -> TokenizerPlan:
    """The GGUF's ``add_bos_token`` and ``add_space_prefix`` that reproduce training's ids."""
    probe = list(samples) or [Sample(text="ok")]
    first_ids = [training_ids(tokenizer, s) for s in probe]
    bos = tokenizer.bos_token_id
    add_bos = bos is not None and any(ids[:1] == [bos] and bos not in ids[1:] for ids in first_ids)
    return TokenizerPlan(add_bos, _space_prefix(tokenizer, probe, first_ids))


def _space_prefix(tokenizer: Any, samples: Sequence[Sample], ids: list[list[int]]) -> bool | None:
    at_start = _piece(tokenizer, "ok", 0).startswith("▁")
    special = tokenizer.eos_token or tokenizer.bos_token
    after_special = bool(special) and _piece(tokenizer, f"{special}ok", 1).startswith("▁")
    if not (at_start or after_special or _sentencepiece_like(tokenizer)):
        return None
    if at_start == after_special:
        return at_start
    if not at_start:
        return False
    added = set(tokenizer.added_tokens_decoder)
    return any(seq and seq[0] not in added for seq in ids)


def _piece(tokenizer: Any, text: str, index: int) -> str:
    pieces = tokenizer.convert_ids_to_tokens(tokenizer.encode(text, add_special_tokens=False))
    return pieces[index] if len(pieces) > index else ""


def _sentencepiece_like(tokenizer: Any) -> bool:
    return "▁" in "".join(tokenizer.convert_ids_to_tokens(tokenizer.encode("a b")))
