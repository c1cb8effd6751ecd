"""The reliability suite, part two: faults and load, through the real ``lorainbox run`` process.

kill -9 of the worker and of the daemon mid-training, Ollama away then back, a full disk during
export, a second daemon on the same inbox, and 50 drops arriving at once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from lorainbox.pipeline.jobs import JobStore, State

from tests.daemon_proc import (
    ENTRY,
    DaemonProc,
    free_port,
    resumed_steps,
    trained,
    training_past,
    wait_for,
)
from tests.drops import chat_lines, drop_with, fast_drop
from tests.fake_ollama import FakeOllama


@pytest.fixture
def store(_state_dir: Path) -> Iterator[JobStore]:
    s = JobStore(_state_dir / "jobs.sqlite")
    yield s
    s.close()


@pytest.mark.timeout(600)
def test_kill_9_of_the_worker_resumes_from_its_checkpoint(tmp_path: Path, store: JobStore) -> None:
    inbox = tmp_path / "inbox"
    fast_drop(inbox, "crashy", iters=100, save_every=10)
    daemon = DaemonProc(tmp_path, inbox).start()
    try:
        job = wait_for("a checkpoint", lambda: training_past(store, "crashy", 10), daemon=daemon)
        checkpoint = job.checkpoint_step
        os.kill(job.worker_pid, signal.SIGKILL)
        done = wait_for("the job to finish", lambda: trained(store, "crashy"), daemon=daemon)
    finally:
        daemon.stop()
    assert done.state == State.REGISTERING, done.error
    assert done.attempts == 1
    resumes = resumed_steps(done)
    assert resumes and resumes[0] >= checkpoint > 0, (resumes, checkpoint)
    details = [d or "" for _, _, d in store.history(done.id)]
    assert any("retry 1 from checkpoint" in d for d in details), details
    assert (inbox / "Done" / "crashy" / "model.gguf").is_file()


@pytest.mark.timeout(600)
def test_kill_9_of_the_daemon_resumes_on_restart(tmp_path: Path, store: JobStore) -> None:
    inbox = tmp_path / "inbox"
    fast_drop(inbox, "orphan", iters=100, save_every=10)
    first = DaemonProc(tmp_path, inbox).start()
    job = wait_for("a checkpoint", lambda: training_past(store, "orphan", 10), daemon=first)
    worker = psutil.Process(job.worker_pid)
    first.proc.kill()
    first.proc.wait()
    assert worker.is_running()  # the worker lives in its own session

    second = DaemonProc(tmp_path, inbox).start()
    try:
        done = wait_for("the job to finish", lambda: trained(store, "orphan"), daemon=second)
    finally:
        second.stop()
    assert not worker.is_running()
    assert done.state == State.REGISTERING, done.error
    resumes = resumed_steps(done)
    assert resumes and resumes[-1] >= job.checkpoint_step, resumes
    assert any("daemon restarted" in (d or "") for _, _, d in store.history(done.id))


@pytest.mark.timeout(600)
def test_ollama_away_then_back_completes_registration(tmp_path: Path, store: JobStore) -> None:
    inbox = tmp_path / "inbox"
    fast_drop(inbox, "patient")
    port = free_port()
    daemon = DaemonProc(tmp_path, inbox, OLLAMA_HOST=f"127.0.0.1:{port}").start()
    ollama = FakeOllama(tmp_path / "ollama", port=port)
    try:
        waiting = wait_for(
            "the job to wait for Ollama",
            lambda: (
                (j := store.find("patient"))
                and j.state == State.REGISTERING
                and j.waiting_for
                and j
            ),
            daemon=daemon,
        )
        assert "Ollama not answering" in waiting.waiting_for
        done_dir = inbox / "Done" / "patient"
        assert (done_dir / "model.gguf").is_file() and (done_dir / "Modelfile").is_file()
        ollama.start()
        done = wait_for(
            "registration",
            lambda: (j := store.find("patient")) and j.state == State.DONE and j,
            daemon=daemon,
        )
        tags = json.loads(
            subprocess.run(
                ["curl", "-s", f"{ollama.url}/api/tags"], capture_output=True, text=True
            ).stdout
        )
    finally:
        daemon.stop()
        ollama.stop()
    assert done.result["registered"] is True
    names = {m["name"] for m in tags["models"]}
    assert "patient:latest" in names and len(names) == 2


def fill_disk(mount: Path, keep_free: int) -> None:
    """Take all but ``keep_free`` bytes; the worker writes meanwhile, so retry with more room."""
    for margin in (keep_free, 4 * keep_free, 16 * keep_free):
        size = psutil.disk_usage(str(mount)).free - margin
        if subprocess.run(["fallocate", "-l", str(size), str(mount / "ballast")]).returncode == 0:
            return
    pytest.fail(f"could not fill the {mount} tmpfs")


@pytest.mark.timeout(600)
def test_full_disk_during_export_fails_cleanly(tmp_path: Path, store: JobStore) -> None:
    mount = tmp_path / "small-disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mount)]).returncode:
        pytest.fail("this test needs to mount a small tmpfs (root in a container that allows it)")
    try:
        inbox = mount / "inbox"
        drop = fast_drop(inbox, "squeezed")
        original = {p.name: p.read_bytes() for p in drop.iterdir()}
        daemon = DaemonProc(tmp_path, inbox).start()
        try:
            wait_for(
                "export",
                lambda: (
                    (j := store.find("squeezed"))
                    and j.state in (State.EXPORTING, State.FAILED, State.DONE, State.REGISTERING)
                    and j
                ),
                daemon=daemon,
            )
            fill_disk(mount, keep_free=64 * 1024)
            failed = wait_for(
                "the job to end",
                lambda: (j := store.find("squeezed")) and j.state.finished and j,
                daemon=daemon,
            )
            assert daemon.proc.poll() is None  # the daemon survived
        finally:
            daemon.stop()
        assert failed.state == State.FAILED, failed.state
        assert "disk" in (failed.error or "").lower() or "space" in (failed.error or "").lower(), (
            failed.error
        )
        folder = inbox / "Failed" / "squeezed"
        for name, content in original.items():
            assert (folder / name).read_bytes() == content
        assert not (folder / "model.gguf").exists()
        assert not list(folder.glob(".*.partial"))
        (mount / "ballast").unlink()
        error_file = folder / "ERROR.md"  # whole when there was room for it, else absent
        assert not error_file.exists() or "disk" in error_file.read_text().lower()
    finally:
        subprocess.run(["umount", "-l", str(mount)])


def test_a_second_daemon_on_the_same_inbox_refuses(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    first = DaemonProc(tmp_path, inbox).start()
    try:
        wait_for("the first daemon", lambda: (inbox / "Queue").is_dir(), daemon=first, timeout=60)
        time.sleep(1.0)
        second = subprocess.run(
            [*ENTRY, "run", "--inbox", str(inbox)],
            capture_output=True,
            text=True,
            env=first.env,
            timeout=60,
        )
    finally:
        assert first.stop() == 0
    assert second.returncode == 3
    assert "already watching" in second.stderr and str(first.proc.pid) in second.stderr


@pytest.mark.timeout(300)
def test_fifty_drops_at_once_are_each_queued_once_in_arrival_order(
    tmp_path: Path, store: JobStore
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    daemon = DaemonProc(tmp_path, inbox).start()
    # A window 12 hours away: intake only, no training.
    hour = (time.localtime().tm_hour + 12) % 24
    recipe = f'extends = "tiny-demo"\n[schedule]\nwindow = "{hour:02d}:00-{hour:02d}:01"\n'
    names = [f"drop-{i:02d}" for i in range(50)]
    try:
        wait_for("the daemon", lambda: (inbox / "Queue").is_dir(), daemon=daemon, timeout=60)
        staging = tmp_path / "staging"
        for name in names:
            drop_with(staging, name, recipe, {"train.jsonl": chat_lines(2)})
        for name in names:  # arrive one after another, as a Finder copy would
            (staging / name).rename(inbox / name)
            time.sleep(0.01)
        jobs = wait_for(
            "50 jobs waiting",
            lambda: (
                (js := store.list(str(inbox)))
                and len(js) >= 50
                and all(j.state == State.WAITING for j in js)
                and js
            ),
            daemon=daemon,
            timeout=200,
        )
        time.sleep(2)
        again = store.list(str(inbox))
    finally:
        daemon.stop()
    assert [j.name for j in jobs] == names
    assert len(again) == 50
    assert all("outside window" in (j.waiting_for or "") for j in again)
    assert sorted(p.name for p in (inbox / "Queue").iterdir()) == names
    assert not (inbox / "Failed").exists() or not list((inbox / "Failed").iterdir())
