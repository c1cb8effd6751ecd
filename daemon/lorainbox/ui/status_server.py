"""The status page and its JSON API, on loopback only, so a person (or the menu-bar app) can see
the queue and cancel, retry, pause or resume a job without a terminal.

Reads go straight to the job store. Actions go through the same ``requests`` table as the CLI,
so the daemon's scheduler stays the only thing that changes a job; the server only wakes it.
Actions need the token kept in ``state_dir/token`` (0600): any local process can reach a
loopback port, but only the person's own processes can read that file. The Host header is
checked so a web page can't reach the API through DNS rebinding.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
import secrets
import socketserver
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from lorainbox import __version__
from lorainbox.core.config import Settings
from lorainbox.core.humanize import duration, export_stage, loss_text
from lorainbox.pipeline.jobs import ACTIONS, Job, JobStore, State, refusal
from lorainbox.pipeline.results import loss_series, read_metrics
from lorainbox.platform.sensors.base import Readings

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
TOKEN_FILE = "token"
WEB_DIR = Path(__file__).with_name("web")
STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
}
_JOB = re.compile(r"/api/jobs/(\d+)")
_ACTION = re.compile(r"/api/jobs/(\d+)/([a-z]+)")


# -- the token -------------------------------------------------------------------------------


def ensure_token(state_dir: Path) -> str:
    """The action token: created 0600 on first use, re-used after, its mode narrowed if wider."""
    path = state_dir / TOKEN_FILE
    state_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            log.warning("%s was readable by others; narrowed it to 0600", path)
            os.chmod(path, 0o600)
        token = path.read_text().strip()
        if token:
            return token
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def read_token(state_dir: Path) -> str | None:
    """The token for a client (CLI, menu bar); None while no daemon has made one."""
    try:
        return (state_dir / TOKEN_FILE).read_text().strip() or None
    except OSError:
        return None


def page_url(port: int, token: str | None = None) -> str:
    """The page's address; the token rides in the fragment, which browsers never send."""
    return f"http://{LOOPBACK}:{port}/" + (f"#token={token}" if token else "")


# -- what the API says about jobs --------------------------------------------------------------


def _loss(value: float | None) -> str | None:
    """As the command line shows it (3.00e-04, not 0.000), so the page needs no format of its own."""
    return None if value is None else loss_text(value)


def eta_text(job: Job) -> str | None:
    eta = job.progress.get("eta_seconds")
    return duration(eta) if eta and job.state == State.TRAINING else None


def job_json(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "name": job.name,
        "state": job.state.value,
        "waiting_for": job.waiting_for,
        "held": job.held,
        "progress": job.progress,
        "eta": eta_text(job),
        "loss": _loss(job.progress.get("train_loss")),
        "valid_loss": _loss(job.progress.get("valid_loss")),
        "export_stage": export_stage(job.progress) if job.state == State.EXPORTING else None,
        "error": job.error,
        "model": job.model,
        "result": job.result,
        "folder": job.path,
        "priority": job.priority,
        "times": {
            "created": job.created_at,
            "updated": job.updated_at,
            "started": job.started_at,
            "finished": job.finished_at,
        },
        "actions": [a for a in ACTIONS if refusal(job, a) is None],
    }


def loss_json(job: Job) -> dict[str, list[tuple[int, float]]]:
    train, valid = loss_series(read_metrics(job.folder))
    return {"train": train, "valid": valid}


def readings_json(readings: Readings | None) -> dict[str, Any] | None:
    if readings is None:
        return None
    data = asdict(readings)
    data["taken_at"] = readings.taken_at.isoformat()
    return data


# -- the server ------------------------------------------------------------------------------


