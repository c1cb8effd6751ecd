"""What a Mac's Python and toolchain can run: Rosetta, the Python version, the build tools.

Each reading is a pure function of a command's output, so it is tested on real outputs here
and run on the Mac by ``lorainbox doctor``.
"""

from __future__ import annotations

ROSETTA = ("/usr/sbin/sysctl", "-n", "sysctl.proc_translated")
XCODE_SELECT = ("/usr/bin/xcode-select", "-p")

Check = tuple[bool | None, str]
"""(ok, with None for "works, with a caveat"; the detail or how to fix it)."""


def parse_proc_translated(text: str | None) -> bool | None:
    """``sysctl -n sysctl.proc_translated``: 1 under Rosetta, 0 native on Apple Silicon. Intel
    Macs have no such key (the command fails: ``None`` here), and nothing is translated."""
    if text is None:
        return None
    value = text.strip()
    return {"1": True, "0": False}.get(value)


def python_check(version: tuple[int, int], machine: str, translated: bool | None) -> Check:
    """Rosetta and the Python version, in the words a person can act on."""
    where = f"{version[0]}.{version[1]} on {machine}"
    if translated:
        return (
            False,
            f"{where} under Rosetta (an x86_64 Python on Apple Silicon): no MLX and no Metal "
            "(MPS) for PyTorch. Install an arm64 Python (python.org's universal2 installer, or "
            "Homebrew in /opt/homebrew) and make the environment again",
        )
    if version < (3, 10):
        return (False, f"{where}: LoRA Inbox needs Python 3.10 or newer")
    if version < (3, 11):
        return (
            None,
            f"{where}: mlx-lm needs Python 3.11+, so language models train with the slower "
            "PyTorch trainer; make the environment with Python 3.11 or newer",
        )
    return (True, where)


def build_tools_check(
    developer_dir: str | None, cmake: str | None, binding_installed: bool
) -> Check:
    """Whether llama.cpp's Python binding (no wheel on PyPI) can be built here.

    It needs a compiler, on a Mac the Command Line Tools (``xcode-select -p`` prints their
    folder, and fails without them). CMake is optional: scikit-build-core, its build backend,
    fetches CMake from PyPI when none is on PATH.
    """
    tools = (
        f"Command Line Tools at {developer_dir.strip()}"
        if developer_dir
        else "no Command Line Tools"
    )
    cmake_text = f"cmake {cmake}" if cmake else "no cmake on PATH (the build fetches one)"
    if binding_installed:
        return (True, f"llama.cpp binding installed; nothing to build ({tools}, {cmake_text})")
    if not developer_dir:
        return (
            None,
            "installing llama-cpp-python builds llama.cpp and needs a compiler: run "
            f"`xcode-select --install` first ({cmake_text})",
        )
    return (True, f"{tools}, {cmake_text}: llama.cpp can be built")
