"""Talk to a trained model: through Ollama when it answers, else llama.cpp on the GGUF itself.

``lorainbox chat NAME`` must work on a machine where Ollama is not installed or not running
yet (the GGUF waits in ``Done/`` for it), so the answer says which way it came.
"""

from __future__ import annotations

import contextlib
import difflib
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lorainbox.core.errors import DropError
from lorainbox.core.layout import GGUF, MODELFILE
from lorainbox.export.gguf import inspect_gguf, stop_tokens
from lorainbox.export.ollama import (
    OllamaClient,
    OllamaError,
    OllamaModelNotFound,
    OllamaUnavailable,
)

Via = Literal["ollama", "llama.cpp"]
TokenFn = Callable[[str], None]
DEFAULT_MAX_TOKENS = 256


@dataclass(frozen=True)
class ChatAnswer:
    text: str
    via: Via
    model: str
    """The Ollama model name, or the GGUF's path."""
    note: str | None = None
    """Why llama.cpp answered instead of Ollama, when it did."""


def find_gguf(name_or_path: str | Path, results: Iterable[Path] | None = None) -> Path | None:
    """The GGUF a chat target means: a ``.gguf`` path, a results folder, or a model's name.

    A name (``pirate-bot`` or ``pirate-bot:latest``) is looked up as a folder of that name in
    the results folders (default: the inbox's ``Done/``).
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    if path.is_dir() and (found := _gguf_in(path)):
        return found  # a folder without one (the drop a job was made from) is not the end
    base = str(name_or_path).split(":")[0].rsplit("/", 1)[-1].lower()
    for folder in _results_dirs(results):
        if not folder.is_dir():
            continue
        for child in sorted(folder.iterdir()):
            if child.is_dir() and child.name.lower() == base and (found := _gguf_in(child)):
                return found
    return None


def _looks_like_path(target: str) -> bool:
    """A GGUF or a results folder rather than a model name ("me/bot" is a name unless it exists)."""
    if target.endswith(".gguf") or target.startswith((".", "~", "/")):
        return True
    return ("/" in target or "\\" in target) and Path(target).exists()


def _gguf_in(folder: Path) -> Path | None:
    if (folder / GGUF).is_file():
        return folder / GGUF
    found = sorted(p for p in folder.glob("*.gguf") if not p.name.startswith("."))
    return found[0] if found else None


def _results_dirs(results: Iterable[Path] | None) -> list[Path]:
    if results is not None:
        return [Path(r) for r in results]
    from lorainbox.core.config import load_settings

    return [load_settings().inbox / "Done"]


def _modelfile_system(gguf: Path) -> str | None:
    """The SYSTEM prompt of the Modelfile written next to the GGUF, if there is one."""
    modelfile = gguf.with_name(MODELFILE)
    if not modelfile.is_file():
        return None
    m = re.search(r'^SYSTEM\s+"""(.*?)"""', modelfile.read_text(), re.DOTALL | re.MULTILINE)
    return m.group(1) if m else None


class _LlamaCpp:
    """A GGUF loaded in this process with llama-cpp-python, answering with its own template."""

    def __init__(self, gguf: Path, n_ctx: int = 2048):
        from llama_cpp import Llama

        info = inspect_gguf(gguf)
        self.path = gguf
        self.stop = stop_tokens(info)
        self.llm = Llama(
            model_path=str(gguf), n_ctx=min(n_ctx, info.context_length or n_ctx), verbose=False
        )

    def reply(
        self, messages: list[dict[str, str]], options: Mapping[str, Any], on_token: TokenFn | None
    ) -> str:
        kwargs: dict[str, Any] = {
            "max_tokens": int(options.get("num_predict", DEFAULT_MAX_TOKENS)),
            "stop": list(options.get("stop") or self.stop) or None,
        }
        for ours, theirs in (
            ("temperature", "temperature"),
            ("top_p", "top_p"),
            ("top_k", "top_k"),
        ):
            if ours in options:
                kwargs[theirs] = options[ours]
        if "seed" in options:
            kwargs["seed"] = int(options["seed"])
        if on_token is None:
            out = self.llm.create_chat_completion(messages, **kwargs)
            return out["choices"][0]["message"]["content"] or ""
        parts: list[str] = []
        for chunk in self.llm.create_chat_completion(messages, stream=True, **kwargs):
            piece = chunk["choices"][0]["delta"].get("content") or ""
            if piece:
                parts.append(piece)
                on_token(piece)
        return "".join(parts)


class ChatSession:
    """A conversation with one model that keeps its history and picks its way once.

    Ollama is asked first (unless the target is a GGUF path); when it is not running or does
    not know the model, the GGUF answers through llama.cpp for the rest of the session.
    """

    def __init__(
        self,
        target: str | Path,
        *,
        client: OllamaClient | None = None,
        host: str | None = None,
        gguf: Path | None = None,
        system: str | None = None,
        options: Mapping[str, Any] | None = None,
        results: Iterable[Path] | None = None,
    ):
        """``host`` is used when no ``client`` is given (else OLLAMA_HOST); ``gguf`` names the
        file llama.cpp should answer from when Ollama cannot, instead of looking for it."""
        self.target = str(target)
        self.options = dict(options or {})
        self.history: list[dict[str, str]] = []
        self._system = system
        self._results = list(results) if results is not None else None
        self._gguf_target = _looks_like_path(self.target)
        self._client = client
        self._host = host
        self._gguf = Path(gguf) if gguf is not None else None
        self._local: _LlamaCpp | None = None
        self._note: str | None = None
        self._ollama_up = False

    def ask(self, prompt: str, *, on_token: TokenFn | None = None) -> ChatAnswer:
        messages = [*self.history, {"role": "user", "content": prompt}]
        answer = None
        if self._local is None and not self._gguf_target:
            answer = self._ask_ollama(messages, on_token)
        if answer is None:
            answer = self._ask_local(messages, on_token)
        self.history += [messages[-1], {"role": "assistant", "content": answer.text}]
        return answer

    def _ask_ollama(
        self, messages: list[dict[str, str]], on_token: TokenFn | None
    ) -> ChatAnswer | None:
        client = self._client or OllamaClient(self._host)
        self._client = client
        sent = (
            [{"role": "system", "content": self._system}, *messages] if self._system else messages
        )
        try:
            text = client.chat(self.target, sent, self.options or None, on_token=on_token)
        except OllamaUnavailable as e:
            self._note = f"Ollama is not running at {e.base_url}"
            return None
        except OllamaModelNotFound:
            self._note = f"Ollama at {client.base_url} has no model {self.target}"
            self._ollama_up = True
            return None
        return ChatAnswer(text, "ollama", self.target)

    def _ask_local(self, messages: list[dict[str, str]], on_token: TokenFn | None) -> ChatAnswer:
        if self._local is None:
            gguf = self._gguf or find_gguf(self.target, self._results)
            if gguf is None or not gguf.is_file():
                raise self._nowhere()
            self._local = _LlamaCpp(gguf)
            if self._system is None:
                self._system = _modelfile_system(gguf)
        system = [{"role": "system", "content": self._system}] if self._system else []
        text = self._local.reply([*system, *messages], self.options, on_token)
        note = (
            f"{self._note}; answered by llama.cpp from {self._local.path}" if self._note else None
        )
        return ChatAnswer(text, "llama.cpp", str(self._local.path), note)

    def _nowhere(self) -> DropError:
        why = self._note or f"{self.target} is not a GGUF file"
        known = self._known_models()
        close = difflib.get_close_matches(self.target.split(":")[0], known, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        listing = f"models here: {', '.join(known[:12])}. " if known else ""
        if self._client is not None and self._ollama_up:
            act = f"register it (`lorainbox register model.gguf --name {self.target}`)"
        else:
            act = "start Ollama (`ollama serve`) and register the model"
        places = ", ".join(str(p) for p in _results_dirs(self._results))
        return DropError.one(
            f"cannot chat with {self.target}: {why}, and no GGUF for it was found",
            f"Ollama and the results folders ({places})",
            f"{hint}{listing}Or {act}, or pass the path of a .gguf file or of the model's "
            "results folder",
        )

    def _known_models(self) -> list[str]:
        """Names a person could have meant: Ollama's models, and results folders with a GGUF."""
        names: set[str] = set()
        if self._client is not None and self._ollama_up:
            with contextlib.suppress(OllamaError):
                names |= {m["name"].split(":")[0] for m in self._client.tags()}  # no versions
        for folder in _results_dirs(self._results):
            if folder.is_dir():
                names |= {c.name for c in folder.iterdir() if c.is_dir() and _gguf_in(c)}
        return sorted(names)


