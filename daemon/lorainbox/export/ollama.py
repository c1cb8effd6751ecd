"""Ollama's HTTP API through httpx: upload a GGUF, create a model from it, check it is there.

Follows Ollama's published API (docs/api.md in ollama/ollama) and its server's behaviour
(server/routes.go, server/create.go); OLLAMA_HOST is read exactly as envconfig.Host() and
ConnectableHost() read it (envconfig/config.go), and names are checked with the rules of
types/model/name.go.

Two failures are told apart: ``OllamaUnavailable`` (nothing answered: refused, timed out, cut
off, or Ollama said it is too busy; the caller retries later) and ``OllamaError`` (Ollama
answered and refused; its own message is kept).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from lorainbox.core.errors import DropError
from lorainbox.core.layout import GGUF
from lorainbox.export import ollama_rules as rules
from lorainbox.export.ollama_rules import (
    ModelName,
    name_problems,
    parse_model_name,
    quantize_problems,
)
from lorainbox.export.templates import chat_format, default_system_prompt, ollama_template

DEFAULT_PORT = "11434"
CHUNK = 1 << 20
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
"""The one digest form worth sending: manifest/paths.go BlobsPath also takes ``sha256-`` and
upper case, but CreateBlobHandler compares with ``sha256:%x`` and answers a mismatch."""
FILES_CREATE_SINCE = (0, 5, 5)
"""/api/create with ``files`` (digests of uploaded blobs) exists since Ollama v0.5.5; v0.5.4
took a Modelfile text instead."""

UPLOADING = "uploading model data"
"""The status ``register_model`` reports while the GGUF goes up (Ollama's stream has none)."""

StatusFn = Callable[[dict[str, Any]], None]


class OllamaUnavailable(Exception):
    """Nothing (usable) answered at the Ollama address; worth retrying later."""

    def __init__(self, base_url: str, reason: object):
        self.base_url = base_url
        super().__init__(f"Ollama is not reachable at {base_url}: {reason}")


class OllamaError(Exception):
    """Ollama answered with an error; ``message`` is Ollama's own text."""

    def __init__(self, message: str, status: int | None = None):
        self.message = message
        self.status = status
        super().__init__(f"Ollama: {message}" + (f" (HTTP {status})" if status else ""))


class OllamaModelNotFound(OllamaError):
    pass


class OllamaTooOld(OllamaError):
    """The Ollama answering lacks an API this needs; ``message`` names the version to install."""


def parse_version(text: str) -> tuple[int, int, int] | None:
    """``0.32.15`` or ``0.33.0-rc2`` as (0, 33, 0); None for a source build (``0.0.0``, which
    Ollama reports when built without a version) or text that is no version."""
    m = re.match(r"v?(\d+)\.(\d+)\.(\d+)", text.strip())
    if m is None:
        return None
    version = (int(m[1]), int(m[2]), int(m[3]))
    return None if version == (0, 0, 0) else version


class InvalidOllamaSetting(DropError, ValueError):
    """A model name or quantization Ollama would refuse; caught as DropError or ValueError."""


def ollama_base_url(value: str | None = None) -> str:
    """The URL a client connects to for an OLLAMA_HOST value, the way Ollama's own CLI does.

    Scheme defaults to http; the port to 11434 with no scheme, 80 with ``http://`` and 443 with
    ``https://``; the host to 127.0.0.1; surrounding spaces and quotes are ignored; bind-all
    addresses (0.0.0.0, ::) become loopback. An empty host (``:1234``) means this machine, as in
    Go's dialer.
    """
    s = (value or "").strip().strip("\"'").strip()
    default_port = DEFAULT_PORT
    scheme, sep, hostport = s.partition("://")
    if not sep:
        scheme, hostport = "http", s
        if s == "ollama.com":
            scheme, hostport = "https", "ollama.com:443"
    elif scheme == "http":
        default_port = "80"
    elif scheme == "https":
        default_port = "443"
    hostport, _, path = hostport.partition("/")
    try:
        host, port = _split_host_port(hostport)
    except ValueError:
        host, port = "127.0.0.1", default_port
        bare = hostport.strip("[]")
        if _ip(bare) is not None:
            host = str(_ip(bare))
        elif hostport:
            host = hostport
    if not re.fullmatch(r"[+-]?\d+", port) or not 0 <= int(port) <= 65535:
        port = default_port
    ip = _ip(host)
    if ip is not None and ip.is_unspecified:
        host = "127.0.0.1" if ip.version == 4 else "::1"
    host = host or "127.0.0.1"
    netloc = f"[{host}]:{int(port)}" if ":" in host else f"{host}:{int(port)}"
    return f"{scheme}://{netloc}" + (f"/{path}" if path else "")


def _split_host_port(hostport: str) -> tuple[str, str]:
    """Go's net.SplitHostPort: ``host:port`` or ``[v6]:port``, else ValueError."""
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0 or hostport[end + 1 : end + 2] != ":":
            raise ValueError(hostport)
        host, port = hostport[1:end], hostport[end + 2 :]
    else:
        host, sep, port = hostport.rpartition(":")
        if not sep or ":" in host:
            raise ValueError(hostport)
    if "[" in port or "]" in port or "[" in host or "]" in host:
        raise ValueError(hostport)
    return host, port


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _is_loopback(host: str) -> bool:
    """Loopback never goes through a proxy (Go's ProxyFromEnvironment skips it too)."""
    ip = _ip(host)
    return host.lower() == "localhost" or (ip is not None and ip.is_loopback)


def validate_model_name(
    name: str, *, allow_tag: bool = True, where: str = "recipe.toml [ollama] model"
) -> ModelName:
    """Check a name against Ollama's rules; a DropError says which part is wrong and how to fix it."""
    problems = name_problems(name, where, allow_tag=allow_tag)
    if problems:
        raise InvalidOllamaSetting(problems)
    return parse_model_name(name)[0]


# --- the client --------------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    """``sha256:<hex>`` of a file, read in chunks (GGUFs are many GB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return f"sha256:{h.hexdigest()}"


def _file_chunks(f: BinaryIO, on_progress: Callable[[int], None] | None) -> Iterator[bytes]:
    sent = 0
    while chunk := f.read(CHUNK):
        sent += len(chunk)
        yield chunk
        if on_progress:
            on_progress(sent)


class OllamaClient:
    """A small synchronous client of Ollama's HTTP API."""

    def __init__(
        self,
        host: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ):
        self.base_url = ollama_base_url(host if host is not None else os.environ.get("OLLAMA_HOST"))
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            transport=transport,
            trust_env=not _is_loopback(httpx.URL(self.base_url).host),
        )

    def __enter__(self) -> OllamaClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def version(self) -> str:
        return str(self._request("GET", "/api/version").json().get("version", ""))

    def server_version(self) -> tuple[int, int, int] | None:
        """The version as numbers (server/routes.go GenerateRoutes: GET /api/version); None
        when it is a source build, taken to have every API."""
        return parse_version(self.version())

    def require_files_create(self) -> tuple[int, int, int] | None:
        """The server's version, or OllamaTooOld when it has no files-based /api/create."""
        version = self.server_version()
        if version is not None and version < FILES_CREATE_SINCE:
            need = ".".join(map(str, FILES_CREATE_SINCE))
            raise OllamaTooOld(
                f"Ollama {'.'.join(map(str, version))} at {self.base_url} is too old: "
                f"registering needs Ollama {need} or newer (its /api/create takes uploaded "
                "files); update Ollama (https://ollama.com/download) and register again"
            )
        return version

    def loaded(self) -> list[str]:
        """Names of the models Ollama holds in memory (server/routes.go PsHandler)."""
        return [
            str(m.get("name") or m.get("model"))
            for m in self._request("GET", "/api/ps").json().get("models") or []
        ]

    def unload(self, name: str) -> None:
        """Ask Ollama to free a model now: ``keep_alive: 0`` with no prompt answers
        ``done_reason: "unload"`` (server/routes.go GenerateHandler; sched.go expireRunner)."""
        self._request(
            "POST", "/api/generate", json={"model": name, "keep_alive": 0, "stream": False}
        )

    def has_blob(self, digest: str) -> bool:
        if not _DIGEST.fullmatch(digest):
            raise ValueError(f"not a sha256 digest: {digest!r}")  # HEAD answers carry no reason
        response = self._request("HEAD", f"/api/blobs/{digest}", ok=(200, 404))
        return response.status_code == 200

    def push_blob(
        self,
        path: Path,
        *,
        digest: str | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> str:
        """Upload a file as a blob unless Ollama has it already; return its digest.

        The body streams from the file in 1 MiB chunks, so a GGUF of any size is never held in
        memory.
        """
        path = Path(path)
        digest = digest or sha256_file(path)
        if not self.has_blob(digest):
            self._upload(path, digest, on_progress)
        return digest

    def _upload(self, path: Path, digest: str, on_progress: Callable[[int], None] | None) -> None:
        with open(path, "rb") as f:
            self._request(
                "POST",
                f"/api/blobs/{digest}",
                content=_file_chunks(f, on_progress),
                headers={
                    "Content-Length": str(path.stat().st_size),
                    "Content-Type": "application/octet-stream",
                },
                timeout=httpx.Timeout(600.0, connect=5.0),
            )

    def create(
        self,
        name: str,
        files: Mapping[str, str] | None = None,
        *,
        from_model: str | None = None,
        template: str | None = None,
        system: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        quantize: str | None = None,
        on_status: StatusFn | None = None,
    ) -> list[str]:
        """POST /api/create, streaming Ollama's status lines to ``on_status``; returns them."""
        body: dict[str, Any] = {"model": name, "stream": True}
        optional = {
            "files": dict(files) if files else None,
            "from": from_model,
            "template": template,
            "system": system,
            "parameters": dict(parameters) if parameters else None,
            "quantize": quantize,
        }
        body.update({k: v for k, v in optional.items() if v})
        statuses: list[str] = []
        for line in self._stream("/api/create", body, read_timeout=1800.0):
            statuses.append(str(line.get("status", "")))
            if on_status:
                on_status(line)
        if not statuses or statuses[-1] != "success":
            raise OllamaError(f"creating {name} ended without success (last: {statuses[-1:]})")
        return statuses

    def show(self, name: str) -> dict[str, Any]:
        return self._request("POST", "/api/show", json={"model": name}).json()

    def tags(self) -> list[dict[str, Any]]:
        return list(self._request("GET", "/api/tags").json().get("models") or [])

    def delete(self, name: str) -> None:
        self._request("DELETE", "/api/delete", json={"model": name})

    def ask(
        self, name: str, messages: list[dict[str, str]], options: Mapping[str, Any] | None = None
    ) -> str:
        """One reply, not streamed: an error (a bad stored option is HTTP 500 at load) is the
        response's status, never a line in a 200 stream."""
        body: dict[str, Any] = {"model": name, "messages": messages, "stream": False}
        if options:
            body["options"] = dict(options)
        timeout = httpx.Timeout(30.0, connect=5.0, read=600.0)
        answer = self._request("POST", "/api/chat", json=body, timeout=timeout).json()
        if answer.get("error"):
            raise OllamaError(str(answer["error"]))
        return str((answer.get("message") or {}).get("content") or "")

    def chat(
        self,
        name: str,
        messages: list[dict[str, str]],
        options: Mapping[str, Any] | None = None,
        *,
        on_token: Callable[[str], None] | None = None,
    ) -> str:
        """One assistant reply; streamed so a slow model never trips the read timeout."""
        body: dict[str, Any] = {"model": name, "messages": messages, "stream": True}
        if options:
            body["options"] = dict(options)
        parts: list[str] = []
        for line in self._stream("/api/chat", body, read_timeout=600.0):
            piece = (line.get("message") or {}).get("content") or ""
            if piece:
                parts.append(piece)
                if on_token:
                    on_token(piece)
        return "".join(parts)

    @contextmanager
    def _reaching(self) -> Iterator[None]:
        try:
            yield
        except httpx.UnsupportedProtocol as e:
            raise OllamaError(f"cannot use the address {self.base_url}: {e}") from e
        except httpx.TransportError as e:
            raise OllamaUnavailable(
                self.base_url, f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            ) from e

    def _request(
        self, method: str, path: str, *, ok: tuple[int, ...] = (), **kwargs: Any
    ) -> httpx.Response:
        with self._reaching():
            response = self._http.request(method, path, **kwargs)
        if response.status_code >= 400 and response.status_code not in ok:
            self._raise_for(response)
        return response

    def _stream(
        self, path: str, body: dict[str, Any], *, read_timeout: float
    ) -> Iterator[dict[str, Any]]:
        timeout = httpx.Timeout(30.0, connect=5.0, read=read_timeout)
        with self._reaching(), self._http.stream("POST", path, json=body, timeout=timeout) as r:
            if r.status_code >= 400:
                r.read()
                self._raise_for(r)
            for raw in r.iter_lines():
                if not raw.strip():
                    continue
                line = json.loads(raw)
                if "error" in line:  # after the first line, errors come in the 200 stream
                    raise OllamaError(str(line["error"]), line.get("status") or r.status_code)
                yield line

    def _raise_for(self, response: httpx.Response) -> None:
        status = response.status_code
        try:
            message = str(response.json().get("error") or response.text)
        except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
            message = response.text or response.reason_phrase
        if status in (502, 503, 504):
            raise OllamaUnavailable(self.base_url, f"HTTP {status}: {message}")
        if status == 404:
            raise OllamaModelNotFound(message, status)
        raise OllamaError(message, status)


# --- register ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RegisterResult:
    latest: str
    """``NAME:latest``, the tag a person runs."""
    version: str
    """``NAME:YYYYMMDD-HHMMSS``, kept when later versions arrive."""
    digest: str
    uploaded: bool
    """False when Ollama already held the GGUF and the upload was skipped."""
    quantization: str
    template: str | None
    """The Go template sent, or None when Ollama's own detection was left to it."""
    notes: list[str] = field(default_factory=list)

    @property
    def run_command(self) -> str:
        return f"ollama run {self.latest.removesuffix(':latest')}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def register_model(
    client: OllamaClient,
    gguf: Path,
    name: str,
    *,
    system: str | None = None,
    parameters: Mapping[str, Any] | None = None,
    template: str | None = None,
    quantize: str | None = "q4_K_M",
    stamp: datetime | None = None,
    on_status: StatusFn | None = None,
) -> RegisterResult:
    """Upload a GGUF once, create ``NAME:<stamp>`` and ``NAME:latest`` from it, and check both.

    Earlier versions stay in Ollama under their own time tags. The server's version is read
    first: one without files-based create (< 0.5.5) is OllamaTooOld, and quantization is asked
    only where that version can do it (an already quantized GGUF is kept as it is; F32, and
    BF16 before 0.22.0, are InvalidOllamaSetting). Without ``system``, the chat template's
    default system prompt is sent, the one training used. Stop tokens come from the GGUF
    unless ``parameters`` sets ``stop``. ``on_status`` hears upload progress and then
    Ollama's own status lines. A caller retrying after ``OllamaUnavailable`` should pass the
    same ``stamp`` so the retry makes the same version tag.
    """
    validate_model_name(name, allow_tag=False)
    from lorainbox.export.gguf import inspect_gguf, stop_tokens  # numpy + gguf: only when needed

    info = inspect_gguf(gguf)
    notes: list[str] = []
    wanted = quantize_type(quantize)
    version = client.require_files_create()
    wanted = _quantize_asked(info.file_type, wanted, version, notes)
    if system is None and (system := default_system_prompt(info.chat_template)):
        notes.append("sent the chat template's default system prompt, which training used")

    params: dict[str, Any] = {}
    if stops := stop_tokens(info):
        params["stop"] = stops
    params.update(parameters or {})
    go_template = template if template is not None else ollama_template(info.chat_template)
    if template is None and go_template:
        notes.append(
            f"sent a {chat_format(info.chat_template)} template for the GGUF's chat format"
        )
    elif template is None:
        notes.append("left the prompt template to Ollama's detection from the GGUF")

    stamp = stamp or datetime.now()
    version = f"{name}:{stamp:%Y%m%d-%H%M%S}"
    latest = f"{name}:latest"
    digest = sha256_file(info.path)
    uploaded = not client.has_blob(digest)
    if uploaded:
        total = info.size_bytes

        def progress(sent: int) -> None:
            if on_status:
                on_status(
                    {"status": UPLOADING, "digest": digest, "total": total, "completed": sent}
                )

        client._upload(info.path, digest, progress)
    else:
        notes.append(f"Ollama already had this GGUF ({digest[:19]}…); upload skipped")

    client.create(
        version,
        files={info.path.name if info.path.suffix == ".gguf" else GGUF: digest},
        template=go_template,
        system=system,
        parameters=params,
        quantize=wanted,
        on_status=on_status,
    )
    client.create(latest, from_model=version, on_status=on_status)

    shown = client.show(version)
    client.show(latest)
    listed = {str(m.get("name", "")).lower() for m in client.tags()}
    expected = [parse_model_name(n)[0].shortest for n in (version, latest)]
    missing = [n for n in expected if n.lower() not in listed]
    if missing:
        raise OllamaError(f"created {', '.join(missing)} but /api/tags does not list it")
    return RegisterResult(
        latest=latest,
        version=version,
        digest=digest,
        uploaded=uploaded,
        quantization=str((shown.get("details") or {}).get("quantization_level", info.file_type)),
        template=go_template,
        notes=notes,
    )


