"""Start the daemon at login: a LaunchAgent on macOS, a systemd user service on Linux.

``install``, ``uninstall`` and ``status`` are idempotent and never raise for a service
manager that isn't there: they say what they ran, what failed and what to run by hand.
Every command goes through one runner, so tests check the argv instead of touching launchd.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import plistlib
import re
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from lorainbox.core import atomic
from lorainbox.core.config import DEFAULT_OLLAMA_HOST, Settings, load_settings
from lorainbox.core.share import LAUNCHD_DIR
from lorainbox.platform.commands import CommandResult, run_command
from lorainbox.platform.privacy import places_to_check, privacy_warnings

LABEL = "com.lorainbox.agent"
MENUBAR_LABEL = "com.lorainbox.menubar"
UNIT_NAME = "lorainbox.service"
TEMPLATE = LAUNCHD_DIR / f"{LABEL}.plist"
SYSTEM_PATH = "/opt/homebrew/bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"

# The template's content, for installs that don't ship the launchd/ folder (a built wheel);
# a test keeps the two equal.
FALLBACK_TEMPLATE: dict[str, Any] = {
    "Label": LABEL,
    "ProgramArguments": ["@LORAINBOX@", "run", "--log-file-only"],
    "RunAtLoad": True,
    "KeepAlive": {"SuccessfulExit": False},
    "ThrottleInterval": 30,
    "ExitTimeOut": 150,
    "StandardOutPath": "@LOG_DIR@/agent.out.log",
    "StandardErrorPath": "@LOG_DIR@/agent.err.log",
    "EnvironmentVariables": {"PATH": SYSTEM_PATH, "LORAINBOX_INBOX": "@INBOX@"},
}


STOP_WAIT_SECONDS = 150.0
"""How long to wait for the daemon to let its worker checkpoint (the plist's ExitTimeOut)."""
BOOTOUT_WAIT_SECONDS = 60.0
"""How long to repeat a ``bootout`` that launchd answers "in progress" (Homebrew's default)."""
BOOTSTRAP_ATTEMPTS = 10
EINPROGRESS = 36
"""launchctl's exit status while a bootout is still under way (errno EINPROGRESS)."""


class AgentError(RuntimeError):
    pass


class Runner(Protocol):
    def __call__(self, argv: Sequence[str]) -> CommandResult: ...


@dataclass(frozen=True)
class AgentReport:
    ok: bool
    path: Path
    message: str
    commands: tuple[CommandResult, ...] = ()
    warnings: tuple[str, ...] = ()
    """What the person must allow or move by hand (macOS privacy, see :mod:`privacy`)."""


@dataclass(frozen=True)
class AgentStatus:
    installed: bool
    loaded: bool
    running: bool
    pid: int | None
    path: Path
    detail: str

    @property
    def message(self) -> str:
        if not self.installed and not self.loaded:
            return "The agent is not installed (`lorainbox agent install` starts it at login)."
        where = f"installed at {self.path}" if self.installed else f"not at {self.path}"
        if self.running:
            pid = f", pid {self.pid}" if self.pid else ""
            return f"The agent is {where} and running{pid}."
        loaded = "loaded but not running" if self.loaded else "not loaded"
        return f"The agent is {where}, {loaded} ({self.detail})."


def find_program() -> Path:
    """The ``lorainbox`` executable of this installation, as an absolute path."""
    beside = Path(sys.executable).with_name("lorainbox")
    if beside.is_file():
        return beside.absolute()
    found = shutil.which("lorainbox")
    if found:
        return Path(found).absolute()
    raise AgentError(
        "can't find the lorainbox command; install the package (pip install lorainbox) "
        "so that `lorainbox` is on PATH, then run `lorainbox agent install` again"
    )


def plist_path(home: Path, label: str = LABEL) -> Path:
    return home / "Library" / "LaunchAgents" / f"{label}.plist"


def unit_path(home: Path) -> Path:
    return home / ".config" / "systemd" / "user" / UNIT_NAME


def _search_path(program: Path, base: str = SYSTEM_PATH) -> str:
    parts = base.split(":")
    folder = str(program.parent)
    return base if folder in parts else ":".join([folder, *parts])


def render_plist(
    program: Path,
    *,
    inbox: Path,
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    template: Path = TEMPLATE,
) -> bytes:
    """The LaunchAgent: the template with its ``@...@`` values filled in."""
    if template.is_file():
        with template.open("rb") as f:
            plist = plistlib.load(f)
    else:
        plist = copy.deepcopy(FALLBACK_TEMPLATE)
    values = {
        "@LORAINBOX@": str(program.absolute()),
        "@LOG_DIR@": str(log_dir.absolute()),
        "@INBOX@": str(inbox.absolute()),
    }
    plist = _fill(plist, values)
    environment = plist.setdefault("EnvironmentVariables", {})
    environment["PATH"] = _search_path(program, environment.get("PATH", SYSTEM_PATH))
    environment.update(env or {})
    return plistlib.dumps(plist, sort_keys=False)


def render_menubar_plist(
    program: Path, *, log_dir: Path, env: Mapping[str, str] | None = None
) -> bytes:
    """A second LaunchAgent for the menu-bar app: in the person's GUI session only (Aqua),
    as an app they look at (Interactive), restarted if it crashes, not if they quit it."""
    environment = {"PATH": _search_path(program), **(env or {})}
    plist = {
        "Label": MENUBAR_LABEL,
        "ProgramArguments": [str(program.absolute()), "menubar"],
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "LimitLoadToSessionType": "Aqua",
        "ProcessType": "Interactive",
        "StandardOutPath": str(log_dir.absolute() / "menubar.out.log"),
        "StandardErrorPath": str(log_dir.absolute() / "menubar.err.log"),
        "EnvironmentVariables": environment,
    }
    return plistlib.dumps(plist, sort_keys=False)


def _fill(value: Any, values: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        for placeholder, text in values.items():
            value = value.replace(placeholder, text)
        return value
    if isinstance(value, dict):
        return {k: _fill(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, values) for v in value]
    return value


def _unit_quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'"{escaped}"'


def render_unit(program: Path, *, inbox: Path, env: Mapping[str, str] | None = None) -> str:
    """The systemd user service: restarted on a crash, niced, idle-class I/O."""
    program = program.absolute()
    environment = {"PATH": _search_path(program, "/usr/local/bin:/usr/bin:/bin")}
    environment["LORAINBOX_INBOX"] = str(inbox.absolute())
    environment.update(env or {})
    lines = [
        "[Unit]",
        "Description=LoRA Inbox: trains the LoRAs dropped into the inbox while the machine is idle",
        "",
        "[Service]",
        "Type=simple",
        f"ExecStart={_unit_quote(str(program)).replace('$', '$$')} run",
        "Restart=on-failure",
        "RestartSec=30",
        "Nice=10",
        "IOSchedulingClass=idle",
        *(f"Environment={_unit_quote(f'{k}={v}')}" for k, v in environment.items()),
        "",
        "[Install]",
        "WantedBy=default.target",
        "",
    ]
    return "\n".join(lines)


@dataclass(frozen=True)
class _Target:
    program: Path
    inbox: Path
    log_dir: Path
    env: dict[str, str]


def _target(
    settings: Settings | None,
    program: Path | None,
    inbox: Path | None,
    log_dir: Path | None,
    env: Mapping[str, str] | None,
) -> _Target:
    """Explicit arguments win; the rest comes from the settings (loaded when not given).

    The agent gets the settings' state folder and Ollama address in its environment, so it
    runs with what ``lorainbox agent install --inbox … --config …`` was given.
    """
    if settings is None and (inbox is None or log_dir is None):
        settings = load_settings()
    environment: dict[str, str] = {}
    if settings is not None:
        environment["LORAINBOX_STATE_DIR"] = str(settings.state_dir)
        if settings.ollama_host != DEFAULT_OLLAMA_HOST:
            environment["OLLAMA_HOST"] = settings.ollama_host
        inbox = inbox or settings.inbox
        log_dir = log_dir or settings.log_dir
    environment.update(env or {})
    assert inbox is not None and log_dir is not None
    return _Target(program or find_program(), inbox, log_dir, environment)


def render(
    *,
    settings: Settings | None = None,
    program: Path | None = None,
    inbox: Path | None = None,
    log_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
    platform: str = sys.platform,
) -> str:
    """What ``install`` would write on this platform: the plist on macOS, else the unit."""
    t = _target(settings, program, inbox, log_dir, env)
    if platform == "darwin":
        return render_plist(t.program, inbox=t.inbox, log_dir=t.log_dir, env=t.env).decode()
    return render_unit(t.program, inbox=t.inbox, env=t.env)


def install(
    *,
    settings: Settings | None = None,
    home: Path | None = None,
    program: Path | None = None,
    inbox: Path | None = None,
    log_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
    runner: Runner = run_command,
    platform: str = sys.platform,
    uid: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
    menubar: bool = False,
) -> AgentReport:
    """Write the agent definition and (re)start it; installing twice restarts it.

    ``menubar`` (macOS): the menu-bar app starts at login too, as an agent of its own.
    """
    home = home or Path.home()
    t = _target(settings, program, inbox, log_dir, env)
    if platform == "darwin":
        t.log_dir.mkdir(parents=True, exist_ok=True)
        agent_plist = render_plist(t.program, inbox=t.inbox, log_dir=t.log_dir, env=t.env)
        report = _load_launchd(plist_path(home), LABEL, agent_plist, runner, _uid(uid), sleep)
        if menubar and report.ok:
            data = render_menubar_plist(t.program, log_dir=t.log_dir, env=t.env)
            path = plist_path(home, MENUBAR_LABEL)
            bar = _load_launchd(path, MENUBAR_LABEL, data, runner, _uid(uid), sleep)
            report = dataclasses.replace(
                report,
                ok=bar.ok,
                message=f"{report.message} {bar.message}",
                commands=report.commands + bar.commands,
            )
        places = places_to_check(t.inbox, Path(sys.prefix), {**os.environ, **t.env})
        warnings = privacy_warnings(
            places, home=home, python=Path(sys.executable), platform=platform
        )
        return dataclasses.replace(report, warnings=tuple(warnings))
    if platform.startswith("linux"):
        return _install_systemd(home, t, runner)
    return AgentReport(False, home, f"starting at login is not supported on {platform}")


def uninstall(
    *,
    home: Path | None = None,
    runner: Runner = run_command,
    platform: str = sys.platform,
    uid: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> AgentReport:
    """Stop the agent and remove its definition; fine when it isn't installed."""
    home = home or Path.home()
    if platform == "darwin":
        path = plist_path(home)
        ran = _stop_launchd(f"gui/{_uid(uid)}/{LABEL}", runner, sleep)
        existed = path.exists()
        path.unlink(missing_ok=True)
        what = f"Removed {path}" if existed else f"{path} was not installed"
        bar = plist_path(home, MENUBAR_LABEL)
        if bar.exists():
            ran += _stop_launchd(f"gui/{_uid(uid)}/{MENUBAR_LABEL}", runner, sleep)
            bar.unlink()
            what += f" and {bar}"
        return AgentReport(True, path, f"{what}; {LABEL} is stopped.", tuple(ran))
    if platform.startswith("linux"):
        path = unit_path(home)
        ran = [runner(["systemctl", "--user", "disable", "--now", UNIT_NAME])]
        existed = path.exists()
        path.unlink(missing_ok=True)
        ran.append(runner(["systemctl", "--user", "daemon-reload"]))
        what = f"Removed {path}" if existed else f"{path} was not installed"
        return AgentReport(True, path, f"{what}.", tuple(ran))
    return AgentReport(True, home, f"nothing is installed at login on {platform}")


def status(
    *,
    home: Path | None = None,
    runner: Runner = run_command,
    platform: str = sys.platform,
    uid: int | None = None,
) -> AgentStatus:
    """Whether the agent is installed, loaded by the service manager, and running."""
    home = home or Path.home()
    if platform == "darwin":
        path = plist_path(home)
        shown = runner(["launchctl", "print", f"gui/{_uid(uid)}/{LABEL}"])
        state = re.search(r"^\s*state = (\S+)", shown.output, re.M)
        pid = re.search(r"^\s*pid = (\d+)", shown.output, re.M)
        running = shown.ok and state is not None and state.group(1) == "running"
        if not shown.ok:
            detail = f"not loaded ({shown.why()})"
        else:
            detail = f"state = {state.group(1)}" if state else "loaded"
        return AgentStatus(
            path.exists(), shown.ok, running, int(pid.group(1)) if pid else None, path, detail
        )
    path = unit_path(home)
    active = runner(["systemctl", "--user", "is-active", UNIT_NAME])
    state = active.output.strip() or active.why()
    main_pid = None
    if active.ok:
        shown = runner(["systemctl", "--user", "show", "--property=MainPID", "--value", UNIT_NAME])
        main_pid = int(shown.output.strip()) if shown.output.strip().isdigit() else None
    loaded = active.ok or state in ("failed", "activating", "deactivating", "reloading")
    return AgentStatus(path.exists(), loaded, active.ok, main_pid or None, path, state)


def _uid(uid: int | None) -> int:
    return os.getuid() if uid is None else uid


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_bytes(path, data)


def _load_launchd(
    path: Path,
    label: str,
    data: bytes,
    runner: Runner,
    uid: int,
    sleep: Callable[[float], None],
) -> AgentReport:
    """Homebrew's order (``Library/Homebrew/services/cli.rb``: ``stop`` then
    ``launchctl_load``): stop what runs, ``enable`` (a label once disabled by ``bootout`` or
    ``launchctl disable`` is otherwise refused at bootstrap), then ``bootstrap``."""
    _write(path, data)
    domain, service = f"gui/{uid}", f"gui/{uid}/{label}"
    ran = _stop_launchd(service, runner, sleep)
    ran.append(runner(["launchctl", "enable", service]))
    for attempt in range(BOOTSTRAP_ATTEMPTS):
        if attempt:
            sleep(1.0)
        boot = runner(["launchctl", "bootstrap", domain, str(path)])
        ran.append(boot)
        if boot.ok:
            break
    if boot.ok:
        return AgentReport(True, path, f"Installed {path}; launchd started {label}.", tuple(ran))
    return AgentReport(
        False,
        path,
        f"Wrote {path}, but `launchctl bootstrap {domain} {path}` failed: {boot.why()}. "
        f"Run it yourself to see launchd's complaint.",
        tuple(ran),
    )


def _stop_launchd(
    service: str, runner: Runner, sleep: Callable[[float], None]
) -> list[CommandResult]:
    """Stop a loaded agent so that its worker checkpoints first, then boot it out.

    ``bootout`` alone would have launchd kill the daemon after ExitTimeOut while the worker,
    in a session of its own, trains on without the gates; so the daemon is sent SIGTERM first
    (it stops the worker at a checkpoint and exits 0, which KeepAlive leaves alone) and is
    waited for. The bootout is then repeated while launchd says it is still in progress, as
    Homebrew's ``Services::Cli.stop`` does.
    """
    shown = runner(["launchctl", "print", service])
    ran = [shown]
    if not shown.ok:
        return ran
    if _print_state(shown.output) == "running":
        ran.append(runner(["launchctl", "kill", "SIGTERM", service]))
        waited = 0.0
        while waited < STOP_WAIT_SECONDS:
            sleep(1.0)
            waited += 1.0
            shown = runner(["launchctl", "print", service])
            if not shown.ok or _print_state(shown.output) != "running":
                break
        ran.append(shown)
    waited = 0.0
    while True:
        out = runner(["launchctl", "bootout", service])
        ran.append(out)
        if out.returncode != EINPROGRESS and not runner(["launchctl", "print", service]).ok:
            break
        if waited >= BOOTOUT_WAIT_SECONDS:
            break
        sleep(1.0)
        waited += 1.0
    return ran


def _print_state(output: str) -> str | None:
    state = re.search(r"^\s*state = (\S+)", output, re.M)
    return state.group(1) if state else None


def _install_systemd(home: Path, t: _Target, runner: Runner) -> AgentReport:
    path = unit_path(home)
    _write(path, render_unit(t.program, inbox=t.inbox, env=t.env).encode())
    steps = (
        ["systemctl", "--user", "daemon-reload"],
        ["systemctl", "--user", "enable", "--now", UNIT_NAME],
    )
    ran: list[CommandResult] = []
    for argv in steps:
        ran.append(runner(argv))
        if not ran[-1].ok:
            by_hand = "\n".join(f"  {' '.join(s)}" for s in steps)
            return AgentReport(
                False,
                path,
                f"Wrote {path}, but `{' '.join(argv)}` failed: {ran[-1].why()}. "
                f"The service was not started. Where a systemd user session is available "
                f"(a desktop or `loginctl enable-linger`), run:\n{by_hand}",
                tuple(ran),
            )
    return AgentReport(
        True,
        path,
        f"Installed {path}; systemd started {UNIT_NAME} (logs: journalctl --user -u {UNIT_NAME}).",
        tuple(ran),
    )
