"""``lorainbox run --once`` as a real process on a real inbox: valid and broken drops."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.daemon_proc import lorainbox
from tests.drops import chat_lines, drop_with, fast_drop


def test_run_once_sorts_valid_and_broken_drops(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    fast_drop(inbox, "good")
    drop_with(
        inbox,
        "bad-toml",
        'extends = "tiny-demo"\n[train\niters = 3\n',
        {"train.jsonl": chat_lines()},
    )
    drop_with(
        inbox,
        "unknown-key",
        'extends = "tiny-demo"\n[lora]\nrnak = 4\n',
        {"train.jsonl": chat_lines()},
    )
    drop_with(
        inbox,
        "wrong-type",
        'extends = "tiny-demo"\n[train]\nbatch_size = "four"\n',
        {"train.jsonl": chat_lines()},
    )
    drop_with(inbox, "no-data", 'extends = "tiny-demo"\n', {})
    drop_with(inbox, "empty-data", 'extends = "tiny-demo"\n', {"train.jsonl": ""})
    drop_with(
        inbox, "not-utf8", 'extends = "tiny-demo"\n', {"train.jsonl": b'{"text": "caf\xe9"}\n'}
    )
    drop_with(inbox, "escapes", 'extends = "tiny-demo"\n[data]\ntrain = "../secret.jsonl"\n', {})
    (inbox / "loose-file.txt").write_text("not a folder")

    result = lorainbox("run", "--once", "--inbox", str(inbox))
    assert result.returncode == 0, result.stderr[-3000:]

    done = inbox / "Done" / "good"
    assert (done / "model.gguf").is_file()
    assert (done / "adapters").is_dir()
    for name in ("report.md", "Modelfile", "loss.png", "train.log", "status.json"):
        assert (done / name).exists(), name
    status = json.loads((done / "status.json").read_text())
    assert status["state"] == "done" and status["result"]["registered"] is False
    assert status["result"]["gguf"] == "model.gguf"
    assert status["result"]["gguf_info"]["name"] == "good"  # not the converter's "Fused"
    report = (done / "report.md").read_text()
    assert "- **Trained:** 12 steps with mlx on cpu" in report
    assert '- **Engine:** mlx, because the recipe asks for it (trainer = "mlx")' in report
    assert re.search(r"- chat: \d+ examples to train on, \d+ to validate with", report)
    assert "- average length (characters): " in report and "mean_chars" not in report
    assert "```toml" in report and "null" not in report
    log = (done / "train.log").read_text()
    for told in ("memory plan: batch", "step 12/12, loss", "training finished after 12 steps"):
        assert told in log, (told, log[-2000:])
    assert "export: writing the GGUF" in log and "model.gguf" in log

    expected = {
        "bad-toml": ["not valid TOML", "line 2"],
        "unknown-key": ["unknown key `rnak`", "did you mean `rank`"],
        "wrong-type": ["train.batch_size", "number without quotes"],
        "no-data": ["train"],
        "empty-data": ["empty"],
        "not-utf8": ["UTF-8", "line 1"],
        "escapes": ["outside", "../secret.jsonl"],
        "loose-file": ["is a file"],
    }
    for name, needles in expected.items():
        error = (inbox / "Failed" / name / "ERROR.md").read_text()
        for needle in needles:
            assert needle.lower() in error.lower(), (name, needle, error)
    assert (inbox / "Failed" / "loose-file" / "loose-file.txt").read_text() == "not a folder"
    assert sorted(p.name for p in inbox.iterdir()) == ["Done", "Failed", "Queue"]

    for name in expected:
        assert f"Queue/{name}" not in (inbox / "Failed" / name / "ERROR.md").read_text(), name

    listing = json.loads(lorainbox("status", "--json", "--inbox", str(inbox)).stdout)
    states = {j["name"]: j["state"] for j in listing}
    refused = {name: "failed" for name in expected if name != "loose-file"}  # a file, no drop
    assert states == {"good": "done", **refused}

    # A refused drop is a failed job: fixed where it lies, `retry` takes it in again.
    (inbox / "Failed" / "unknown-key" / "recipe.toml").write_text(
        'extends = "tiny-demo"\n[lora]\nrank = 4\n'
    )
    retried = lorainbox("retry", "unknown-key", "--inbox", str(inbox))
    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert "is now queued" in retried.stdout
    assert (inbox / "Queue" / "unknown-key" / "recipe.toml").is_file()
    assert not (inbox / "Queue" / "unknown-key" / "ERROR.md").exists()
