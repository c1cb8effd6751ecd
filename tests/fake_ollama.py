"""A fake Ollama server for tests: real HTTP on 127.0.0.1, models on disk, chat through llama.cpp.

Use it in-process (``with FakeOllama(dir) as ollama: ... ollama.url``; ``stop()`` then
``start()`` brings it back on the same port) or as a process
(``python tests/fake_ollama.py --port N --dir D``). It never imports the client under test, so a
client that drifts from Ollama's real API fails against it.

Behaviours matched, with where Ollama defines them (github.com/ollama/ollama):

- Routes and methods: ``server/routes.go`` (``GenerateRoutes``): GET/HEAD /api/version,
  HEAD and POST /api/blobs/:digest, POST /api/create, GET /api/tags, POST /api/show,
  DELETE /api/delete, POST /api/chat, POST /api/generate (load and unload only), GET /api/ps.
- Version: ``{"version": ...}`` as ``version.Version`` (0.32.15 unless told another); rules that
  changed between releases follow the version played (BF16 quantizing from v0.22.0, the status
  inside in-stream errors before v0.12.6).
- Blobs (``HeadBlobHandler``, ``CreateBlobHandler`` in server/routes.go; ``BlobsPath`` in
  manifest/paths.go): digests must match ``^sha256[:-][0-9a-fA-F]{64}$`` else 400
  ``invalid digest format``; HEAD answers 200 or 404; POST of a blob that exists answers 200
  without reading the body; otherwise the body is hashed while it is stored and a mismatch is
  400 ``digest mismatch, expected "...", got "..."``; success is 201.
- Create (``CreateHandler``, ``ggufLayers``, ``createModel``, ``setTemplate``,
  ``setParameters`` in server/create.go; ``detectChatTemplate`` in server/model.go): invalid
  name (types/model/name.go ``isValidPart``/``isValidLen``: parts of at most 80 bytes, no
  spaces or ``!``) -> 400 ``invalid model name``; neither ``from`` nor ``files`` -> 400
  ``neither 'from' or 'files' was specified``; ``from`` copies the source model's layers;
  ``files`` streams ``parsing GGUF``, then in-stream errors (HTTP 200, ``{"error": ...}`` line,
  as ``streamResponse`` does once a line was written; a real status before any line, and with
  ``"stream": false`` as ``waitForStream`` answers) for a missing blob, a non-GGUF file
  (``supplied file was not in GGUF format``) or a damaged one; quantize is upper-cased, checked
  like ``ggml.ParseFileType`` (fs/ggml/type.go) and refused for already quantized files and for
  F32 ones, whose ``general.file_type`` 0 ``KV.FileType`` (fs/ggml/ggml.go) reads as "unknown"
  (``quantization is only supported for F16, BF16 and F32 models``); a TEMPLATE is parsed
  (``setTemplate``; template/template.go ``Parse``) and unclosed actions, a missing or stray
  ``{{ end }}`` and unknown functions refused with Go's words; parameters are stored unchecked
  (``setParameters``); a ChatML chat template is
  auto-detected as Ollama would (``using autodetected template chatml``, with its stop
  parameters); status lines end with ``writing manifest`` and ``success``.
- Tags/show/delete (``ListHandler``, ``ShowHandler``/``GetModelInfo``, ``DeleteHandler``;
  api/types.go ``ListModelResponse``, ``ShowResponse``, ``ModelDetails``): shortest names
  (``Name.DisplayShortest``, types/model/name.go), ``details`` with family, parameter_size
  (format/format.go ``HumanNumber``) and quantization_level, ``model_info`` without
  ``general.name`` / ``tokenizer.chat_template`` and with long arrays emptied, a generated
  ``modelfile``, ``parameters`` as ``%-30s %#v`` lines; unknown models -> 404
  ``model 'NAME' not found``; deleting removes blobs no model uses any more.
- Chat (``ChatHandler``; api/types.go ``ChatResponse``): streams ``message.content`` pieces
  then a ``done`` line (or one object with ``"stream": false``); the model's SYSTEM is
  prepended when the request has no system message; model parameters, then request options,
  each typed by ``Options.FromMap`` (api/types.go) when the model loads, a wrong type being
  HTTP 500 ``option "stop" must be of type array`` (routes.go ``scheduleRunner``,
  ``handleScheduleError``); unknown models -> 404 ``model 'NAME' not found``.
- Memory (``PsHandler``; ``GenerateHandler``/``ChatHandler`` with ``keep_alive: 0`` and no
  prompt, sched.go ``expireRunner``): a chat loads its model, /api/ps lists what is loaded, an
  empty generate or chat with ``keep_alive: 0`` unloads it (``done_reason: "unload"``).

Not matched: the fake cannot quantize (no llama-quantize here): it records the requested level,
reports it in /api/tags and /api/show, and keeps serving the original file. It does not run
Go templates: chat is rendered with the GGUF's own Jinja chat template by llama-cpp-python, so a
TEMPLATE is only parsed, never executed (an unknown field fails no chat here). Template detection knows ChatML only.
``from`` a model that is not here fails as a pull from a registry it cannot reach would.
Only GGUF ``files`` are taken (Ollama also converts safetensors folders; here that is
``unknown type``), and adapters, messages, license, renderers and /api/generate are left out.
GET /_fake/stats is the fake's own (upload counts for tests).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import re
import socket
import sys
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

DIGEST = re.compile(r"^sha256[:-][0-9a-fA-F]{64}$")
NAME_PART = {
    "host": re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}$"),
    "namespace": re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,79}$"),
    "model": re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}$"),
    "tag": re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}$"),
}
QUANT_TYPES = ("F32", "F16", "Q4_K_S", "Q4_K_M", "Q8_0", "BF16")
UNQUANTIZED = ("F16", "BF16", "F32")
CHATML_GO = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
    "{{ end }}<|im_start|>assistant\n"
)
FAKE_VERSION = "0.32.15-fake"
"""The release whose rules the fake follows; ``FakeOllama(version=...)`` plays an older one."""
FROM_MAP_TYPES = {
    **dict.fromkeys(
        [
            "num_keep",
            "seed",
            "num_predict",
            "top_k",
            "repeat_last_n",
            "num_ctx",
            "num_batch",
            "num_gpu",
            "main_gpu",
            "num_thread",
            "draft_num_predict",
        ],
        "integer",
    ),
    **dict.fromkeys(
        [
            "top_p",
            "min_p",
            "typical_p",
            "temperature",
            "repeat_penalty",
            "presence_penalty",
            "frequency_penalty",
        ],
        "float32",
    ),
    "use_mmap": "boolean",
    "stop": "array",
}
"""api/types.go Options and Runner fields, by the type Options.FromMap demands."""
GO_FUNCS = set(
    [
        "and",
        "call",
        "html",
        "index",
        "slice",
        "js",
        "len",
        "not",
        "or",
        "print",
        "printf",
        "println",
        "urlquery",
        "eq",
        "ge",
        "gt",
        "le",
        "lt",
        "ne",
        "json",
        "currentDate",
        "yesterdayDate",
        "toTypeScriptType",
    ]
)
"""text/template's built-ins plus the funcs template/template.go adds."""
READ_CHUNK = 1 << 20


