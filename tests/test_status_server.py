"""The status server for real: a loopback port, a real job store, real HTTP requests."""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest
from lorainbox.pipeline.jobs import JobStore, State
from lorainbox.platform.sensors.base import Readings
from lorainbox.ui.status_server import StatusServer, ensure_token, page_url, read_token

READINGS = Readings(
    on_ac_power=False,
    battery_percent=42,
    has_battery=True,
    idle_seconds=30.0,
    taken_at=datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
)


@dataclass
class Site:
    """A running server over a store holding one job in each interesting state."""

    server: StatusServer
    store: JobStore
    inbox: Path
    ids: dict[str, int]
    wakes: list[int] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    def get(self, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
        return httpx.get(self.base + path, headers=headers, timeout=5)

    def post(
        self, path: str, token: str | None = None, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        auth = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.post(self.base + path, headers={**auth, **(headers or {})}, timeout=5)


def write_metrics(folder: Path, last_step: int = 120) -> None:
    work = folder / ".lorainbox"
    work.mkdir(parents=True, exist_ok=True)
    lines = []
    for step in range(10, last_step + 1, 10):
        lines.append(
            {"type": "progress", "step": step, "total": 200, "train_loss": 3.0 - step / 100}
        )
        if step % 50 == 0:
            lines.append({"type": "eval", "step": step, "valid_loss": 3.2 - step / 100})
    (work / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))


def make_jobs(store: JobStore, inbox: Path) -> dict[str, int]:
    """pirate-bot trains (120/200, with metrics), others wait, pause, finish, fail."""

    def add(name: str, area: str = "Queue") -> int:
        folder = inbox / area / name
        folder.mkdir(parents=True)
        return store.add(inbox, name, folder, model=name).id

    ids = {name: add(name) for name in ("pirate-bot", "waiter", "held", "gate-paused")}
    store.transition(ids["pirate-bot"], State.TRAINING)
    store.update(
        ids["pirate-bot"],
        progress={
            "step": 120,
            "total": 200,
            "train_loss": 1.8,
            "tokens_per_second": 850.0,
            "eta_seconds": 95,
        },
    )
    write_metrics(inbox / "Queue" / "pirate-bot")
    store.transition(ids["waiter"], State.WAITING, waiting_for="on battery (42%)")
    store.transition(ids["held"], State.PAUSED, waiting_for="paused by you", held=1)
    store.transition(ids["gate-paused"], State.PAUSED, waiting_for="user is back (idle 3 s)")
    ids["finished"] = add("finished", "Done")
    store.transition(ids["finished"], State.DONE)
    ids["broken"] = add("broken", "Failed")
    store.transition(ids["broken"], State.FAILED, error="train.jsonl, line 3: not JSON")
    other = inbox.parent / "other-inbox"
    ids["elsewhere"] = store.add(other, "elsewhere", other / "Queue" / "elsewhere").id
    return ids


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    store = JobStore(tmp_path / "state" / "jobs.sqlite")
    inbox = tmp_path / "inbox"
    ids = make_jobs(store, inbox)
    wakes: list[int] = []
    server = StatusServer(
        store,
        str(inbox),
        tmp_path / "state",
        0,
        readings=lambda: READINGS,
        wake=lambda: wakes.append(1),
    )
    server.start()
    try:
        yield Site(server, store, inbox, ids, wakes)
    finally:
        server.stop()
        store.close()


# -- reads ------------------------------------------------------------------------------------


def test_jobs_lists_this_inbox_with_progress_and_actions(site: Site) -> None:
    r = site.get("/api/jobs")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    jobs = {j["name"]: j for j in r.json()["jobs"]}
    assert set(jobs) == {"pirate-bot", "waiter", "held", "gate-paused", "finished", "broken"}
    bot = jobs["pirate-bot"]
    assert bot["state"] == "training" and bot["progress"]["step"] == 120
    assert bot["loss"] == "1.800" and bot["valid_loss"] is None  # as the command line says it
    assert bot["model"] == "pirate-bot" and bot["times"]["started"] is not None
    assert bot["actions"] == ["cancel", "pause"]
    assert jobs["waiter"]["waiting_for"] == "on battery (42%)"
    assert jobs["held"]["actions"] == ["cancel", "resume"]
    assert jobs["gate-paused"]["actions"] == ["cancel", "pause", "resume"]
    assert jobs["finished"]["actions"] == []
    assert jobs["broken"]["error"].startswith("train.jsonl") and jobs["broken"]["actions"] == [
        "retry"
    ]


def test_job_detail_has_the_loss_series(site: Site) -> None:
    r = site.get(f"/api/jobs/{site.ids['pirate-bot']}")
    assert r.status_code == 200
    job = r.json()
    assert job["name"] == "pirate-bot"
    assert job["loss"]["train"][0] == [10, pytest.approx(2.9)] and len(job["loss"]["train"]) == 12
    assert job["loss"]["valid"] == [[50, pytest.approx(2.7)], [100, pytest.approx(2.2)]]
    assert site.get(f"/api/jobs/{site.ids['waiter']}").json()["loss"] == {"train": [], "valid": []}


def test_unknown_job_and_other_inboxes_are_404(site: Site) -> None:
    assert site.get("/api/jobs/9999").status_code == 404
    r = site.get(f"/api/jobs/{site.ids['elsewhere']}")
    assert r.status_code == 404 and "no job" in r.json()["error"]
    assert site.get("/api/nothing").status_code == 404


def test_gates_and_health(site: Site) -> None:
    readings = site.get("/api/gates").json()["readings"]
    assert readings["on_ac_power"] is False and readings["battery_percent"] == 42
    assert readings["taken_at"] == "2025-01-02T03:04:05+00:00"
    health = site.get("/api/health").json()
    assert health["ok"] is True and health["inbox"] == str(site.inbox)
    assert health["pid"] == os.getpid()


def test_gates_before_the_first_tick(tmp_path: Path) -> None:
    server = StatusServer(
        JobStore(tmp_path / "j.sqlite"), "x", tmp_path, 0, readings=lambda: None, wake=lambda: None
    )
    server.start()
    try:
        r = httpx.get(f"http://127.0.0.1:{server.port}/api/gates", timeout=5)
        assert r.json() == {"readings": None}
    finally:
        server.stop()


def test_static_page_and_its_headers(site: Site) -> None:
    page = site.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert '<script src="/app.js"' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"
    assert "sessionStorage" in site.get("/app.js").text
    assert site.get("/style.css").headers["content-type"].startswith("text/css")
    assert site.get("/../jobs.sqlite").status_code == 404


# -- actions ----------------------------------------------------------------------------------


def test_action_needs_the_token(site: Site) -> None:
    url = f"/api/jobs/{site.ids['pirate-bot']}/cancel"
    r = site.post(url)
    assert r.status_code == 401 and "token" in r.json()["error"]
    assert r.headers["www-authenticate"] == "Bearer"
    assert site.post(url, token="not-the-token").status_code == 403
    r = site.post(url, headers={"Authorization": f"Basic {site.server.token}"})
    assert r.status_code == 401
    assert site.store.take_requests() == [] and site.wakes == []


def test_action_is_recorded_and_wakes_the_daemon(site: Site) -> None:
    job_id = site.ids["pirate-bot"]
    r = site.post(f"/api/jobs/{job_id}/pause", token=site.server.token)
    assert r.status_code == 202 and r.json() == {"job": job_id, "action": "pause", "accepted": True}
    r = site.post(
        f"/api/jobs/{site.ids['broken']}/retry",
        headers={"Authorization": f"bearer {site.server.token}"},
    )
    assert r.status_code == 202
    assert site.store.take_requests() == [(job_id, "pause"), (site.ids["broken"], "retry")]
    assert len(site.wakes) == 2


def test_unknown_job_action_is_404(site: Site) -> None:
    token = site.server.token
    assert site.post("/api/jobs/9999/cancel", token=token).status_code == 404
    assert site.post(f"/api/jobs/{site.ids['elsewhere']}/cancel", token=token).status_code == 404
    assert site.post(f"/api/jobs/{site.ids['waiter']}/explode", token=token).status_code == 404
    assert site.store.take_requests() == []


@pytest.mark.parametrize(
    ("job", "action", "needle"),
    [
        ("finished", "resume", "not paused"),
        ("finished", "cancel", "already done"),
        ("pirate-bot", "retry", "only a failed or cancelled job"),
        ("held", "pause", "already paused by you"),
        ("broken", "pause", "only a queued, waiting or training job"),
    ],
)
def test_action_that_does_not_apply_is_409(site: Site, job: str, action: str, needle: str) -> None:
    r = site.post(f"/api/jobs/{site.ids[job]}/{action}", token=site.server.token)
    assert r.status_code == 409
    assert needle in r.json()["error"]
    assert site.store.take_requests() == [] and site.wakes == []


def test_actions_are_post_only(site: Site) -> None:
    r = site.get(f"/api/jobs/{site.ids['waiter']}/cancel")
    assert r.status_code == 405
    assert site.post("/api/jobs", token=site.server.token).status_code == 404


# -- the token file ---------------------------------------------------------------------------


def test_token_file_is_private_and_reused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    token = ensure_token(state)
    path = state / "token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(token) >= 40 and ensure_token(state) == token == read_token(state)
    path.chmod(0o644)
    assert ensure_token(state) == token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.write_text("")
    fresh = ensure_token(state)
    assert fresh and fresh != token and read_token(state) == fresh
    assert read_token(tmp_path / "nowhere") is None


def test_server_uses_the_token_file(site: Site, tmp_path: Path) -> None:
    path = tmp_path / "state" / "token"
    assert path.read_text().strip() == site.server.token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert page_url(8765, "abc") == "http://127.0.0.1:8765/#token=abc"


# -- the network boundary ---------------------------------------------------------------------


def test_host_header_must_name_this_server(site: Site) -> None:
    port = site.server.port
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1", f"127.0.0.1:{port + 1}"):
        r = site.get("/api/jobs", headers={"Host": host})
        assert r.status_code == 403, host
        assert "not this server" in r.json()["error"]
    assert site.get("/api/jobs", headers={"Host": f"localhost:{port}"}).status_code == 200
    r = site.post(
        f"/api/jobs/{site.ids['waiter']}/cancel",
        token=site.server.token,
        headers={"Host": "evil.example", "Authorization": f"Bearer {site.server.token}"},
    )
    assert r.status_code == 403 and site.store.take_requests() == []


def _outward_address() -> str | None:
    """This machine's address on its default route (no packet is sent), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
            return s.getsockname()[0]
        except OSError:
            return None


def test_binds_loopback_only(site: Site, tmp_path: Path) -> None:
    assert site.server._httpd is not None
    assert site.server._httpd.socket.getsockname()[0] == "127.0.0.1"
    outward = _outward_address()
    if outward and not outward.startswith("127."):
        with pytest.raises(OSError):
            socket.create_connection((outward, site.server.port), timeout=2).close()
    with pytest.raises(ValueError, match="127.0.0.1 only"):
        StatusServer(
            site.store, "x", tmp_path, 0, readings=lambda: None, wake=lambda: None, host="0.0.0.0"
        )


def test_port_in_use_raises(site: Site, tmp_path: Path) -> None:
    other = StatusServer(
        site.store, "x", tmp_path, site.server.port, readings=lambda: None, wake=lambda: None
    )
    with pytest.raises(OSError):
        other.start()


def test_requests_go_to_the_logger_not_stderr(
    site: Site, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    with caplog.at_level(logging.DEBUG, logger="lorainbox.ui.status_server"):
        site.get("/api/health")
        site.post(f"/api/jobs/{site.ids['waiter']}/cancel", token=site.server.token)
    messages = [r.getMessage() for r in caplog.records]
    assert any("GET /api/health" in m for m in messages)
    assert any("cancel requested for job" in m for m in messages)
    assert capfd.readouterr().err == ""


# -- in the daemon ----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_daemon_serves_the_page_while_it_runs(tmp_path: Path) -> None:
    from lorainbox.core.config import Settings
    from lorainbox.pipeline.service import Daemon

    settings = Settings(
        inbox=tmp_path / "inbox", state_dir=tmp_path / "state", status_port=_free_port()
    )
    daemon = Daemon(settings)
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while daemon.status_url is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert daemon.status_url == f"http://127.0.0.1:{settings.status_port}/"
        health = httpx.get(daemon.status_url + "api/health", timeout=5).json()
        assert health["inbox"] == str(settings.inbox)
    finally:
        daemon.stop()
        thread.join(timeout=30)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{settings.status_port}/api/health", timeout=2)


def test_daemon_goes_on_without_the_page_when_the_port_is_taken(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from lorainbox.core.config import Settings
    from lorainbox.pipeline.service import Daemon

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = Settings(
            inbox=tmp_path / "inbox", state_dir=tmp_path / "state", status_port=port
        )
        daemon = Daemon(settings, once=True)
        with caplog.at_level(logging.WARNING, logger="lorainbox.ui.status_server"):
            assert daemon.run() == 0
    assert daemon.status_url is None
    assert any("not free" in r.getMessage() for r in caplog.records)


def test_status_port_zero_turns_the_page_off(tmp_path: Path) -> None:
    from lorainbox.core.config import Settings
    from lorainbox.pipeline.service import Daemon

    settings = Settings(inbox=tmp_path / "inbox", state_dir=tmp_path / "state", status_port=0)
    daemon = Daemon(settings, once=True)
    assert daemon.run() == 0
    assert daemon.status_url is None and not (tmp_path / "state" / "token").exists()


def test_status_web_prints_the_page_with_its_token(
    _state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import webbrowser

    from lorainbox.ui.cli import app
    from typer.testing import CliRunner

    opened: list[str] = []
    monkeypatch.setattr(webbrowser, "open", opened.append)
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.setenv("LORAINBOX_STATUS_PORT", "8765")
    runner = CliRunner()
    missing = runner.invoke(app, ["status", "--web"])
    assert missing.exit_code == 1 and "start the daemon" in missing.output
    token = ensure_token(_state_dir)
    done = runner.invoke(app, ["status", "--web"])
    assert done.exit_code == 0
    assert done.output.strip() == f"http://127.0.0.1:8765/#token={token}"
    assert opened == [done.output.strip()]
