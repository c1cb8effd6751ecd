"""Tell the person a job is done, failed or paused.

A desktop notification where the machine can post one (terminal-notifier or osascript on
macOS, notify-send on Linux), and always the log. Posting is best effort: a notifier that is
missing, fails or hangs is logged and never fails the job.

On a Mac, "posted" means only that the tool took it: terminal-notifier exits 0 when macOS
shows nothing (notifications for it turned off), and ``osascript``'s notifications are
attributed to Script Editor, which needs permission of its own. :func:`permission_help` says
what to allow; ``lorainbox doctor`` and ``agent install`` post a test notification.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Literal

from lorainbox.core.layout import APP_NAME

log = logging.getLogger(__name__)

Kind = Literal["done", "failed", "paused", "test"]
GROUP_PREFIX = "com.lorainbox."
TEST_MESSAGE = "Notifications work: this is how LoRA Inbox says a model is ready."


def done_message(model: str) -> str:
    return f"{model} is ready — ollama run {model}"


def failed_message(name: str, reason: str) -> str:
    return f"{name} failed: {reason}"


def paused_message(name: str, reason: str) -> str:
    return f"{name} paused: {reason}"


def applescript_string(text: str) -> str:
    """``text`` as an AppleScript string literal, so quotes and backslashes can't end it early."""
    escaped = (
        text.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\r", "\\r")
        .replace("\n", "\\n")
        .replace("\t", "\\t")
    )
    return f'"{escaped}"'


class Notifier:
    """Posts notifications; ``search_path`` (like ``PATH``) and ``platform`` are for tests."""

    def __init__(
        self,
        *,
        platform: str = sys.platform,
        search_path: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.platform = platform
        self.search_path = search_path
        self.timeout = timeout

    def notify(
        self,
        title: str,
        message: str,
        *,
        kind: Kind,
        subtitle: str | None = None,
        image: Path | None = None,
        group: str | None = None,
    ) -> bool:
        """Log the news, then post it; True when the notifier took it (not proof it was seen)."""
        extra = f" ({subtitle})" if subtitle else ""
        log.log(
            logging.WARNING if kind == "failed" else logging.INFO, "%s%s: %s", title, extra, message
        )
        argv = self.command(title, message, kind=kind, subtitle=subtitle, image=image, group=group)
        if argv is None:
            log.debug("no desktop notifier on this machine; the log has it")
            return False
        return self._post(argv)

    def command(
        self,
        title: str,
        message: str,
        *,
        kind: Kind,
        subtitle: str | None = None,
        image: Path | None = None,
        group: str | None = None,
    ) -> list[str] | None:
        """The argv that would post this notification here, or None when nothing can.

        ``group`` (default: the title) is terminal-notifier's ``-group``: a notification
        replaces the last one of its group, so a job's "done" replaces its "paused" and
        leaves other jobs' news alone.
        """
        if self.platform == "darwin":
            if notifier := self._which("terminal-notifier"):
                argv = [notifier, "-title", title, "-message", message]
                argv += ["-group", f"{GROUP_PREFIX}{group or title}"]
                if subtitle:
                    argv += ["-subtitle", subtitle]
                if image is not None:
                    argv += ["-contentImage", str(image)]
                return argv
            if osascript := self._which("osascript"):
                script = f"display notification {applescript_string(message)}"
                script += f" with title {applescript_string(title)}"
                if subtitle:
                    script += f" subtitle {applescript_string(subtitle)}"
                return [osascript, "-e", script]
            return None
        if notify_send := self._which("notify-send"):
            urgency = "critical" if kind == "failed" else "normal"
            argv = [notify_send, f"--app-name={APP_NAME}", f"--urgency={urgency}"]
            if image is not None:
                argv += ["-i", str(image)]
            body = f"{subtitle}\n{message}" if subtitle else message
            return [*argv, "--", title, body]
        return None

    def tool(self) -> str | None:
        """The name of the tool that posts here, or None."""
        argv = self.command("", "", kind="test")
        return Path(argv[0]).name if argv else None

    def _which(self, name: str) -> str | None:
        return shutil.which(name, path=self.search_path)

    def _post(self, argv: list[str]) -> bool:
        name = Path(argv[0]).name
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
        except OSError as e:
            log.warning("could not post the notification with %s: %s", name, e)
            return False
        try:
            _, err = proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            log.warning("%s did not finish in %g s; notification skipped", name, self.timeout)
            return False
        if proc.returncode != 0:
            log.warning("%s exited %s: %s", name, proc.returncode, (err or "").strip()[-300:])
            return False
        return True


def _kill_group(proc: subprocess.Popen[str]) -> None:
    """Kill the notifier and anything it started, so a hung helper can't hold us up."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, AttributeError):
        proc.kill()
    try:
        proc.communicate(timeout=1)
    except subprocess.TimeoutExpired:
        log.debug("notifier's output pipe is still held open; leaving it")


def permission_help(tool: str | None, platform: str = sys.platform) -> str:
    """What a person must allow (or install) for notifications from ``tool`` to be seen."""
    if tool is None:
        if platform == "darwin":
            return (
                "no notifier: `brew install terminal-notifier` (results are in the log and "
                "`lorainbox status` meanwhile)"
            )
        return "no notifier: install notify-send (libnotify) to see results on the desktop"
    if tool == "terminal-notifier":
        return (
            "terminal-notifier exits 0 even when macOS hides its notifications: if the test "
            "notification did not appear, allow it in System Settings > Notifications > "
            "terminal-notifier (Allow notifications, style Banners or Alerts)"
        )
    if tool == "osascript":
        return (
            "macOS shows osascript's notifications as Script Editor's: if the test "
            "notification did not appear, open Script Editor once, then allow it in System "
            "Settings > Notifications > Script Editor; or `brew install terminal-notifier`, "
            "which gets an entry of its own"
        )
    return f"if the test notification did not appear, check {tool}'s desktop notification settings"


def post_test(notifier: Notifier | None = None) -> tuple[bool, str]:
    """Post a test notification; (whether the tool took it, what to allow if it was not seen)."""
    notifier = notifier or Notifier()
    posted = notifier.notify(APP_NAME, TEST_MESSAGE, kind="test", group="test")
    tool = notifier.tool()
    help_text = permission_help(tool, notifier.platform)
    if tool and not posted:
        return False, f"{tool} failed to post (see the log); {help_text}"
    return posted, help_text