class FakeError(Exception):
    def __init__(self, status: int, message: str):
        self.status, self.message = status, message
        super().__init__(message)


def parse_name(name: str) -> dict[str, str] | None:
    """types/model/name.go ParseName + IsValid; None when invalid."""
    parts = {"host": "", "namespace": "", "model": "", "tag": ""}
    s = name
    if s.rfind(":") > s.rfind("/"):
        s, _, parts["tag"] = s.rpartition(":")
        if not s or not parts["tag"]:
            return None
    if "/" in s:
        s, _, parts["model"] = s.rpartition("/")
        if "/" in s:
            s, _, parts["namespace"] = s.rpartition("/")
            parts["host"] = s.split("://", 1)[-1]
        else:
            parts["namespace"] = s
    else:
        parts["model"] = s
    parts["host"] = parts["host"] or "registry.ollama.ai"
    parts["namespace"] = parts["namespace"] or "library"
    parts["tag"] = parts["tag"] or "latest"
    if not all(NAME_PART[k].match(v) for k, v in parts.items()):
        return None
    return parts


def go_template_error(text: str) -> str | None:
    """The parse error Go's text/template gives (template/template.go Parse), for the four
    mistakes people make: unclosed action, unexpected EOF, stray {{end}}, unknown function."""
    opened: list[str] = []
    pos = 0
    while (start := text.find("{{", pos)) >= 0:
        line = text.count("\n", 0, start) + 1
        end = text.find("}}", start)
        if end < 0:
            return f":{line}: unclosed action"
        action = re.sub(r'"(\\.|[^"\\])*"|`[^`]*`', '""', text[start + 2 : end]).strip("- ")
        pos = end + 2
        if action.startswith("/*"):
            continue
        words = re.findall(r"(?<![.$\w])[A-Za-z_]\w*", action)
        keyword = words[0] if words and action.startswith(words[0]) else ""
        if keyword in ("if", "range", "with", "define", "block"):
            opened.append(keyword)
        elif keyword == "end":
            if not opened:
                return f":{line}: unexpected {{{{end}}}}"
            opened.pop()
        keywords = {
            "if",
            "else",
            "end",
            "range",
            "with",
            "define",
            "template",
            "block",
            "break",
            "continue",
            "nil",
            "true",
            "false",
        }
        for word in words:
            if word not in keywords and word not in GO_FUNCS:
                return f':{line}: function "{word}" not defined'
    if opened:
        return f":{text.count(chr(10)) + 1}: unexpected EOF"
    return None


