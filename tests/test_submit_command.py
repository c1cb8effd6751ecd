"""``lorainbox submit``: a folder copied (or moved) into the inbox, never half-seen, never lost."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.daemon_proc import lorainbox
from tests.drops import fast_drop


def submit(*args: str | Path, inbox: Path) -> subprocess.CompletedProcess[str]:
    return lorainbox("submit", *args, timeout=120, LORAINBOX_INBOX=str(inbox))


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_submit_copies_and_a_second_drop_of_the_same_name_gets_its_own(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    drop = fast_drop(tmp_path, "pirate-bot")
    first, second = submit(drop, inbox=inbox), submit(drop, inbox=inbox)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert files(inbox / "pirate-bot") == files(drop) == files(inbox / "pirate-bot-2")
    assert drop.is_dir()  # copied: the original stays
    assert not [p for p in inbox.iterdir() if p.name.startswith(".")]  # no staging left
    assert "daemon is not running" in " ".join(first.stdout.split())  # and how to start it
    assert "lorainbox agent install" in first.stdout


def test_submit_move_takes_the_folder_across_file_systems(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    elsewhere = Path(tempfile.mkdtemp(dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    try:
        drop = fast_drop(elsewhere, "moved")
        before = files(drop)
        done = submit(drop, "--move", inbox=inbox)
        assert done.returncode == 0, done.stderr
        assert files(inbox / "moved") == before and not drop.exists()
    finally:
        shutil.rmtree(elsewhere, ignore_errors=True)


def test_submit_refuses_what_is_not_a_folder(tmp_path: Path) -> None:
    lone = tmp_path / "train.jsonl"
    lone.write_text("{}\n")
    done = submit(lone, inbox=tmp_path / "inbox")
    assert done.returncode == 1 and lone.is_file()
    assert "is not a folder" in done.stderr and "recipe.toml" in done.stderr


def test_submit_says_a_missing_folder_does_not_exist(tmp_path: Path) -> None:
    done = submit(tmp_path / "nope", inbox=tmp_path / "inbox")
    assert done.returncode == 1 and not (tmp_path / "inbox").exists()
    assert "does not exist" in done.stderr and "is not a folder" not in done.stderr


def test_submit_refuses_an_empty_folder_before_it_reaches_the_inbox(tmp_path: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    done = submit(tmp_path / "empty", inbox=tmp_path / "inbox")
    assert done.returncode == 1 and "is empty" in " ".join(done.stderr.split())
    assert not (tmp_path / "inbox" / "empty").exists()
