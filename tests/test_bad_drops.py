"""The reliability suite, part one: every kind of broken drop we can think of, at once.

One real ``lorainbox run --once`` process takes an inbox holding a valid drop and 35 broken
ones. Each broken drop must end in Failed/ with an ERROR.md naming its problem; the valid job
beside them must train, export and finish undisturbed; nothing may be lost.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.drops import chat_lines, drop_with, fast_drop

TINY = 'extends = "tiny-demo"\n'
CHAT = {"train.jsonl": chat_lines()}


def _png(size: tuple[int, int] = (16, 16)) -> bytes:
    import io

    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def _broken_drops(inbox: Path, outside: Path) -> dict[str, list[str]]:
    """Make the broken drops; return, for each, words its ERROR.md must contain."""
    cases: dict[str, tuple[str | None, dict[str, str | bytes], list[str]]] = {
        # recipes
        "toml-syntax": (TINY + "[train\niters = 3\n", CHAT, ["not valid TOML", "line 2"]),
        "toml-unclosed-string": (TINY + 'name = "oops\n', CHAT, ["not valid TOML"]),
        "unknown-top-key": (TINY + 'base_modle = "x"\n', CHAT, ["base_modle", "base_model"]),
        "misspelt-key": (TINY + "[lora]\nrnak = 4\n", CHAT, ["rnak", "did you mean `rank`"]),
        "synonym-key": (TINY + '[lora]\ntargets = ["q_proj"]\n', CHAT, ["targets", "keys"]),
        "unknown-section": (TINY + "[trian]\niters = 3\n", CHAT, ["trian", "train"]),
        "string-for-int": (TINY + '[train]\nbatch_size = "four"\n', CHAT, ["batch_size", "number"]),
        "string-for-bool": (
            TINY + '[train]\ngrad_checkpoint = "yes"\n',
            CHAT,
            ["grad_checkpoint", "true or false"],
        ),
        "negative-lr": (
            TINY + "[train]\nlearning_rate = -0.1\n",
            CHAT,
            ["learning_rate", "greater than 0"],
        ),
        "absurd-rank": (TINY + "[lora]\nrank = 100000\n", CHAT, ["rank", "less than or equal"]),
        "zero-iters": (TINY + "[train]\niters = 0\n", CHAT, ["iters"]),
        "iters-and-epochs": (TINY + "[train]\niters = 5\nepochs = 2\n", CHAT, ["iters or epochs"]),
        "scale-and-alpha": (TINY + "[lora]\nscale = 2.0\nalpha = 16.0\n", CHAT, ["scale", "alpha"]),
        "bad-window": (
            TINY + '[schedule]\nwindow = "25:00-07:00"\n',
            CHAT,
            ["window", "22:00-07:00"],
        ),
        "bad-enum": (TINY + 'kind = "video"\n', CHAT, ["kind", "llm"]),
        "value-for-table": (TINY + "lora = 5\n", CHAT, ["lora", "table"]),
        "bad-name": (TINY + 'name = "my bot!"\n', CHAT, ["name", "letters"]),
        "valid-fraction-one": (TINY + "[data]\nvalid_fraction = 1.0\n", CHAT, ["valid_fraction"]),
        "missing-extends": ('extends = "tiny-demoo"\n', CHAT, ["tiny-demoo", "did you mean"]),
        "cyclic-extends": ('extends = "loop-a"\n', CHAT, ["cycle", "loop-a", "loop-b"]),
        "no-base-model": ('kind = "llm"\n', CHAT, ["base_model", "required"]),
        "missing-base-folder": (
            TINY + 'base_model = "./no-such-model"\n',
            CHAT,
            ["no-such-model", "does not exist"],
        ),
        "recipe-not-utf8": (
            None,
            {**CHAT, "recipe.toml": b'extends = "tiny-demo"\nname = "caf\xe9"\n'},
            ["UTF-8"],
        ),
        # data
        "no-data": (TINY, {}, ["train"]),
        "empty-data": (TINY, {"train.jsonl": ""}, ["empty"]),
        "blank-lines-only": (TINY, {"train.jsonl": "\n\n  \n"}, ["train.jsonl"]),
        "data-not-utf8": (TINY, {"train.jsonl": b'{"text": "caf\xe9"}\n'}, ["UTF-8", "line 1"]),
        "not-json": (TINY, {"train.jsonl": chat_lines(2) + "{not json}\n"}, ["line 3", "JSON"]),
        "wrong-shape": (
            TINY,
            {"train.jsonl": '{"question": "a", "answer": "b"}\n'},
            ["line 1", "messages"],
        ),
        "no-assistant-turn": (
            TINY,
            {"train.jsonl": json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n"},
            ["assistant"],
        ),
        "mixed-formats": (TINY, {"train.jsonl": chat_lines(1) + '{"text": "plain"}\n'}, ["line 2"]),
        "huge-line": (
            TINY,
            {"train.jsonl": '{"text": "' + "x" * (10 * 1024 * 1024) + '"}\n'},
            ["line 1"],
        ),
        "format-mismatch": (TINY + '[data]\nformat = "completions"\n', CHAT, ["completions"]),
        "dotdot-path": (TINY + '[data]\ntrain = "../secret.jsonl"\n', {}, ["../secret.jsonl"]),
        "absolute-path": (TINY + f'[data]\ntrain = "{outside / "abs.jsonl"}"\n', {}, ["abs.jsonl"]),
        "corrupt-image": (
            'extends = "sd15-style"\n',
            {
                "a.png": _png(),
                "a.txt": "a red square",
                "b.png": b"\x89PNG not really",
                "b.txt": "broken",
            },
            ["b.png"],
        ),
        "caption-without-image": (
            'extends = "sd15-style"\n',
            {"a.png": _png(), "a.txt": "red", "ghost.txt": "no image here"},
            ["ghost"],
        ),
    }
    expected: dict[str, list[str]] = {}
    for name, (recipe, files, needles) in cases.items():
        drop_with(inbox, name, recipe, files)
        expected[name] = needles

    (outside / "abs.jsonl").write_text(chat_lines())
    (outside / "secret.jsonl").write_text(chat_lines())
    link_drop = drop_with(inbox, "symlink-out", TINY, {})
    (link_drop / "train.jsonl").symlink_to(outside / "secret.jsonl")
    expected["symlink-out"] = ["train.jsonl", "outside"]

    recipes = inbox / "recipes"
    recipes.mkdir()
    (recipes / "loop-a.toml").write_text('extends = "loop-b"\n')
    (recipes / "loop-b.toml").write_text('extends = "loop-a"\n')

    (inbox / "a-loose-file.jsonl").write_text(chat_lines())
    expected["a-loose-file"] = ["is a file"]

    # A drop named like a job that is still in the queue (found there at start-up).
    fast_drop(inbox / "Queue", "twin", iters=4)
    drop_with(inbox, "twin", TINY, CHAT)
    expected["twin-2"] = ["already", "twin"]
    return expected


@pytest.mark.timeout(900)
def test_broken_drops_fail_cleanly_beside_a_valid_job(tmp_path: Path) -> None:
    inbox, outside = tmp_path / "inbox", tmp_path / "outside"
    inbox.mkdir()
    outside.mkdir()
    expected = _broken_drops(inbox, outside)
    fast_drop(inbox, "valid")
    assert len(expected) >= 35

    result = subprocess.run(
        [sys.executable, "-m", "lorainbox.ui.cli", "run", "--once", "--inbox", str(inbox)],
        capture_output=True,
        text=True,
        timeout=850,
        env=os.environ.copy(),
    )
    assert result.returncode == 0, result.stderr[-4000:]

    failed = inbox / "Failed"
    missing = {name for name in expected if not (failed / name / "ERROR.md").is_file()}
    assert not missing, (
        f"no ERROR.md for {sorted(missing)}; Failed/ has {sorted(p.name for p in failed.iterdir())}"
    )
    for name, needles in expected.items():
        text = (failed / name / "ERROR.md").read_text().lower()
        assert "how to fix" in text, name
        for needle in needles:
            assert needle.lower() in text, f"{name}: {needle!r} not in\n{text}"

    # Nothing lost: every drop's files are still there, in one place or another.
    assert (failed / "a-loose-file" / "a-loose-file.jsonl").is_file()
    assert (failed / "huge-line" / "train.jsonl").stat().st_size > 10 * 1024 * 1024
    assert (failed / "symlink-out" / "train.jsonl").is_symlink()
    assert (outside / "secret.jsonl").is_file()

    for name in ("valid", "twin"):
        status = json.loads((inbox / "Done" / name / "status.json").read_text())
        assert status["state"] == "done", (name, status)
    assert (inbox / "Done" / "valid" / "model.gguf").is_file()
    assert sorted(p.name for p in inbox.iterdir()) == ["Done", "Failed", "Queue", "recipes"]
    assert list((inbox / "Queue").iterdir()) == []