def from_map_error(options: dict[str, Any]) -> str | None:
    """api/types.go Options.FromMap: unknown keys are only logged; a value of the wrong JSON
    type is an error, in these words."""
    for key, value in options.items():
        kind = FROM_MAP_TYPES.get(key)
        if kind is None or value is None:
            continue
        if kind == "array":
            if not isinstance(value, list):
                return 'option "stop" must be of type array'
            if not all(isinstance(v, str) for v in value):
                return 'option "stop" must be of an array of strings'
        elif kind == "boolean":
            if not isinstance(value, bool):
                return f'option "{key}" must be of type boolean'
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            return f'option "{key}" must be of type {kind}'
    return None


def shortest(parts: dict[str, str]) -> str:
    if parts["host"].lower() != "registry.ollama.ai":
        return f"{parts['host']}/{parts['namespace']}/{parts['model']}:{parts['tag']}"
    if parts["namespace"].lower() != "library":
        return f"{parts['namespace']}/{parts['model']}:{parts['tag']}"
    return f"{parts['model']}:{parts['tag']}"


def human_number(n: int) -> str:
    for size, suffix, fmt in ((10**9, "B", "{:.1f}"), (10**6, "M", "{:.2f}")):
        if n >= size:
            v = n / size
            return f"{v:.0f}{suffix}" if v == int(v) else fmt.format(v) + suffix
    return f"{n / 1000:.0f}K" if n >= 1000 else str(n)


def read_gguf(path: Path) -> dict[str, Any]:
    """What create and show need from a GGUF, or FakeError with Ollama-like text."""
    import gguf

    with open(path, "rb") as f:
        magic = f.read(4)
    if magic not in (b"GGUF", b"FUGG"):
        raise FakeError(400, "supplied file was not in GGUF format")
    size = path.stat().st_size
    try:
        reader = gguf.GGUFReader(path)
    except Exception as e:
        raise FakeError(500, f"failed to read GGUF: {e}") from e
    for t in reader.tensors:
        end = t.data_offset + t.n_bytes
        if end > size:
            raise FakeError(
                500, f"tensor {t.name!r} offset+size ({end}) exceeds file size ({size})"
            )
    kv: dict[str, Any] = {}
    for key, fld in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        value = fld.contents()
        kv[key] = value
    if "general.architecture" not in kv:
        raise FakeError(500, "architecture not set")
    # fs/ggml/ggml.go KV.FileType: 0 (an F32 GGUF) or no key at all reads as "unknown".
    ftype_id = int(kv.get("general.file_type") or 0)
    ftype = (
        re.sub(r"^(MOSTLY|ALL)_", "", gguf.LlamaFileType(ftype_id).name) if ftype_id else "unknown"
    )
    params = sum(int(t.n_elements) for t in reader.tensors)
    return {"kv": kv, "file_type": ftype, "parameter_count": params}


