"""The LaunchAgent plist, the systemd unit, and the commands install/uninstall/status run.

launchctl is never run: a fake runner records the argv each call would run. Nothing is
written outside tmp_path (the home folder is a parameter).
"""

from __future__ import annotations

import os
import plistlib
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from lorainbox.platform import agent as launchd
from lorainbox.platform.agent import (
    FALLBACK_TEMPLATE,
    LABEL,
    TEMPLATE,
    CommandResult,
    install,
    render,
    render_plist,
    render_unit,
    run_command,
    status,
    uninstall,
)

UID = 501


@pytest.fixture
def program(tmp_path: Path) -> Path:
    exe = tmp_path / "venv bin" / "lorainbox"
    exe.parent.mkdir()
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    return exe


@pytest.fixture
def where(tmp_path: Path, program: Path) -> dict[str, Path]:
    return {"program": program, "inbox": tmp_path / "LoRAInbox", "log_dir": tmp_path / "logs"}


def plist_of(where: dict[str, Path]) -> dict:
    return plistlib.loads(
        render_plist(where["program"], inbox=where["inbox"], log_dir=where["log_dir"])
    )


# --- the plist ---------------------------------------------------------------------------


def test_plist_has_what_launchd_needs(where: dict[str, Path]) -> None:
    p = plist_of(where)
    assert p["Label"] == LABEL
    assert p["ProgramArguments"] == [str(where["program"]), "run", "--log-file-only"]
    assert Path(p["ProgramArguments"][0]).is_absolute()
    assert p["RunAtLoad"] is True
    assert p["KeepAlive"] == {"SuccessfulExit": False}
    assert isinstance(p["ThrottleInterval"], int) and p["ThrottleInterval"] >= 10
    assert p["StandardOutPath"] == str(where["log_dir"] / "agent.out.log")
    assert p["StandardErrorPath"] == str(where["log_dir"] / "agent.err.log")
    env = p["EnvironmentVariables"]
    assert env["LORAINBOX_INBOX"] == str(where["inbox"])
    path = env["PATH"].split(":")
    for folder in ("/opt/homebrew/bin", "/usr/local/bin", "/usr/bin", "/bin"):
        assert folder in path
    assert path[0] == str(where["program"].parent)
    assert "@" not in plistlib.dumps(p).decode(), "a template placeholder was left unfilled"


def test_plist_does_not_throttle_the_worker(where: dict[str, Path]) -> None:
    """launchd applies ProcessType, LowPriorityIO and Nice to the agent and every child: the
    worker would train on efficiency cores with throttled I/O."""
    p = plist_of(where)
    assert p.get("ProcessType", "Standard") == "Standard"
    assert "LowPriorityIO" not in p and "Nice" not in p


def test_plist_gives_the_worker_time_to_checkpoint(where: dict[str, Path]) -> None:
    """launchd's default ExitTimeOut (20 s) kills the daemon while it waits for its worker."""
    from lorainbox.pipeline.service import WORKER_STOP_SECONDS

    assert plist_of(where)["ExitTimeOut"] > WORKER_STOP_SECONDS


