"""Notifications through real fake notifiers: scripts on a PATH in tmp_path that record their
argv, fail, or hang. A notifier that fails never raises."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from pathlib import Path

import pytest
from lorainbox.platform.notifier import (
    Notifier,
    applescript_string,
    done_message,
    failed_message,
    paused_message,
)


def fake_tool(bin_dir: Path, name: str, then: str = "") -> Path:
    """An executable called ``name`` that appends its argv (as JSON) to ``name.argv``."""
    bin_dir.mkdir(exist_ok=True)
    log = bin_dir / f"{name}.argv"
    script = bin_dir / name
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        f"with open({str(log)!r}, 'a') as f:\n"
        "    f.write(json.dumps(sys.argv[1:]) + '\\n')\n"
        f"{then}\n"
    )
    script.chmod(0o755)
    return script


def recorded(bin_dir: Path, name: str) -> list[list[str]]:
    log = bin_dir / f"{name}.argv"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_helper_texts() -> None:
    assert done_message("pirate-bot") == "pirate-bot is ready — ollama run pirate-bot"
    assert failed_message("bad-drop", "recipe.toml line 3") == "bad-drop failed: recipe.toml line 3"
    assert paused_message("pirate-bot", "on battery (42%)") == "pirate-bot paused: on battery (42%)"


def test_notify_send_on_linux(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bin_dir = tmp_path / "bin"
    fake_tool(bin_dir, "notify-send")
    image = tmp_path / "loss.png"
    caplog.set_level(logging.INFO, logger="lorainbox.platform.notifier")
    posted = Notifier(platform="linux", search_path=str(bin_dir)).notify(
        "pirate-bot", done_message("pirate-bot"), kind="done", image=image
    )
    assert posted
    assert recorded(bin_dir, "notify-send") == [
        [
            "--app-name=LoRA Inbox",
            "--urgency=normal",
            "-i",
            str(image),
            "--",
            "pirate-bot",
            "pirate-bot is ready — ollama run pirate-bot",
        ]
    ]
    assert "pirate-bot is ready — ollama run pirate-bot" in caplog.text


def test_failures_are_urgent_and_logged_as_warnings(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bin_dir = tmp_path / "bin"
    fake_tool(bin_dir, "notify-send")
    notifier = Notifier(platform="linux", search_path=str(bin_dir))
    assert notifier.notify("bad-drop", "no data", kind="failed", subtitle="recipe.toml")
    argv = recorded(bin_dir, "notify-send")[0]
    assert "--urgency=critical" in argv
    assert argv[-1] == "recipe.toml\nno data"
    assert any(r.levelno == logging.WARNING and "bad-drop" in r.message for r in caplog.records)


def unquote_applescript(script: str) -> list[str]:
    """The string literals of an AppleScript line, unescaped the way AppleScript reads them."""
    escapes = {"\\": "\\", '"': '"', "n": "\n", "r": "\r", "t": "\t"}
    literals = re.findall(r'"((?:[^"\\]|\\.)*)"', script)
    return [re.sub(r"\\(.)", lambda m: escapes[m.group(1)], lit) for lit in literals]


def test_osascript_on_a_mac_without_terminal_notifier(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    fake_tool(bin_dir, "osascript")
    message = 'He said "ready" \\ C:\\models\\new\nsecond line'
    title = 'pirate-"bot"'
    assert Notifier(platform="darwin", search_path=str(bin_dir)).notify(
        title, message, kind="done", subtitle="LoRA Inbox"
    )
    [argv] = recorded(bin_dir, "osascript")
    assert argv[0] == "-e"
    script = argv[1]
    assert script.startswith("display notification ")
    assert "\n" not in script
    assert unquote_applescript(script) == [message, title, "LoRA Inbox"]
    assert re.fullmatch(r'display notification ".*" with title ".*" subtitle "LoRA Inbox"', script)


def test_applescript_string_escaping() -> None:
    assert applescript_string('a "b" \\c') == '"a \\"b\\" \\\\c"'
    assert applescript_string("") == '""'


def test_terminal_notifier_is_preferred(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    fake_tool(bin_dir, "osascript")
    fake_tool(bin_dir, "terminal-notifier")
    image = tmp_path / "sample.png"
    notifier = Notifier(platform="darwin", search_path=str(bin_dir))
    assert notifier.notify("pirate-bot", "paused: on battery", kind="paused", image=image)
    assert recorded(bin_dir, "osascript") == []
    assert recorded(bin_dir, "terminal-notifier") == [
        [
            "-title",
            "pirate-bot",
            "-message",
            "paused: on battery",
            "-group",
            "com.lorainbox.pirate-bot",
            "-contentImage",
            str(image),
        ]
    ]


def test_a_notifier_that_fails_does_not_raise(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bin_dir = tmp_path / "bin"
    fake_tool(bin_dir, "notify-send", "sys.stderr.write('no display\\n'); sys.exit(1)")
    posted = Notifier(platform="linux", search_path=str(bin_dir)).notify(
        "pirate-bot", done_message("pirate-bot"), kind="done"
    )
    assert posted is False
    assert len(recorded(bin_dir, "notify-send")) == 1
    assert "notify-send exited 1: no display" in caplog.text


def test_a_notifier_that_hangs_is_cut_off(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    hang = bin_dir / "osascript"
    hang.write_text("#!/bin/sh\nsleep 30\n")  # sleep is a grandchild: the whole group must go
    hang.chmod(0o755)
    started = time.monotonic()
    posted = Notifier(platform="darwin", search_path=str(bin_dir), timeout=0.3).notify(
        "pirate-bot", "done", kind="done"
    )
    assert posted is False
    assert time.monotonic() - started < 2
    assert "did not finish" in caplog.text


def test_no_notifier_means_only_the_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="lorainbox.platform.notifier")
    empty = tmp_path / "empty"
    empty.mkdir()
    for platform in ("linux", "darwin"):
        notifier = Notifier(platform=platform, search_path=str(empty))
        assert notifier.command("t", "m", kind="done") is None
        assert notifier.notify("pirate-bot", "paused: thermal: serious", kind="paused") is False
    assert caplog.text.count("paused: thermal: serious") == 2


def test_each_job_notifies_in_its_own_group(tmp_path: Path) -> None:
    """One group for every notification made each replace the last: two jobs' news, one left."""
    from lorainbox.core.events import DropRejected, JobChanged
    from lorainbox.core.hub import Hub
    from lorainbox.pipeline.notifications import NotificationRelay

    bin_dir = tmp_path / "bin"
    fake_tool(bin_dir, "terminal-notifier")
    hub = Hub()
    notifier = Notifier(platform="darwin", search_path=str(bin_dir))
    NotificationRelay(hub, store=None, notifier=notifier)  # type: ignore[arg-type]
    hub.publish(JobChanged(1, "pirate-bot", "paused", "training", "on battery"))
    hub.publish(JobChanged(2, "my-style", "paused", "training", "on battery"))
    hub.publish(DropRejected("bad-drop", tmp_path, "no data; more"))
    groups = [argv[argv.index("-group") + 1] for argv in recorded(bin_dir, "terminal-notifier")]
    assert groups == [
        "com.lorainbox.pirate-bot",
        "com.lorainbox.my-style",
        "com.lorainbox.bad-drop",
    ]


@pytest.mark.parametrize(
    ("tool", "platform", "words"),
    [
        ("terminal-notifier", "darwin", "exits 0"),
        ("osascript", "darwin", "Script Editor"),
        (None, "darwin", "brew install terminal-notifier"),
        (None, "linux", "notify-send"),
    ],
)
def test_permission_help_names_what_to_allow(tool: str | None, platform: str, words: str) -> None:
    from lorainbox.platform.notifier import permission_help

    assert words in permission_help(tool, platform)


def test_post_test_posts_and_explains(tmp_path: Path) -> None:
    from lorainbox.platform.notifier import TEST_MESSAGE, post_test

    bin_dir = tmp_path / "bin"
    fake_tool(bin_dir, "osascript")
    posted, help_text = post_test(Notifier(platform="darwin", search_path=str(bin_dir)))
    assert posted and "Script Editor" in help_text
    [argv] = recorded(bin_dir, "osascript")
    assert TEST_MESSAGE in unquote_applescript(argv[1])
    fake_tool(tmp_path / "bad", "terminal-notifier", "sys.exit(1)")
    posted, help_text = post_test(Notifier(platform="darwin", search_path=str(tmp_path / "bad")))
    assert not posted and help_text.startswith("terminal-notifier failed to post")
