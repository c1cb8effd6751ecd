"""A refused drop becomes a failed job named after its folder in Failed/, so it is listed and
can be retried, and never takes the name of a job that is still running."""

from __future__ import annotations

from pathlib import Path

from lorainbox.core.events import DropRejected, JobChanged
from lorainbox.core.hub import Hub
from lorainbox.pipeline.intake import Intake
from lorainbox.pipeline.jobs import JobStore, State
from lorainbox.pipeline.watcher import InboxLayout

from tests.drops import fast_drop


def test_a_second_drop_of_a_running_job_is_refused_under_its_own_name(tmp_path: Path) -> None:
    layout = InboxLayout(tmp_path / "inbox")
    layout.create()
    store = JobStore(tmp_path / "jobs.sqlite")
    hub = Hub()
    heard: list[object] = []
    hub.subscribe(JobChanged, heard.append)
    hub.subscribe(DropRejected, heard.append)
    running = store.add(layout.root, "good", fast_drop(layout.queue, "good"))
    store.transition(running.id, State.TRAINING)

    assert Intake(layout, store, hub).take(fast_drop(layout.root, "good")) is None

    refused = store.find("good-2")
    assert refused is not None and refused.state == State.FAILED
    assert refused.folder == layout.failed / "good-2"
    assert 'a job named "good" is already training' in (refused.folder / "ERROR.md").read_text()
    assert (refused.folder / "train.jsonl").is_file()  # nothing lost
    assert store.find("good").id == running.id  # `lorainbox cancel good` means the running one
    assert [type(e).__name__ for e in heard] == ["JobChanged", "DropRejected"]
