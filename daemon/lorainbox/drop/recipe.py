"""Recipes: the TOML file in a drop that says what to train and how.

A recipe is parsed with tomllib, merged over the recipe it ``extends`` (built-in ones live in
``recipes/``, a person's own in ``<inbox>/recipes/``), and validated by pydantic into one typed
:class:`Recipe`. Every mistake becomes a :class:`~lorainbox.core.errors.Problem` naming the key, the file
and the line, with the closest valid key when a name is misspelt.
"""

from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lorainbox.core.errors import DropError, Problem
from lorainbox.core.share import BUILTIN_RECIPES
from lorainbox.drop.window import parse_window

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_RECIPE = {
    "chat": "chat-lora",
    "completions": "chat-lora",
    "text": "chat-lora",
    "images": "sd15-style",
}

# Names people reach for that mean one of ours (mlx-lm's names win where the idea is the same).
SYNONYMS = {
    "layers": "num_layers",
    "lora_layers": "num_layers",
    "targets": "keys",
    "target_modules": "keys",
    "r": "rank",
    "lora_alpha": "alpha",
    "lora_dropout": "dropout",
    "lr": "learning_rate",
    "steps": "iters",
    "max_steps": "iters",
    "num_epochs": "epochs",
    "seq_len": "max_seq_length",
    "max_length": "max_seq_length",
    "gradient_checkpointing": "grad_checkpoint",
    "model": "base_model",
    "base": "base_model",
}


# Pairs of keys of which a recipe sets one: setting one in a child replaces the other inherited.
EXCLUSIVE_KEYS = (("train", "iters", "epochs"), ("lora", "scale", "alpha"))


class _Section(BaseModel):
    # Strict: TOML has real numbers and booleans, so "yes" or "4" in quotes is a mistake to report.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)


class DataSpec(_Section):
    train: str | None = None
    """File or folder inside the drop; found automatically when absent."""
    valid: str | None = None
    format: Literal["auto", "chat", "completions", "text", "images"] = "auto"
    valid_fraction: float = Field(0.1, ge=0.0, lt=1.0)


class LoraSpec(_Section):
    fine_tune_type: Literal["lora", "dora"] = "lora"
    rank: int = Field(8, ge=1, le=1024)
    scale: float | None = Field(None, gt=0, le=1000)
    """mlx-lm's multiplier of the LoRA update; PEFT's ``alpha`` is ``scale * rank``."""
    alpha: float | None = Field(None, gt=0, le=100000)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    num_layers: int = Field(16, ge=-1)
    """How many of the last transformer blocks get adapters; -1 means all."""
    keys: list[str] | None = None
    """Module names to adapt (``self_attn.q_proj`` ...); None picks by architecture."""

    @model_validator(mode="after")
    def _scale_or_alpha(self) -> LoraSpec:
        if self.scale is not None and self.alpha is not None:
            raise ValueError("set either scale (mlx-lm) or alpha (PEFT), not both")
        return self

    @property
    def effective_scale(self) -> float:
        if self.alpha is not None:
            return self.alpha / self.rank
        return 20.0 if self.scale is None else self.scale


class TrainSpec(_Section):
    iters: int | None = Field(None, ge=1, le=10_000_000)
    epochs: float | None = Field(None, gt=0, le=10_000)
    batch_size: int = Field(4, ge=1, le=4096)
    learning_rate: float = Field(1e-5, gt=0, le=1.0)
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    warmup: int = Field(0, ge=0)
    max_seq_length: int = Field(2048, ge=16, le=1_048_576)
    grad_checkpoint: bool = False
    mask_prompt: bool = True
    """Train on the answers only (mlx-lm's ``mask_prompt``)."""
    seed: int = 0
    save_every: int = Field(100, ge=1)
    steps_per_report: int = Field(10, ge=1)
    steps_per_eval: int = Field(200, ge=1)
    val_batches: int = Field(25, ge=-1)
    device: Literal["auto", "mps", "cuda", "cpu"] = "auto"
    """Torch trainers only: MLX picks Metal or the CPU itself."""

    @model_validator(mode="after")
    def _iters_or_epochs(self) -> TrainSpec:
        if self.iters is not None and self.epochs is not None:
            raise ValueError("set either iters or epochs, not both")
        return self


