"""Rosetta, Python and build-tool findings for ``lorainbox doctor``, from real command outputs."""

from __future__ import annotations

from lorainbox.platform.macos_env import (
    build_tools_check,
    parse_proc_translated,
    python_check,
)

XCODE_SELECT_MISSING = None
"""``xcode-select -p`` without the tools exits 2 ("xcode-select: error: unable to get active
developer directory..."); the runner turns a failed command into None."""


def test_proc_translated() -> None:
    assert parse_proc_translated("1\n") is True
    assert parse_proc_translated("0\n") is False
    assert parse_proc_translated(None) is None  # an Intel Mac has no such sysctl
    assert parse_proc_translated("sysctl: unknown oid 'sysctl.proc_translated'") is None


def test_rosetta_is_a_failure_that_says_why() -> None:
    ok, text = python_check((3, 11), "x86_64", True)
    assert ok is False and "Rosetta" in text and "no MLX" in text and "arm64 Python" in text


def test_python_310_has_no_mlx_lm() -> None:
    ok, text = python_check((3, 10), "arm64", False)
    assert ok is None and "mlx-lm needs Python 3.11" in text
    assert python_check((3, 12), "arm64", False) == (True, "3.12 on arm64")
    assert python_check((3, 9), "arm64", None)[0] is False


def test_build_tools() -> None:
    ok, text = build_tools_check(XCODE_SELECT_MISSING, None, binding_installed=False)
    assert ok is None and "xcode-select --install" in text and "fetches" in text
    ok, text = build_tools_check("/Library/Developer/CommandLineTools\n", None, False)
    assert ok is True and "/Library/Developer/CommandLineTools," in text
    ok, text = build_tools_check(None, "/opt/homebrew/bin/cmake", binding_installed=True)
    assert ok is True and "nothing to build" in text


def test_doctor_finds_the_shortest_idle_wait_of_the_recipes(tmp_path) -> None:
    from lorainbox.core.config import Settings
    from lorainbox.ui.doctor import _shortest_idle_minutes

    inbox = tmp_path / "inbox"
    assert _shortest_idle_minutes(Settings(inbox=inbox)) == 10  # chat-lora's
    (inbox / "recipes").mkdir(parents=True)
    (inbox / "recipes" / "quick.toml").write_text(
        'extends = "chat-lora"\n[schedule]\nidle_minutes = 3\n'
    )
    assert _shortest_idle_minutes(Settings(inbox=inbox)) == 3