class FakeOllama:
    """The fake server; see the module docstring for what it follows."""

    def __init__(
        self,
        models_dir: Path,
        port: int = 0,
        host: str = "127.0.0.1",
        version: str = FAKE_VERSION,
    ):
        self.dir = Path(models_dir)
        self.version = version
        self.loaded: dict[str, str] = {}
        """Models "in memory" (name -> expires_at), as /api/ps lists them."""
        (self.dir / "blobs").mkdir(parents=True, exist_ok=True)
        (self.dir / "manifests").mkdir(parents=True, exist_ok=True)
        self.host, self.port = host, port
        self.stats: dict[str, int] = {
            "blob_uploads": 0,
            "blob_bytes": 0,
            "max_body_read": 0,
            "creates": 0,
            "chats": 0,
        }
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.RLock()
        self._llama_lock = threading.Lock()
        self._llamas: dict[str, Any] = {}

    def at_least(self, *version: int) -> bool:
        m = re.match(r"(\d+)\.(\d+)\.(\d+)", self.version)
        return m is None or tuple(map(int, m.groups())) >= version

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> FakeOllama:
        fake = self

        class Handler(_Handler):
            server_state = fake

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        server = self._server
        self._thread = threading.Thread(
            target=lambda: server.serve_forever(poll_interval=0.05), daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut open connections, as a stopped Ollama would."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            for conn in list(self._conns):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            self._conns.clear()
        self._server = None

    def __enter__(self) -> FakeOllama:
        return self.start() if self._server is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- storage ---------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        return self.dir / "blobs" / digest.replace(":", "-")

    def manifest_path(self, parts: dict[str, str]) -> Path:
        key = "/".join(parts[k].lower() for k in ("host", "namespace", "model", "tag"))
        return self.dir / "manifests" / (key.replace("/", "__") + ".json")

    def load(self, name: str) -> dict[str, Any] | None:
        parts = parse_name(name)
        if parts is None:
            return None
        path = self.manifest_path(parts)
        return json.loads(path.read_text()) if path.is_file() else None

    def models(self) -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in sorted((self.dir / "manifests").glob("*.json"))]

    def names(self) -> set[str]:
        """The models held, as /api/tags names them."""
        return {m["name"] for m in self.models()}

    def save(self, parts: dict[str, str], manifest: dict[str, Any]) -> None:
        path = self.manifest_path(parts)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(manifest))
        tmp.replace(path)

    def llama(self, digest: str, n_ctx: int) -> Any:
        from llama_cpp import Llama

        if digest not in self._llamas:
            self._llamas[digest] = Llama(
                model_path=str(self.blob_path(digest)), n_ctx=n_ctx, verbose=False, seed=0
            )
        return self._llamas[digest]