class StatusServer:
    """The HTTP server on a thread of its own; ``start()`` gives its URL, ``stop()`` ends it."""

    def __init__(
        self,
        store: JobStore,
        inbox: str,
        state_dir: Path,
        port: int,
        *,
        readings: Callable[[], Readings | None],
        wake: Callable[[], None],
        host: str = LOOPBACK,
    ):
        if host != LOOPBACK:
            raise ValueError(f"the status server binds {LOOPBACK} only, not {host!r}")
        self.store = store
        self.inbox = inbox
        self.state_dir = state_dir
        self.port = port
        self.readings = readings
        self.wake = wake
        self.token = ""
        self.started_at = time.time()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return page_url(self.port)

    def start(self) -> str:
        """Bind and serve; raises OSError when the port is taken."""
        self.token = ensure_token(self.state_dir)
        self._httpd = _Server((LOOPBACK, self.port), _Handler, self)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="status-server", daemon=True
        )
        self._thread.start()
        log.info("status page at %s", self.url)
        return self.url

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = self._thread = None

    def allowed_hosts(self) -> tuple[str, ...]:
        return (f"{LOOPBACK}:{self.port}", f"localhost:{self.port}")

    def job(self, job_id: int) -> Job | None:
        try:
            job = self.store.get(job_id)
        except KeyError:
            return None
        return job if job.inbox == self.inbox else None


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], app: StatusServer
    ):
        self.app = app
        super().__init__(address, handler)

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse-DNS lookup of the address, which can hang."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "lorainbox"
    sys_version = ""

    @property
    def app(self) -> StatusServer:
        return self.server.app

    def do_GET(self) -> None:
        if not self._host_ok():
            return
        path = urlsplit(self.path).path
        if path in STATIC:
            self._static(*STATIC[path])
        elif path == "/api/jobs":
            jobs = self.app.store.list(self.app.inbox)
            self._json(HTTPStatus.OK, {"jobs": [job_json(j) for j in jobs]})
        elif m := _JOB.fullmatch(path):
            job = self.app.job(int(m[1]))
            if job is None:
                self._error(HTTPStatus.NOT_FOUND, f"no job {m[1]} in this inbox")
            else:
                self._json(HTTPStatus.OK, {**job_json(job), "loss": loss_json(job)})
        elif path == "/api/gates":
            self._json(HTTPStatus.OK, {"readings": readings_json(self.app.readings())})
        elif path == "/api/health":
            self._json(HTTPStatus.OK, self._health())
        elif _ACTION.fullmatch(path):
            self._error(HTTPStatus.METHOD_NOT_ALLOWED, "actions are POST requests")
        else:
            self._error(HTTPStatus.NOT_FOUND, f"nothing at {path}")

    def do_POST(self) -> None:
        self._drain()
        if not self._host_ok():
            return
        m = _ACTION.fullmatch(urlsplit(self.path).path)
        if m is None or m[2] not in ACTIONS:
            self._error(HTTPStatus.NOT_FOUND, f"no action at {self.path}")
            return
        if not self._token_ok():
            return
        job_id, action = int(m[1]), m[2]
        job = self.app.job(job_id)
        if job is None:
            self._error(HTTPStatus.NOT_FOUND, f"no job {job_id} in this inbox")
            return
        why = refusal(job, action)
        if why is not None:
            self._error(HTTPStatus.CONFLICT, why)
            return
        self.app.store.request(job_id, action)
        self.app.wake()
        log.info("%s requested for job %d %s via the status page", action, job_id, job.name)
        self._json(HTTPStatus.ACCEPTED, {"job": job_id, "action": action, "accepted": True})

    def _health(self) -> dict[str, Any]:
        return {
            "ok": True,
            "version": __version__,
            "inbox": self.app.inbox,
            "pid": os.getpid(),
            "uptime_seconds": round(time.time() - self.app.started_at, 1),
        }

    def _host_ok(self) -> bool:
        host = (self.headers.get("Host") or "").strip().lower()
        if host in self.app.allowed_hosts():
            return True
        self._error(HTTPStatus.FORBIDDEN, f"host {host!r} is not this server; use {self.app.url}")
        return False

    def _token_ok(self) -> bool:
        auth = self.headers.get("Authorization") or ""
        scheme, _, given = auth.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            self._error(
                HTTPStatus.UNAUTHORIZED,
                "this needs the token: open the page with `lorainbox status --web`",
                {"WWW-Authenticate": "Bearer"},
            )
            return False
        if not hmac.compare_digest(given.strip().encode(), self.app.token.encode()):
            self._error(
                HTTPStatus.FORBIDDEN,
                "wrong token: open the page again with `lorainbox status --web`",
            )
            return False
        return True

    def _drain(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if 0 < length <= 65536:
            self.rfile.read(length)

    def _static(self, name: str, content_type: str) -> None:
        try:
            body = (WEB_DIR / name).read_bytes()
        except OSError:
            self._error(HTTPStatus.NOT_FOUND, f"{name} is missing from the installation")
            return
        self._send(HTTPStatus.OK, body, content_type)

    def _json(self, status: HTTPStatus, data: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(data, default=str).encode()
        self._send(status, body, "application/json", headers)

    def _error(
        self, status: HTTPStatus, message: str, headers: dict[str, str] | None = None
    ) -> None:
        self._json(status, {"error": message}, headers)

    def _send(
        self,
        status: HTTPStatus,
        body: bytes,
        content_type: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in {**SECURITY_HEADERS, **(headers or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), fmt % args)

    def log_error(self, fmt: str, *args: Any) -> None:
        log.warning("%s %s", self.address_string(), fmt % args)


def start_status_server(
    settings: Settings,
    store: JobStore,
    inbox: str,
    *,
    readings: Callable[[], Readings | None],
    wake: Callable[[], None],
) -> StatusServer | None:
    """The daemon's page, or None when it is off (port 0) or its port is taken: the daemon
    works without it, so a conflict is a warning, not a reason to stop."""
    if settings.status_port == 0:
        return None
    server = StatusServer(
        store, inbox, settings.state_dir, settings.status_port, readings=readings, wake=wake
    )
    try:
        server.start()
    except OSError as e:
        log.warning(
            "no status page: port %d on %s is not free (%s); set status_port in the config "
            "(0 turns the page off)",
            settings.status_port,
            LOOPBACK,
            e.strerror or e,
        )
        return None
    return server