class ScheduleSpec(_Section):
    """When a job may train: the recipe's ``[schedule]`` section, as the gates read it."""

    when: Literal["now", "idle"] = "idle"
    idle_minutes: float = Field(10.0, ge=0, le=24 * 60)
    require_ac_power: bool = True
    min_battery_percent: int = Field(0, ge=0, le=100)
    """Only used with ``require_ac_power = false``: don't train on a battery below this."""
    window: str | None = None
    """``"HH:MM-HH:MM"``, may wrap midnight (``"22:00-07:00"``); stored in that form."""
    on_interrupt: Literal["pause", "continue"] = "pause"
    """What the scheduler does when a gate fails mid-run; the gates only report."""
    priority: int = 0

    @field_validator("window")
    @classmethod
    def _window(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        return str(parse_window(v))


class MemorySpec(_Section):
    max_gb: float | None = Field(None, gt=0, le=4096)
    """Budget for the whole training process; None means a share of physical memory."""
    unload_ollama: bool = True
    """Ask Ollama to unload the models it holds before training starts: a chat model left
    loaded keeps gigabytes the trainer needs."""


class ExportSpec(_Section):
    gguf: bool = True
    outtype: Literal["f16", "q8_0", "bf16", "f32"] = "f16"
    quantize: str | None = "q4_K_M"
    """Quantization Ollama applies when it creates the model; "none" keeps ``outtype``."""

    @field_validator("quantize")
    @classmethod
    def _quantize(cls, v: str | None) -> str | None:
        return None if v is None or v.strip().lower() in ("", "none") else v.strip()


class OllamaSpec(_Section):
    enabled: bool = True
    """Register the model with Ollama once it is exported."""
    model: str | None = None
    """Ollama model name; defaults to the recipe's name."""
    system: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    template: str | None = None


class DiffusionSpec(_Section):
    resolution: int = Field(512, ge=64, le=4096)
    train_text_encoder: bool = False
    sample_prompts: list[str] = Field(default_factory=list)
    copy_to: str | None = None
    """A folder (e.g. ComfyUI's ``models/loras``) that receives a copy of the LoRA."""


class DistributedSpec(_Section):
    """Data-parallel training on torch's and MLX's own launchers (see ``worker/launch.py``)."""

    processes: int = Field(1, ge=1, le=64)
    """Training processes on each machine: one per GPU, or a few sharing a Mac's or a CPU's."""
    hosts: list[str] = Field(default_factory=list)
    """Machines (IP addresses, this one first) that train together, reached over ssh."""

    @property
    def world_size(self) -> int:
        return self.processes * max(1, len(self.hosts))


class Recipe(_Section):
    name: str = Field(min_length=1, max_length=80)
    """It names the Ollama model: Ollama's model part holds at most 80 bytes (types/model/name.go
    isValidLen), and the name may use only ASCII, so 80 characters."""
    kind: Literal["llm", "diffusion"] = "llm"
    base_model: str = Field(min_length=1)
    """A local folder (relative to the drop, absolute or ``~``), a Hub id, or ``lorainbox:tiny-llama``."""
    trainer: Literal["auto", "mlx", "torch"] = "auto"
    extends: str | None = None
    description: str | None = None
    data: DataSpec = Field(default_factory=DataSpec)
    lora: LoraSpec = Field(default_factory=LoraSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    memory: MemorySpec = Field(default_factory=MemorySpec)
    export: ExportSpec = Field(default_factory=ExportSpec)
    ollama: OllamaSpec = Field(default_factory=OllamaSpec)
    diffusion: DiffusionSpec = Field(default_factory=DiffusionSpec)
    distributed: DistributedSpec = Field(default_factory=DistributedSpec)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", v):
            raise ValueError(
                f'"{v}" may use only letters, digits, ".", "_" and "-", starting with a letter or digit'
            )
        return v

    @property
    def ollama_model(self) -> str:
        return self.ollama.model or self.name.lower()


def find_recipe(name: str, search_dirs: Sequence[Path]) -> Path | None:
    for d in search_dirs:
        candidate = d / f"{name}.toml"
        if candidate.is_file():
            return candidate
    return None


def available_recipes(search_dirs: Sequence[Path]) -> list[str]:
    return sorted({p.stem for d in search_dirs if d.is_dir() for p in d.glob("*.toml")})


def recipe_search_dirs(inbox: Path | None) -> list[Path]:
    """A person's own recipes shadow the built-in ones of the same name."""
    dirs = [inbox / "recipes"] if inbox is not None else []
    return [*dirs, BUILTIN_RECIPES]


def recipe_summary(path: Path, recipe: Recipe) -> str:
    """What a recipe is for: its ``description``, else the first sentence of its opening
    comment (how the built-in recipes say it)."""
    if recipe.description:
        return recipe.description
    comment = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        comment.append(line.lstrip("#").strip())
    text = " ".join(part for part in comment if part)
    return text.split(". ")[0].rstrip(".") + "." if text else ""


def load_recipe(
    path: Path, *, search_dirs: Sequence[Path], defaults: dict[str, Any] | None = None
) -> Recipe:
    """Parse ``path``, resolve ``extends``, validate. Raises :class:`DropError`."""
    sources: dict[tuple[str, ...], Path] = {}
    merged = _resolve(path, search_dirs, chain=[], sources=sources)
    if defaults:
        merged = _deep_merge(defaults, merged)
    try:
        return Recipe.model_validate(merged)
    except ValidationError as e:
        raise DropError([_problem(err, path, sources) for err in e.errors()]) from None


def default_recipe(
    data_kind: str, drop_name: str, *, search_dirs: Sequence[Path], where: str
) -> Recipe:
    """The recipe a drop gets when it holds data but no ``recipe.toml``."""
    base = DEFAULT_RECIPE.get(data_kind)
    path = find_recipe(base, search_dirs) if base else None
    if path is None:
        raise DropError.one(
            f"no recipe.toml, and no default recipe for {data_kind} data",
            where,
            f"add a recipe.toml (see `lorainbox recipes`); available: {', '.join(available_recipes(search_dirs))}",
        )
    # A placeholder name lets a person's nameless shadow of the built-in validate; replaced below.
    recipe = load_recipe(path, search_dirs=search_dirs, defaults={"name": "default"})
    try:
        recipe.name = drop_name  # the drop's name, not the built-in's: it names the model
    except ValidationError as e:
        raise DropError.one(
            f'the folder name "{drop_name}" cannot name a model: '
            f"{e.errors()[0]['msg'].removeprefix('Value error, ')}",
            where,
            'rename the folder using letters, digits, ".", "_" and "-" (e.g. "pirate-bot"), '
            "or add a recipe.toml with a name",
        ) from None
    return recipe


def read_toml(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DropError.one(
            f"cannot read the recipe ({e.strerror})", str(path), "check the file's permissions"
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DropError.one(
            f"the recipe is not UTF-8 text (byte 0x{raw[e.start]:02X} on line {line})",
            f"{path}, line {line}",
            "save it as UTF-8 (in TextEdit: Format > Make Plain Text, then save as UTF-8)",
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"at line (\d+)", str(e))
        line = getattr(e, "lineno", None) or (int(m[1]) if m else None)
        where = f"{path}, line {line}" if line else str(path)
        raise DropError.one(
            f"the recipe is not valid TOML: {getattr(e, 'msg', str(e)).split(' (at line')[0]}",
            where,
            'fix the syntax at that line; strings need quotes ("like this"), tables look like [train]',
        ) from None


def _resolve(
    path: Path,
    search_dirs: Sequence[Path],
    chain: list[Path],
    sources: dict[tuple[str, ...], Path],
) -> dict[str, Any]:
    path = path.resolve()
    if path in chain:
        names = " -> ".join(p.stem for p in [*chain, path])
        closing = chain[-1]
        raise DropError.one(
            f"recipes extend each other in a cycle: {names}",
            f"{closing}, line {line_of(closing, [], 'extends') or '?'}",
            "remove one of the `extends` lines so the chain ends at a built-in recipe",
        )
    data = read_toml(path)
    parent_name = data.pop("extends", None)
    if parent_name is None:
        _record_sources(data, path, (), sources)
        return data
    where = f"{path}, line {line_of(path, [], 'extends') or '?'}"
    if not isinstance(parent_name, str) or not parent_name:
        raise DropError.one(
            "`extends` must be the name of a recipe, in quotes",
            where,
            'write e.g. extends = "chat-lora"',
        )
    # A recipe may extend a built-in of its own name: skip itself when looking.
    parent = next(
        (
            p
            for d in search_dirs
            if (p := d / f"{parent_name}.toml").is_file() and p.resolve() != path
        ),
        None,
    )
    if parent is None and parent_name == path.stem:
        others = [n for n in available_recipes(search_dirs) if n != parent_name]
        raise DropError.one(
            f'`extends = "{parent_name}"` names this recipe itself',
            where,
            f"extend another recipe: {', '.join(others) or 'none'}",
        )
    if parent is None:
        known = available_recipes(search_dirs)
        close = difflib.get_close_matches(parent_name, known, n=1)
        hint = f'did you mean "{close[0]}"? ' if close else ""
        raise DropError.one(
            f'`extends = "{parent_name}"` names no recipe',
            where,
            f"{hint}known recipes: {', '.join(known) or 'none'} "
            f"(built-in in {BUILTIN_RECIPES}, your own in <inbox>/recipes/)",
        )
    base = _resolve(parent, search_dirs, [*chain, path], sources)
    base.pop("name", None)  # a name is the drop's own, never inherited
    _drop_replaced(base, data)
    _record_sources(data, path, (), sources)
    return _deep_merge(base, data)


def _drop_replaced(base: dict[str, Any], over: dict[str, Any]) -> None:
    """A recipe that sets ``epochs`` (or ``alpha``) replaces its parent's ``iters`` (or ``scale``)."""
    for table, a, b in EXCLUSIVE_KEYS:
        mine, theirs = over.get(table), base.get(table)
        if not (isinstance(mine, dict) and isinstance(theirs, dict)):
            continue
        for key, other in ((a, b), (b, a)):
            if key in mine and other not in mine:
                base[table] = {k: v for k, v in theirs.items() if k != other}


def _record_sources(
    data: dict[str, Any], path: Path, prefix: tuple[str, ...], sources: dict[tuple[str, ...], Path]
) -> None:
    """Remember which file set each key, so an error points at the file that holds it."""
    for key, value in data.items():
        sources[(*prefix, key)] = path
        if isinstance(value, dict):
            _record_sources(value, path, (*prefix, key), sources)


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "parameters":
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


_MODELS: dict[str, type[BaseModel]] = {
    "": Recipe,
    "data": DataSpec,
    "lora": LoraSpec,
    "train": TrainSpec,
    "schedule": ScheduleSpec,
    "memory": MemorySpec,
    "export": ExportSpec,
    "ollama": OllamaSpec,
    "diffusion": DiffusionSpec,
}


def _problem(err: Any, path: Path, sources: dict[tuple[str, ...], Path]) -> Problem:
    loc = [str(p) for p in err["loc"]]
    section, key = (loc[:-1], loc[-1]) if loc else ([], "")
    source = sources.get(tuple(loc), path)
    line = line_of(source, section, key)
    where = f"{source}, line {line}" if line else str(source)
    dotted = ".".join(loc)
    etype = err["type"]
    if etype == "extra_forbidden":
        model = _MODELS.get(".".join(section))
        valid = sorted(model.model_fields) if model else []
        if key in SYNONYMS and SYNONYMS[key] in valid:
            fix = f"this recipe calls it `{SYNONYMS[key]}` (mlx-lm's name)"
        else:
            close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
            fix = f"did you mean `{close[0]}`?" if close else f"valid keys here: {', '.join(valid)}"
        table = f"[{'.'.join(section)}]" if section else "the top level"
        return Problem(f"unknown key `{key}` in {table}", where, fix)
    if etype == "missing":
        return Problem(
            f"`{dotted}` is required",
            str(path),
            f"add `{key} = ...` to the recipe (or `extends` a recipe that sets it)",
        )
    value = err.get("input")
    msg = err["msg"].removeprefix("Value error, ")
    if etype == "value_error" and isinstance(value, dict) and loc:  # a rule across a table's keys
        line = line_of(source, loc, "")
        return Problem(
            f"[{dotted}]: {msg}",
            f"{source}, line {line}" if line else str(source),
            f"keep one of the two keys in [{dotted}] and delete the other",
        )
    shown = repr(value) if not isinstance(value, dict) else "a table"
    fix = _fix_hint(etype, dotted)
    if etype == "string_too_long":
        why = " (an Ollama model name holds at most 80 bytes)" if dotted == "name" else ""
        fix = f"shorten `{dotted}` to at most {err['ctx']['max_length']} characters{why}"
    return Problem(f"`{dotted}` = {shown} is not valid: {msg}", where, fix)


def _fix_hint(etype: str, dotted: str) -> str:
    if etype.startswith("int"):
        return f"give `{dotted}` a whole number without quotes"
    if etype.startswith("float"):
        return f"give `{dotted}` a number without quotes"
    if etype.startswith("bool"):
        return f"give `{dotted}` true or false, without quotes"
    if etype.startswith(("string", "str")):
        return f'give `{dotted}` a string in quotes, like "text"'
    if dotted == "schedule.window":
        return 'write it as "HH:MM-HH:MM" on a 24-hour clock, e.g. "22:00-07:00"'
    if etype == "literal_error":
        return "use one of the values listed"
    if etype.startswith(("greater", "less")):
        return f"choose a value for `{dotted}` inside the allowed range"
    if etype in ("model_type", "dict_type"):
        return f"`{dotted}` is a table: write it as [{dotted}] with keys under it"
    return f"see the recipe reference in the README for `{dotted}`"


def line_of(path: Path, section: list[str], key: str) -> int | None:
    """Line number of ``key`` inside ``[section]`` (tomllib keeps no positions)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    current: list[str] = []
    header = re.compile(r"^\s*\[+\s*([^\]]+?)\s*\]+\s*(#.*)?$")
    key_re = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=")
    dotted_re = re.compile(
        rf"^\s*{re.escape('.'.join([*section[len(current) :], key]))}\s*=" if section else r"(?!)"
    )
    for i, text in enumerate(lines, 1):
        if m := header.match(text):
            current = [p.strip().strip("\"'") for p in m[1].split(".")]
            continue
        if current == section and key_re.match(text):
            return i
        if not current and section and dotted_re.match(text):
            return i
    table = ".".join([*section, key] if key else section)  # the key may itself name a table
    for i, text in enumerate(lines, 1):
        if table and (m := header.match(text)) and m[1].strip() == table:
            return i
    return None