def test_nice_is_inherited_so_the_daemon_leaves_its_own_alone() -> None:
    """Why the daemon does not renice itself: a child inherits the value and cannot undo it."""
    code = (
        "import os, subprocess, sys; os.nice(5); "
        "subprocess.run([sys.executable, '-c', 'import os; print(os.nice(0)); os.nice(-5)'])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == str(os.nice(0) + 5)
    assert "PermissionError" in done.stderr or os.geteuid() == 0


def test_plist_takes_extra_environment(where: dict[str, Path]) -> None:
    data = render_plist(
        where["program"],
        inbox=where["inbox"],
        log_dir=where["log_dir"],
        env={"OLLAMA_HOST": "http://h:1"},
    )
    assert plistlib.loads(data)["EnvironmentVariables"]["OLLAMA_HOST"] == "http://h:1"


def test_template_file_and_fallback_agree(where: dict[str, Path], tmp_path: Path) -> None:
    with TEMPLATE.open("rb") as f:
        assert plistlib.load(f) == FALLBACK_TEMPLATE
    args = (where["program"],)
    kw = {"inbox": where["inbox"], "log_dir": where["log_dir"]}
    assert render_plist(*args, **kw) == render_plist(*args, **kw, template=tmp_path / "none.plist")


def test_plist_is_well_formed(where: dict[str, Path], tmp_path: Path) -> None:
    data = render_plist(where["program"], inbox=where["inbox"], log_dir=where["log_dir"])
    assert data.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE plist PUBLIC')
    assert plistlib.loads(data, fmt=plistlib.FMT_XML)["Label"] == LABEL
    plutil = shutil.which("plutil")
    if plutil:  # only on a Mac; elsewhere the checks above stand in for it
        target = tmp_path / "agent.plist"
        target.write_bytes(data)
        lint = subprocess.run([plutil, "-lint", str(target)], capture_output=True, text=True)
        assert lint.returncode == 0, lint.stdout + lint.stderr


def test_template_is_valid_as_shipped() -> None:
    with TEMPLATE.open("rb") as f:
        template = plistlib.load(f)
    assert template["ProgramArguments"] == ["@LORAINBOX@", "run", "--log-file-only"]


# --- launchctl ---------------------------------------------------------------------------


LAUNCHCTL_PRINT = """gui/501/com.lorainbox.agent = {
\tactive count = 1
\tpath = /Users/me/Library/LaunchAgents/com.lorainbox.agent.plist
\ttype = LaunchAgent
\tstate = running

\tprogram = /Users/me/.venv/bin/lorainbox
\targuments = {
\t\t/Users/me/.venv/bin/lorainbox
\t\trun
\t}

\tpid = 4242
\timmediate reason = speculative
}
"""


class FakeLaunchctl:
    """Plays launchd: remembers whether the agent is loaded and running, records every argv.

    ``bootout_codes`` are answered to successive bootouts (36: still in progress)."""

    def __init__(
        self,
        loaded: bool = False,
        bootstrap_codes: Sequence[int] = (),
        bootout_codes: Sequence[int] = (),
        stops_after_polls: int = 0,
    ) -> None:
        self.loaded = loaded
        self.running = loaded
        self.bootstrap_codes = list(bootstrap_codes)
        self.bootout_codes = list(bootout_codes)
        self.stops_after_polls = stops_after_polls
        self.stopping = False
        self.calls: list[list[str]] = []

    def __call__(self, argv: Sequence[str]) -> CommandResult:
        self.calls.append(list(argv))
        verb = argv[1]
        if verb == "print":
            if self.stopping:
                if self.stops_after_polls == 0:
                    self.running = self.stopping = False
                self.stops_after_polls -= 1
            if self.loaded:
                text = LAUNCHCTL_PRINT
                if not self.running:
                    text = text.replace("state = running", "state = not running")
                return CommandResult(tuple(argv), 0, text)
            return CommandResult(tuple(argv), 113, f'Could not find service "{LABEL}" in domain')
        if verb == "kill":
            self.stopping = self.running
            return CommandResult(tuple(argv), 0 if self.loaded else 113, "")
        if verb == "enable":
            return CommandResult(tuple(argv), 0, "")
        if verb == "bootout":
            code = self.bootout_codes.pop(0) if self.bootout_codes else (0 if self.loaded else 3)
            if code == 0:
                self.loaded = self.running = False
            return CommandResult(tuple(argv), code, "" if code == 0 else f"Boot-out failed: {code}")
        code = self.bootstrap_codes.pop(0) if self.bootstrap_codes else 0
        self.loaded = self.running = code == 0
        return CommandResult(
            tuple(argv), code, "" if code == 0 else "Bootstrap failed: 5: Input/output error"
        )


def mac_install(tmp_path: Path, where: dict[str, Path], runner: FakeLaunchctl, **kw: object):
    kw.setdefault("sleep", lambda s: None)
    return install(home=tmp_path / "home", runner=runner, platform="darwin", uid=UID, **where, **kw)


SERVICE = f"gui/{UID}/{LABEL}"


def test_install_when_not_loaded(tmp_path: Path, where: dict[str, Path]) -> None:
    runner = FakeLaunchctl()
    report = mac_install(tmp_path, where, runner)
    plist = tmp_path / "home" / "Library" / "LaunchAgents" / f"{LABEL}.plist"
    assert report.ok and report.path == plist
    assert runner.calls == [
        ["launchctl", "print", SERVICE],
        ["launchctl", "enable", SERVICE],
        ["launchctl", "bootstrap", f"gui/{UID}", str(plist)],
    ]
    assert plistlib.loads(plist.read_bytes())["ProgramArguments"][0] == str(where["program"])
    assert where["log_dir"].is_dir()


def test_install_again_stops_the_daemon_before_bootout(
    tmp_path: Path, where: dict[str, Path]
) -> None:
    """SIGTERM first, so the daemon stops its worker at a checkpoint; bootout once it is
    down; enable before bootstrap."""
    runner = FakeLaunchctl()
    mac_install(tmp_path, where, runner)
    runner.calls.clear()
    runner.stops_after_polls = 2
    naps: list[float] = []
    report = mac_install(tmp_path, where, runner, sleep=naps.append)
    assert report.ok
    verbs = [c[1] for c in runner.calls]
    assert verbs == [
        "print",
        "kill",
        *["print"] * 3,
        "bootout",
        "print",
        "enable",
        "bootstrap",
    ]
    assert runner.calls[1] == ["launchctl", "kill", "SIGTERM", SERVICE]
    assert naps == [1.0] * 3


def test_bootout_in_progress_is_repeated(tmp_path: Path, where: dict[str, Path]) -> None:
    runner = FakeLaunchctl(loaded=True, bootout_codes=[36, 36, 0])
    runner.running = False
    naps: list[float] = []
    report = mac_install(tmp_path, where, runner, sleep=naps.append)
    assert report.ok
    assert [c[1] for c in runner.calls].count("bootout") == 3
    assert naps == [1.0, 1.0]


def test_bootstrap_right_after_bootout_is_retried(tmp_path: Path, where: dict[str, Path]) -> None:
    runner = FakeLaunchctl(loaded=True, bootstrap_codes=[5, 5, 5, 0])
    runner.running = False
    naps: list[float] = []
    report = mac_install(tmp_path, where, runner, sleep=naps.append)
    assert report.ok
    assert [c[1] for c in runner.calls][-4:] == ["bootstrap"] * 4
    assert naps == [1.0] * 3


def test_a_failed_bootstrap_is_reported_not_raised(tmp_path: Path, where: dict[str, Path]) -> None:
    runner = FakeLaunchctl(bootstrap_codes=[5] * 10)
    report = mac_install(tmp_path, where, runner)
    assert not report.ok
    assert "launchctl bootstrap" in report.message and "Input/output error" in report.message
    assert report.path.exists()


def test_uninstall(tmp_path: Path, where: dict[str, Path]) -> None:
    runner = FakeLaunchctl()
    mac_install(tmp_path, where, runner)
    runner.calls.clear()
    report = uninstall(
        home=tmp_path / "home", runner=runner, platform="darwin", uid=UID, sleep=lambda s: None
    )
    assert report.ok and not report.path.exists()
    assert [c[1] for c in runner.calls] == ["print", "kill", "print", "bootout", "print"]
    assert not runner.loaded


def test_uninstall_when_absent_is_fine(tmp_path: Path) -> None:
    runner = FakeLaunchctl()
    report = uninstall(home=tmp_path, runner=runner, platform="darwin", uid=UID)
    assert report.ok and "was not installed" in report.message
    assert runner.calls == [["launchctl", "print", SERVICE]]


def test_status_reads_launchctl_print(tmp_path: Path, where: dict[str, Path]) -> None:
    runner = FakeLaunchctl()
    before = status(home=tmp_path / "home", runner=runner, platform="darwin", uid=UID)
    assert (before.installed, before.loaded, before.running, before.pid) == (
        False,
        False,
        False,
        None,
    )
    mac_install(tmp_path, where, runner)
    after = status(home=tmp_path / "home", runner=runner, platform="darwin", uid=UID)
    assert (after.installed, after.loaded, after.running, after.pid) == (True, True, True, 4242)
    assert after.detail == "state = running"


# --- systemd -----------------------------------------------------------------------------


def test_unit_content(where: dict[str, Path]) -> None:
    unit = render_unit(where["program"], inbox=where["inbox"])
    lines = unit.splitlines()
    assert f'ExecStart="{where["program"]}" run' in lines
    for line in (
        "Restart=on-failure",
        "Nice=10",
        "IOSchedulingClass=idle",
        "WantedBy=default.target",
    ):
        assert line in lines
    assert f'Environment="LORAINBOX_INBOX={where["inbox"]}"' in lines
    assert any(line.startswith(f'Environment="PATH={where["program"].parent}:') for line in lines)


def test_unit_escapes_what_systemd_would_expand() -> None:
    unit = render_unit(Path("/opt/a$b/lorainbox"), inbox=Path("/in"), env={"X": 'say "50%" \\ ok'})
    assert 'ExecStart="/opt/a$$b/lorainbox" run' in unit
    assert 'Environment="X=say \\"50%%\\" \\\\ ok"' in unit


def test_unit_verifies_with_systemd_analyze(where: dict[str, Path], tmp_path: Path) -> None:
    unit_file = tmp_path / "lorainbox.service"
    unit_file.write_text(render_unit(where["program"], inbox=where["inbox"], env={"Q": "50% off"}))
    analyze = shutil.which("systemd-analyze")
    if analyze:  # systemd-analyze prints parse errors as warnings and still exits 0
        done = subprocess.run([analyze, "verify", str(unit_file)], capture_output=True, text=True)
        assert done.returncode == 0 and done.stdout + done.stderr == "", done.stdout + done.stderr
    assert unit_file.read_text().count("[Service]") == 1


class FakeSystemctl:
    def __init__(self, code: int, output: str) -> None:
        self.code, self.output = code, output
        self.calls: list[list[str]] = []

    def __call__(self, argv: Sequence[str]) -> CommandResult:
        self.calls.append(list(argv))
        return CommandResult(tuple(argv), self.code, self.output)


def test_linux_install_enables_the_unit(tmp_path: Path, where: dict[str, Path]) -> None:
    runner = FakeSystemctl(0, "")
    report = install(home=tmp_path, runner=runner, platform="linux", **where)
    unit = tmp_path / ".config" / "systemd" / "user" / "lorainbox.service"
    assert report.ok and report.path == unit and unit.is_file()
    assert runner.calls == [
        ["systemctl", "--user", "daemon-reload"],
        ["systemctl", "--user", "enable", "--now", "lorainbox.service"],
    ]


@pytest.mark.parametrize(
    ("code", "output", "why"),
    [
        (1, "Failed to connect to bus: No medium found\n", "Failed to connect to bus"),
        (127, "systemctl: command not found", "systemctl is not installed"),
    ],
)
def test_linux_install_without_systemd_explains(
    tmp_path: Path, where: dict[str, Path], code: int, output: str, why: str
) -> None:
    runner = FakeSystemctl(code, output)
    report = install(home=tmp_path, runner=runner, platform="linux", **where)
    assert not report.ok
    assert report.path.is_file()
    assert why in report.message
    assert "systemctl --user daemon-reload" in report.message
    assert "systemctl --user enable --now lorainbox.service" in report.message
    assert len(runner.calls) == 1


def test_linux_uninstall_when_absent(tmp_path: Path) -> None:
    runner = FakeSystemctl(1, "Failed to connect to bus")
    report = uninstall(home=tmp_path, runner=runner, platform="linux")
    assert report.ok and "was not installed" in report.message


def test_linux_status_on_this_machine_does_not_crash(tmp_path: Path) -> None:
    result = status(home=tmp_path, platform="linux")
    assert not result.installed
    assert result.detail


def test_render_picks_the_platforms_format(where: dict[str, Path]) -> None:
    assert "<key>ProgramArguments</key>" in render(platform="darwin", **where)
    assert "[Service]" in render(platform="linux", **where)


def test_run_command_reports_missing_programs_and_failures() -> None:
    missing = run_command(["lorainbox-no-such-tool"])
    assert missing.returncode == 127 and missing.why() == "lorainbox-no-such-tool is not installed"
    failed = run_command(["sh", "-c", "echo first; echo the reason >&2; exit 3"])
    assert (failed.returncode, failed.why()) == (3, "the reason")


def test_unsupported_platform_is_reported(tmp_path: Path, where: dict[str, Path]) -> None:
    report = install(home=tmp_path, platform="win32", runner=FakeSystemctl(0, ""), **where)
    assert not report.ok and "win32" in report.message
    assert launchd.UNIT_NAME == "lorainbox.service"


def test_settings_supply_the_inbox_logs_and_environment(tmp_path: Path, program: Path) -> None:
    from lorainbox.core.config import Settings

    settings = Settings(
        inbox=tmp_path / "Inbox", state_dir=tmp_path / "state", ollama_host="http://mini:11434"
    )
    p = plistlib.loads(render(settings=settings, program=program, platform="darwin").encode())
    env = p["EnvironmentVariables"]
    assert env["LORAINBOX_INBOX"] == str(tmp_path / "Inbox")
    assert env["LORAINBOX_STATE_DIR"] == str(tmp_path / "state")
    assert env["OLLAMA_HOST"] == "http://mini:11434"
    assert p["StandardErrorPath"] == str(tmp_path / "state" / "logs" / "agent.err.log")
    unit = render(settings=Settings(inbox=tmp_path / "Inbox"), program=program, platform="linux")
    assert "OLLAMA_HOST" not in unit


def test_status_messages(tmp_path: Path, where: dict[str, Path]) -> None:
    runner = FakeLaunchctl()
    home = tmp_path / "home"
    assert "not installed" in status(home=home, runner=runner, platform="darwin", uid=UID).message
    mac_install(tmp_path, where, runner)
    running = status(home=home, runner=runner, platform="darwin", uid=UID).message
    assert "running, pid 4242" in running
    runner.loaded = False
    stopped = status(home=home, runner=runner, platform="darwin", uid=UID).message
    assert "not loaded" in stopped and "Could not find service" in stopped


def test_agent_plist_command_runs(tmp_path: Path) -> None:
    """The `agent` commands import the agent module (they once named one that is gone)."""
    from tests.daemon_proc import lorainbox

    done = lorainbox("agent", "plist", "--inbox", tmp_path / "Inbox")
    assert done.returncode == 0, done.stderr
    assert str(tmp_path / "Inbox") in done.stdout


def test_install_warns_about_folders_the_agent_may_not_read(
    tmp_path: Path, where: dict[str, Path]
) -> None:
    home = tmp_path / "home"
    inbox = home / "Documents" / "LoRAInbox"
    inbox.mkdir(parents=True)
    report = mac_install(tmp_path, {**where, "inbox": inbox}, FakeLaunchctl())
    assert report.ok
    [warning] = report.warnings
    assert "~/Documents" in warning and "Full Disk Access" in warning
    assert not mac_install(tmp_path, where, FakeLaunchctl()).warnings


def test_install_with_the_menubar_adds_a_second_agent(
    tmp_path: Path, where: dict[str, Path]
) -> None:
    runner = FakeLaunchctl()
    report = mac_install(tmp_path, where, runner, menubar=True)
    assert report.ok, report.message
    bar = tmp_path / "home" / "Library" / "LaunchAgents" / f"{launchd.MENUBAR_LABEL}.plist"
    p = plistlib.loads(bar.read_bytes())
    assert p["ProgramArguments"] == [str(where["program"]), "menubar"]
    assert p["LimitLoadToSessionType"] == "Aqua" and p["KeepAlive"] == {"SuccessfulExit": False}
    assert p["StandardErrorPath"] == str(where["log_dir"] / "menubar.err.log")
    boots = [c for c in runner.calls if c[1] == "bootstrap"]
    assert [Path(c[3]).name for c in boots] == [f"{LABEL}.plist", bar.name]
    report = uninstall(
        home=tmp_path / "home", runner=runner, platform="darwin", uid=UID, sleep=lambda s: None
    )
    assert not bar.exists() and str(bar) in report.message