def chat_once(
    name_or_gguf: str | Path,
    prompt: str,
    *,
    client: OllamaClient | None = None,
    host: str | None = None,
    gguf: Path | None = None,
    system: str | None = None,
    options: Mapping[str, Any] | None = None,
    results: Iterable[Path] | None = None,
) -> ChatAnswer:
    """One question, one answer (Ollama first, else llama.cpp on the GGUF): a session of one."""
    return next(
        chat_session(
            name_or_gguf,
            [prompt],
            client=client,
            host=host,
            gguf=gguf,
            system=system,
            options=options,
            results=results,
        )
    )


def chat_session(
    name_or_gguf: str | Path,
    prompts: Iterable[str],
    *,
    client: OllamaClient | None = None,
    host: str | None = None,
    gguf: Path | None = None,
    system: str | None = None,
    options: Mapping[str, Any] | None = None,
    results: Iterable[Path] | None = None,
    on_token: TokenFn | None = None,
) -> Iterator[ChatAnswer]:
    """Answer each prompt in turn, keeping the conversation; the next prompt is read only after
    the previous answer was yielded, so ``prompts`` can be a generator reading the terminal."""
    session = ChatSession(
        name_or_gguf,
        client=client,
        host=host,
        gguf=gguf,
        system=system,
        options=options,
        results=results,
    )
    for prompt in prompts:
        yield session.ask(prompt, on_token=on_token)
