"""Files written whole or not at all, on a real (tiny, full) disk."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from lorainbox.core import atomic
from lorainbox.pipeline.intake import ERROR_FILE, write_error_file


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "tiny-disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)]).returncode:
        pytest.fail("this test needs to mount a small tmpfs (root in a container that allows it)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)])


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing_behind(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    atomic.write_text(path, "old\n")
    with pytest.raises(RuntimeError), atomic.replacing(path) as f:
        f.write("half of the new")
        raise RuntimeError("interrupted")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]


def test_a_full_disk_leaves_the_old_file_whole(tiny_disk: Path) -> None:
    path = tiny_disk / "status.json"
    atomic.write_text(path, "old\n")
    with pytest.raises(OSError, match="No space left"):
        atomic.write_bytes(path, b"x" * 1_000_000)
    assert path.read_text() == "old\n"
    assert [p.name for p in tiny_disk.iterdir()] == ["status.json"]


def test_error_file_on_a_full_disk_is_absent_not_empty(
    tiny_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tiny_disk / "ballast").write_bytes(b"\0" * 200_000)
    with caplog.at_level(logging.WARNING):
        write_error_file(tiny_disk, "# This job failed\n\n" + "the disk is full. " * 10_000)
    assert not (tiny_disk / ERROR_FILE).exists()
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["ballast"]
    assert "could not write" in caplog.text
    (tiny_disk / "ballast").unlink()
    write_error_file(tiny_disk, "# This job failed\n")
    assert (tiny_disk / ERROR_FILE).read_text() == "# This job failed\n"