class _Handler(BaseHTTPRequestHandler):
    server_state: FakeOllama
    protocol_version = "HTTP/1.1"
    streaming = False
    quiet = False
    """``stream: false``: lines are kept, not sent (server/routes.go waitForStream)."""
    last_line: dict[str, Any] | None = None

    def setup(self) -> None:
        super().setup()
        with self.server_state._lock:
            self.server_state._conns.add(self.connection)

    def finish(self) -> None:
        with self.server_state._lock:
            self.server_state._conns.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # --- plumbing --------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._route("GET")

    def do_HEAD(self) -> None:
        self._route("HEAD")

    def do_POST(self) -> None:
        self._route("POST")

    def do_DELETE(self) -> None:
        self._route("DELETE")

    def _route(self, method: str) -> None:
        self.streaming, self.quiet, self.last_line = False, False, None  # one per request
        path = self.path.split("?", 1)[0]
        routes = {
            ("GET", "/api/version"): self.version,
            ("HEAD", "/api/version"): self.version,
            ("GET", "/api/tags"): self.tags,
            ("HEAD", "/api/tags"): self.tags,
            ("POST", "/api/show"): self.show,
            ("DELETE", "/api/delete"): self.delete,
            ("POST", "/api/create"): self.create,
            ("POST", "/api/chat"): self.chat,
            ("POST", "/api/generate"): self.generate,
            ("GET", "/api/ps"): self.ps,
            ("GET", "/_fake/stats"): self.fake_stats,
        }
        try:
            if path.startswith("/api/blobs/") and method in ("HEAD", "POST"):
                digest = path.removeprefix("/api/blobs/")
                (self.head_blob if method == "HEAD" else self.post_blob)(digest)
            elif (method, path) in routes:
                routes[(method, path)]()
            else:
                self._drain()
                self.send_json(404, {"error": "404 page not found"})
        except FakeError as e:
            self.send_json(e.status, {"error": e.message})
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _body_chunks(self):
        """The request body in pieces, Content-Length or chunked, never read whole."""
        state = self.server_state
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return
                left = size
                while left:
                    piece = self.rfile.read(min(left, READ_CHUNK))
                    if not piece:
                        return
                    left -= len(piece)
                    state.stats["max_body_read"] = max(state.stats["max_body_read"], len(piece))
                    yield piece
                self.rfile.readline()
        else:
            left = int(self.headers.get("Content-Length") or 0)
            while left:
                piece = self.rfile.read(min(left, READ_CHUNK))
                if not piece:
                    return
                left -= len(piece)
                state.stats["max_body_read"] = max(state.stats["max_body_read"], len(piece))
                yield piece

    def _drain(self) -> None:
        for _ in self._body_chunks():
            pass

    def _skip_body(self) -> None:
        """Answer without reading a big body, as Go's server does: drain a small one, else hang up."""
        if int(self.headers.get("Content-Length") or 0) <= 256 << 10:
            self._drain()
        else:
            self.close_connection = True

    def read_json(self) -> dict[str, Any]:
        raw = b"".join(self._body_chunks())
        if not raw.strip():
            raise FakeError(400, "missing request body")
        try:
            body = json.loads(raw)
        except json.JSONDecodeError as e:
            raise FakeError(400, str(e)) from e
        if not isinstance(body, dict):
            raise FakeError(400, "json: cannot unmarshal into Go value of type api.Request")
        return body

    def send_json(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def start_stream(self) -> None:
        self.streaming = True
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def send_line(self, obj: Any) -> None:
        """One NDJSON line; the 200 stream starts with the first (server/routes.go
        streamResponse writes headers only once a line exists)."""
        if not self.streaming:
            self.start_stream()
        data = json.dumps(obj).encode() + b"\n"
        self.wfile.write(f"{len(data):X}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    # --- endpoints -------------------------------------------------------------------------

    def version(self) -> None:
        self.send_json(200, {"version": self.server_state.version})

    def fake_stats(self) -> None:
        self.send_json(200, self.server_state.stats)

    def head_blob(self, digest: str) -> None:
        if not DIGEST.match(digest):
            raise FakeError(400, "invalid digest format")
        if not self.server_state.blob_path(digest).is_file():
            raise FakeError(404, f'blob "{digest}" not found')
        self.send_json(200, {})

    def post_blob(self, digest: str) -> None:
        state = self.server_state
        if not DIGEST.match(digest):
            self._skip_body()
            raise FakeError(400, "invalid digest format")
        target = state.blob_path(digest)
        if target.is_file():
            self._skip_body()
            self.send_json(200, {})
            return
        state.stats["blob_uploads"] += 1
        h = hashlib.sha256()
        tmp = target.with_name(f"{target.name}-partial-{threading.get_ident()}")
        with open(tmp, "wb") as f:
            for piece in self._body_chunks():
                h.update(piece)
                f.write(piece)
                state.stats["blob_bytes"] += len(piece)
        got = f"sha256:{h.hexdigest()}"
        if got != digest.replace("-", ":", 1):
            tmp.unlink()
            raise FakeError(400, f'digest mismatch, expected "{digest}", got "{got}"')
        tmp.replace(target)
        self.send_json(201, {})

    def create(self) -> None:
        state = self.server_state
        body = self.read_json()
        for fname, digest in (body.get("files") or {}).items():
            if fname.startswith("/") or ".." in fname.split("/") or not fname:
                raise FakeError(400, "file path must be relative")
            if not digest:
                raise FakeError(400, "invalid digest format")
        name = body.get("model") or body.get("name") or ""
        parts = parse_name(name)
        if parts is None:
            raise FakeError(400, "invalid model name")
        if not body.get("from") and body.get("files") is None:
            raise FakeError(400, "neither 'from' or 'files' was specified")
        state.stats["creates"] += 1
        self.quiet = body.get("stream") is False
        try:
            manifest = self._build(body, parts)
            state.save(parts, manifest)
            self.emit({"status": "success"})
        except FakeError as e:
            # Once a line went out the error is a line of the 200 stream; before, and with
            # stream false, a real status (routes.go streamResponse / waitForStream).
            if not self.streaming:
                raise
            line = {"error": e.message}
            if not state.at_least(0, 12, 6):  # older servers put the status in the line
                line["status"] = e.status
            self.send_line(line)
        if self.streaming:
            self.end_stream()
        else:
            self.send_json(200, self.last_line)

    def emit(self, line: dict[str, Any]) -> None:
        """A progress line: streamed, or with ``stream: false`` only the last one kept."""
        if self.quiet:
            self.last_line = line
        else:
            self.send_line(line)

    def _build(self, body: dict[str, Any], parts: dict[str, str]) -> dict[str, Any]:
        state = self.server_state
        if body.get("from"):
            source = state.load(body["from"])
            if source is None:
                self.emit({"status": "pulling manifest"})
                raise FakeError(500, "pull model manifest: file does not exist")
            manifest = dict(source, parent=body["from"])
            manifest["params"] = dict(source.get("params") or {})
        else:
            manifest = self._from_files(body["files"])
        quantize = str(body.get("quantize") or body.get("quantization") or "").upper()
        if quantize:
            self._quantize(manifest, quantize)
        layers = [manifest["model"]]
        if body.get("template"):
            template = body["template"]
            if problem := go_template_error(template):  # create.go setTemplate, errBadTemplate
                raise FakeError(400, f"template error: template: {problem}")
            manifest["template"] = template
            layers.append(_layer("template", template))
        if body.get("system"):
            manifest["system"] = body["system"]
            layers.append(_layer("system", body["system"]))
        params = dict(manifest.get("params") or {})
        params.update(body.get("parameters") or {})
        if params:
            manifest["params"] = params
            layers.append(_layer("params", json.dumps(params)))
        for digest in layers:
            self.emit({"status": f"using existing layer {digest}"})
        self.emit({"status": "writing manifest"})
        manifest["name"] = shortest(parts)
        manifest["modified_at"] = datetime.now(timezone.utc).astimezone().isoformat()
        return manifest

    def _from_files(self, files: dict[str, str]) -> dict[str, Any]:
        state = self.server_state
        ggufs = [(n, d) for n, d in sorted(files.items()) if n.endswith(".gguf")]
        if not ggufs:
            raise FakeError(400, "unknown type")
        fname, digest = ggufs[0]
        self.emit({"status": "parsing GGUF"})
        if not DIGEST.match(digest):
            raise FakeError(400, "invalid digest format")
        path = state.blob_path(digest)
        if not path.is_file():
            raise FakeError(500, f"open {path}: no such file or directory")
        meta = read_gguf(path)
        kv = meta["kv"]
        manifest: dict[str, Any] = {
            "model": digest.replace("-", ":", 1),
            "file": fname,
            "family": kv["general.architecture"],
            "file_type": meta["file_type"],
            "quantization_level": meta["file_type"],
            "parameter_count": meta["parameter_count"],
            "params": {},
        }
        chat_template = kv.get("tokenizer.chat_template") or ""
        if "<|im_start|>" in chat_template:
            self.emit({"status": "using autodetected template chatml"})
            manifest["template"] = CHATML_GO
            manifest["params"] = {"stop": ["<|im_start|>", "<|im_end|>"]}
        return manifest

    def _quantize(self, manifest: dict[str, Any], quantize: str) -> None:
        want = "Q4_K_M" if quantize == "Q4_K" else quantize
        if want not in QUANT_TYPES:
            supported = "F32, F16, Q4_K_S, Q4_K_M, Q8_0"
            raise FakeError(
                500, f"unsupported quantization type {quantize} - supported types are {supported}"
            )
        have = manifest["quantization_level"]
        if have == want:
            return
        if not self.server_state.at_least(0, 22, 0):  # BF16 joined the list in v0.22.0
            if have not in ("F16", "F32"):
                raise FakeError(500, "quantization is only supported for F16 and F32 models")
        elif have not in UNQUANTIZED:
            raise FakeError(500, "quantization is only supported for F16, BF16 and F32 models")
        total = self.server_state.blob_path(manifest["model"]).stat().st_size
        status = f"quantizing {have} model to {want}"
        self.emit({"status": status, "digest": "0", "total": total, "completed": total})
        self.emit({"status": "verifying conversion"})
        manifest["quantization_level"] = want

    def tags(self) -> None:
        state = self.server_state
        models = []
        for m in state.models():
            size = state.blob_path(m["model"]).stat().st_size
            models.append(
                {
                    "name": m["name"],
                    "model": m["name"],
                    "modified_at": m["modified_at"],
                    "size": size,
                    "digest": hashlib.sha256(json.dumps(m, sort_keys=True).encode()).hexdigest(),
                    "details": _details(m),
                }
            )
        models.sort(key=lambda m: m["modified_at"], reverse=True)
        self.send_json(200, {"models": models})

    def _model_or_404(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body.get("model") or body.get("name") or ""
        if not name:
            raise FakeError(400, "model is required")
        if parse_name(name) is None:
            raise FakeError(400, "invalid model name")
        manifest = self.server_state.load(name)
        if manifest is None:
            raise FakeError(404, f"model '{name}' not found")
        return manifest

    def show(self) -> None:
        m = self._model_or_404(self.read_json())
        blob = self.server_state.blob_path(m["model"])
        kv = read_gguf(blob)["kv"]
        info = {}
        for k, v in kv.items():
            if k in ("general.name", "tokenizer.chat_template"):
                continue
            info[k] = [] if isinstance(v, list) and len(v) > 5 else v
        params = m.get("params") or {}
        param_lines = [
            f"{k:<30} {json.dumps(item)}"
            for k, v in params.items()
            for item in (v if isinstance(v, list) else [v])
        ]
        modelfile = [
            '# Modelfile generated by "ollama show"',
            "# To build a new Modelfile based on this, replace FROM with:",
            f"# FROM {m['name']}",
            "",
            f"FROM {blob}",
        ]
        if m.get("template"):
            modelfile.append(f'TEMPLATE """{m["template"]}"""')
        if m.get("system"):
            modelfile.append(f'SYSTEM """{m["system"]}"""')
        modelfile += [
            f"PARAMETER {k} {_mf_quote(str(item))}"
            for k, v in params.items()
            for item in (v if isinstance(v, list) else [v])
        ]
        body = {
            "modelfile": "\n".join(modelfile) + "\n",
            "parameters": "\n".join(param_lines),
            "template": m.get("template", "{{ .Prompt }}"),
            "details": _details(m),
            "model_info": info,
            "capabilities": ["completion"],
            "modified_at": m["modified_at"],
        }
        if m.get("system"):
            body["system"] = m["system"]
        self.send_json(200, body)

    def delete(self) -> None:
        state = self.server_state
        body = self.read_json()
        m = self._model_or_404(body)
        parts = parse_name(body.get("model") or body.get("name"))
        assert parts is not None
        state.manifest_path(parts).unlink()
        used = {x["model"] for x in state.models()}
        if m["model"] not in used:
            state.blob_path(m["model"]).unlink(missing_ok=True)
        self.send_json(200, {})

    def _schedule(self, m: dict[str, Any], body: dict[str, Any]) -> str | None:
        """Load the model as scheduleRunner would, or unload it for ``keep_alive: 0``; the
        ``done_reason`` to answer at once, None to go on and generate."""
        state = self.server_state
        keep = body.get("keep_alive")
        if keep is not None and not isinstance(keep, (int, float, str)):  # api.Duration
            raise FakeError(400, f"Unsupported type: '{type(keep).__name__}'")
        if keep in (0, "0", "0s", 0.0) and not body.get("prompt") and not body.get("messages"):
            state.loaded.pop(m["name"], None)  # sched.go expireRunner
            return "unload"
        # routes.go modelOptionsWithEmbeddingBatchDefault: FromMap on the stored parameters,
        # then on the request's options; an error is HTTP 500 from handleScheduleError.
        for options in (m.get("params") or {}, body.get("options") or {}):
            if problem := from_map_error(options):
                raise FakeError(500, problem)
        state.loaded[m["name"]] = datetime.now(timezone.utc).isoformat()
        return None if body.get("prompt") or body.get("messages") else "load"

    def generate(self) -> None:
        """Load or unload only (an empty prompt); generating text is left to /api/chat."""
        body = self.read_json()
        m = self._model_or_404(body)
        reason = self._schedule(m, body)
        if reason is None:
            raise FakeError(501, "the fake answers /api/generate only without a prompt")
        now = datetime.now(timezone.utc).isoformat()
        answer = {"model": m["name"], "created_at": now, "response": "", "done": True}
        self.send_json(200, {**answer, "done_reason": reason})

    def ps(self) -> None:
        """routes.go PsHandler: the loaded models, latest to expire first."""
        state = self.server_state
        models = []
        for name, expires in sorted(state.loaded.items(), key=lambda x: x[1], reverse=True):
            m = state.load(name)
            if m is None:
                continue
            size = state.blob_path(m["model"]).stat().st_size
            digest = m["model"].removeprefix("sha256:")
            models.append(
                {
                    "name": name,
                    "model": name,
                    "size": size,
                    "digest": digest,
                    "details": _details(m),
                    "expires_at": expires,
                    "size_vram": 0,
                    "context_length": 2048,
                }
            )
        self.send_json(200, {"models": models})

    def chat(self) -> None:
        state = self.server_state
        body = self.read_json()
        m = self._model_or_404(body)
        if reason := self._schedule(m, body):
            now = datetime.now(timezone.utc).isoformat()
            message = {"role": "assistant", "content": ""}
            answer = {"model": m["name"], "created_at": now, "message": message, "done": True}
            self.send_json(200, {**answer, "done_reason": reason})
            return
        state.stats["chats"] += 1
        messages = list(body.get("messages") or [])
        if m.get("system") and not (messages and messages[0].get("role") == "system"):
            messages.insert(0, {"role": "system", "content": m["system"]})
        options = {**(m.get("params") or {}), **(body.get("options") or {})}
        kwargs: dict[str, Any] = {
            "max_tokens": int(options.get("num_predict", 128)),
            "temperature": float(options.get("temperature", 0.8)),
            "top_p": float(options.get("top_p", 0.9)),
            "top_k": int(options.get("top_k", 40)),
            "stop": options.get("stop") or None,
        }
        if "seed" in options:
            kwargs["seed"] = int(options["seed"])
        msgs = [{"role": x["role"], "content": x.get("content", "")} for x in messages]
        stream = body.get("stream", True)
        started = time.time()
        try:
            with state._llama_lock:
                llm = state.llama(m["model"], int(options.get("num_ctx", 2048)))
                out = llm.create_chat_completion(msgs, **kwargs)
        except Exception as e:
            raise FakeError(500, f"llama runner process has terminated: {e}") from e
        choice = out["choices"][0]
        text = choice["message"]["content"] or ""
        done = {
            "model": m["name"],
            "created_at": datetime.now(timezone.utc).isoformat(),
            "message": {"role": "assistant", "content": "" if stream else text},
            "done": True,
            "done_reason": "length" if choice.get("finish_reason") == "length" else "stop",
            "total_duration": int((time.time() - started) * 1e9),
            "eval_count": out.get("usage", {}).get("completion_tokens", 0),
        }
        if not stream:
            self.send_json(200, done)
            return
        self.start_stream()
        for piece in re.findall(r"\S*\s*", text):
            if piece:
                self.send_line(
                    {
                        "model": m["name"],
                        "created_at": done["created_at"],
                        "message": {"role": "assistant", "content": piece},
                        "done": False,
                    }
                )
        self.send_line(done)
        self.end_stream()


def _layer(kind: str, text: str) -> str:
    return "sha256:" + hashlib.sha256(f"{kind}\0{text}".encode()).hexdigest()


def _mf_quote(s: str) -> str:
    """parser/parser.go quote(): quotes only text with newlines or edge spaces."""
    if "\n" in s or s.startswith(" ") or s.endswith(" "):
        return f'"""{s}"""' if '"' in s else f'"{s}"'
    return s


def _details(m: dict[str, Any]) -> dict[str, Any]:
    return {
        "parent_model": m.get("parent", ""),
        "format": "gguf",
        "family": m["family"],
        "families": [m["family"]],
        "parameter_size": human_number(int(m["parameter_count"])),
        "quantization_level": m["quantization_level"],
    }


def free_port() -> int:
    """A port nothing listens on now (bound and released at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--dir", type=Path, required=True, help="where blobs and models live")
    args = parser.parse_args(argv)
    fake = FakeOllama(args.dir, port=args.port).start()
    print(f"listening on {fake.url}", flush=True)
    try:
        assert fake._thread is not None
        fake._thread.join()
    except KeyboardInterrupt:
        fake.stop()


if __name__ == "__main__":
    sys.exit(main())