def _quantize_asked(
    source: str, wanted: str | None, version: tuple[int, int, int] | None, notes: list[str]
) -> str | None:
    """The quantize to send: None where there is nothing to do or the GGUF is already
    quantized (kept, with a note); InvalidOllamaSetting where this Ollama would refuse."""
    if wanted is None or source == wanted and source != "F32":
        return None
    if source not in ("F16", "BF16", "F32"):
        notes.append(
            f"kept {source}: the GGUF is already quantized, and Ollama only quantizes "
            "F16, BF16 and F32 models"
        )
        return None
    if why := rules.quantize_source_problem(source, wanted, version):
        raise InvalidOllamaSetting.one(
            why,
            "recipe.toml [export] quantize",
            f'set quantize = "none" to keep the {source} GGUF'
            + (", or update Ollama to 0.22.0 or newer" if source == "BF16" else "")
            + (', or outtype = "f16"' if source == "F32" else ""),
        )
    return wanted


def quantize_type(quantize: str | None, where: str = "recipe.toml [export] quantize") -> str | None:
    """Ollama's spelling of a quantize setting; InvalidOllamaSetting for one it does not know."""
    if problems := quantize_problems(quantize, where):
        raise InvalidOllamaSetting(problems)
    return rules.quantize_type(quantize)
