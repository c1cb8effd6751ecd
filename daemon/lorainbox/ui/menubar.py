"""``lorainbox menubar``: the queue in the macOS menu bar, drawn with rumps.

It never trains and never opens the job store: it reads the running daemon's status API and
posts actions there with the token from ``state_dir/token``, so it can't disagree with the
daemon. What to show is decided in ``menu_model``; this module only draws it and does the I/O.

The HTTP calls run off the main thread (:class:`~lorainbox.ui.latest.Latest`), so a busy or
absent daemon never freezes the menu. rumps' timer runs in the default run-loop mode only,
which stops while a menu is open; it is added to the common modes so an open menu refreshes.
Notifications go through :class:`~lorainbox.platform.notifier.Notifier`: rumps' own need an
Info.plist with a CFBundleIdentifier beside the Python binary, which a venv's Python lacks.
`lorainbox agent install --menubar` starts it at login.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import webbrowser
from pathlib import Path
from typing import Any

import httpx

from lorainbox.core.config import Settings, load_settings
from lorainbox.core.layout import APP_NAME
from lorainbox.platform.notifier import Notifier
from lorainbox.ui.latest import Latest
from lorainbox.ui.menu_model import Item, Menu, build_menu
from lorainbox.ui.status_server import LOOPBACK, page_url, read_token

REFRESH_SECONDS = 2.0
DRAW_SECONDS = 0.5
NOT_MAC = (
    "lorainbox menubar is a macOS menu-bar app; on this machine `lorainbox status --web` "
    "opens the same view in a browser."
)
NO_RUMPS = "the menu-bar app needs rumps: pip install 'lorainbox[menubar]'"


class StatusClient:
    """The daemon's status API, as the menu bar uses it."""

    def __init__(self, port: int, state_dir: Path, timeout: float = 2.0):
        self.base = f"http://{LOOPBACK}:{port}"
        self.port = port
        self.state_dir = state_dir
        self.timeout = timeout

    def jobs(self) -> list[dict[str, Any]] | None:
        """The inbox's jobs, or None when the daemon doesn't answer."""
        try:
            r = httpx.get(f"{self.base}/api/jobs", timeout=self.timeout)
            r.raise_for_status()
            return list(r.json()["jobs"])
        except (httpx.HTTPError, ValueError, KeyError):
            return None

    def act(self, job_id: int, action: str) -> str | None:
        """Ask the daemon to act on a job; None when it accepted, else why not."""
        token = read_token(self.state_dir)
        if token is None:
            return f"no token in {self.state_dir}; is the daemon running?"
        try:
            r = httpx.post(
                f"{self.base}/api/jobs/{job_id}/{action}",
                headers={"Authorization": f"Bearer {token}"},
                timeout=self.timeout,
            )
        except httpx.HTTPError as e:
            return f"the daemon did not answer: {e}"
        if r.status_code == 202:
            return None
        try:
            return str(r.json()["error"])
        except (ValueError, KeyError):
            return f"HTTP {r.status_code}"

    def page(self) -> str:
        return page_url(self.port, read_token(self.state_dir))


def main() -> int:
    if sys.platform != "darwin":
        print(NOT_MAC, file=sys.stderr)
        return 2
    try:
        import rumps
    except ImportError:
        print(NO_RUMPS, file=sys.stderr)
        return 2
    settings = load_settings()
    if settings.status_port == 0:
        print("the status page is off (status_port = 0); the menu bar reads it", file=sys.stderr)
        return 2
    _app(rumps, settings).run()
    return 0


def _app(rumps: Any, settings: Settings) -> Any:
    """A rumps.App subclass, built here because rumps is only importable on a Mac."""
    client = StatusClient(settings.status_port, settings.state_dir)
    jobs = Latest(client.jobs, REFRESH_SECONDS)
    notifier = Notifier()

    class MenuBarApp(rumps.App):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__(APP_NAME, quit_button=None)
            self.shown: Menu | None = None
            self.drawn_version = -1
            jobs.start()
            self.timer = rumps.Timer(self.refresh, DRAW_SECONDS)
            self.timer.start()
            _fire_while_menus_are_open(self.timer)

        def refresh(self, _sender: object = None) -> None:
            """Redraw from the newest fetch; never waits for the daemon."""
            if jobs.version == self.drawn_version:
                return
            self.drawn_version = jobs.version
            menu = build_menu(jobs.value)
            if menu == self.shown:
                return
            self.shown = menu
            self.title = menu.title
            self.menu.clear()
            self.menu.update([self._draw(i) for i in menu.items])

        def _draw(self, item: Item) -> Any:
            if item.separator:
                return rumps.separator
            entry = rumps.MenuItem(item.label)
            if item.children:
                entry.update([self._draw(c) for c in item.children])
            elif item.action and item.enabled:
                entry.set_callback(lambda _sender, it=item: self._do(it))
            return entry

        def _do(self, item: Item) -> None:
            if item.action == "quit":
                jobs.stop()
                rumps.quit_application()
            elif item.action == "open_inbox":
                subprocess.run(["open", str(settings.inbox)], check=False)
            elif item.action == "open_page":
                webbrowser.open(client.page())
            elif item.action and item.job_id is not None:
                threading.Thread(target=self._act, args=(item,), daemon=True).start()

        def _act(self, item: Item) -> None:
            assert item.action is not None and item.job_id is not None
            why = client.act(item.job_id, item.action)
            if why:
                notifier.notify(APP_NAME, f"Could not {item.action}: {why}", kind="failed")
            jobs.refresh_now()

    return MenuBarApp()


def _fire_while_menus_are_open(timer: Any) -> None:
    """rumps adds its NSTimer to NSDefaultRunLoopMode; an open menu runs the loop in the
    event-tracking mode, so the timer is added to the common modes as well."""
    from Foundation import NSRunLoop, NSRunLoopCommonModes

    nstimer = getattr(timer, "_nstimer", None)
    if nstimer is not None:
        NSRunLoop.currentRunLoop().addTimer_forMode_(nstimer, NSRunLoopCommonModes)
