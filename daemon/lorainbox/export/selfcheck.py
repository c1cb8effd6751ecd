"""The GGUF checks itself: it must read the drop's chats as training did, and compute as the model.

A GGUF that tokenizes ``<|im_start|>`` as characters, or puts a BOS training never saw in front
of every prompt, loads and answers in llama.cpp and Ollama, only badly, and nothing says why.
So before a GGUF is kept, llama.cpp's own tokenizer (the GGUF read with ``vocab_only``) must turn
a sample of the drop's examples into exactly the ids training used, or the export fails saying
where they part. Then a few next-token logits of the Hugging Face model and the GGUF are compared;
the largest difference goes into the job's result (a quantized GGUF differs more, by design).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lorainbox.core.errors import DropError
from lorainbox.export.tokens import Sample, llama_text, training_ids

LOGIT_POSITIONS = 4
"""Last positions of one prompt whose logits are compared."""


@dataclass(frozen=True)
class SelfCheck:
    examples: int
    """Examples (chats and served prompts) whose ids matched."""
    add_bos: bool
    space_prefix: bool | None
    max_logit_diff: float | None = None
    """Largest absolute difference of next-token logits, HF model vs GGUF (None: not compared)."""
    same_next_token: bool | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextlib.contextmanager
def quiet_llama() -> Iterator[None]:
    """llama.cpp writes its loading log to fd 2 even when asked not to; keep it out of logs."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def check_tokens(gguf: Path, tokenizer: Any, samples: Sequence[Sample], where: str) -> SelfCheck:
    """llama.cpp's ids for every sample equal training's, or a DropError says where they part."""
    from llama_cpp import Llama

    with quiet_llama():
        llm = Llama(str(gguf), vocab_only=True, verbose=False)
    adds_bos = bool(llm._model.add_bos_token())
    prefix = llm.metadata.get("tokenizer.ggml.add_space_prefix")
    for sample in samples:
        want = training_ids(tokenizer, sample)
        text = llama_text(tokenizer, sample, adds_bos)
        got = llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
        if got != want:
            raise _mismatch(tokenizer, llm, sample, want, got, where)
    return SelfCheck(len(samples), adds_bos, None if prefix is None else prefix == "true")


def _mismatch(
    tokenizer: Any, llm: Any, sample: Sample, want: list[int], got: list[int], where: str
) -> DropError:
    at = next((i for i, (a, b) in enumerate(zip(want, got, strict=False)) if a != b), None)
    at = min(len(want), len(got)) if at is None else at
    ours = tokenizer.convert_ids_to_tokens(want[at : at + 6])
    theirs = [llm._model.token_get_text(t) for t in got[at : at + 6]]
    return DropError.one(
        f"the GGUF does not read the drop's chats as training did: for the {sample.describe()}, "
        f"training's tokens from position {at} are {ours}, llama.cpp's are {theirs} "
        f"({len(want)} vs {len(got)} tokens); the model would answer garbage in Ollama",
        where,
        "ship the base model's tokenizer files unchanged (tokenizer.json, tokenizer_config.json "
        "and the chat template); if they are, report this with the converter log. "
        "[export] gguf = false keeps only the adapter",
    )


def compare_logits(hf_dir: Path, gguf: Path, ids: Sequence[int]) -> tuple[float, bool]:
    """Largest absolute difference of the logits at the last few positions of ``ids``, and
    whether both pick the same next token. Run in a child process: an MLX worker has told
    transformers that torch is absent, and the whole model loads once more, then goes."""
    args = [sys.executable, "-m", "lorainbox.export.selfcheck", str(hf_dir), str(gguf)]
    done = subprocess.run(
        [*args, json.dumps(list(ids))], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"comparing logits failed: {done.stderr.strip()[-2000:]}")
    diff, same = json.loads(done.stdout.strip().splitlines()[-1])
    return float(diff), bool(same)


def _logits_difference(hf_dir: Path, gguf: Path, ids: list[int]) -> tuple[float, bool]:
    import numpy as np
    import torch
    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        hf = model(torch.tensor([ids])).logits[0].numpy()
    del model
    with quiet_llama():
        llm = Llama(str(gguf), n_ctx=max(64, len(ids) + 8), logits_all=True, verbose=False)
    llm.eval(ids)
    ours = np.asarray(llm.scores[: len(ids)], dtype=np.float32)
    n = min(LOGIT_POSITIONS, len(ids))
    diff = float(np.abs(hf[-n:] - ours[-n:]).max())
    return diff, bool(hf[-1].argmax() == ours[-1].argmax())


if __name__ == "__main__":
    print(
        json.dumps(
            _logits_difference(Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3]))
        )
    )
