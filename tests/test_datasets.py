"""Finding, checking and splitting a drop's data, on real files built in tmp_path."""

from __future__ import annotations

import json
import os
import random
import tracemalloc
from pathlib import Path

import pytest
from lorainbox.core.errors import DropError, Problem
from lorainbox.drop.datasets import detect_kind, inspect_data, prepare_split
from lorainbox.drop.files import MAX_PROBLEMS
from lorainbox.drop.imagelist import ImageItem, read_images
from lorainbox.drop.jsonl import valid_count
from lorainbox.drop.recipe import DataSpec
from lorainbox.drop.summary import DataSummary
from PIL import Image

CHAT = {
    "messages": [
        {"role": "system", "content": "You are a pirate."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Ahoy!"},
    ]
}
TOOLS = {
    "messages": [
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "role": "assistant",
            "tool_calls": [{"type": "function", "function": {"name": "weather", "arguments": {}}}],
        },
        {"role": "tool", "content": "rain"},
        {"role": "assistant", "content": "Rain in Oslo."},
    ],
    "tools": [{"type": "function", "function": {"name": "weather", "parameters": {}}}],
}
COMPLETION = {"prompt": "2+2=", "completion": "4"}
TEXT = {"text": "Once upon a time."}


def lines(*rows: object) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


def make_drop(tmp_path: Path, files: dict[str, str | bytes], recipe: str | None = None) -> Path:
    drop = tmp_path / "drop"
    drop.mkdir(parents=True, exist_ok=True)
    if recipe is not None:
        (drop / "recipe.toml").write_text(recipe)
    for rel, content in files.items():
        path = drop / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return drop


def problems(drop: Path, kind: str = "llm", **spec: object) -> list[Problem]:
    with pytest.raises(DropError) as info:
        inspect_data(drop, DataSpec(**spec), kind=kind)  # type: ignore[arg-type]
    return info.value.problems


def only(drop: Path, kind: str = "llm", **spec: object) -> Problem:
    found = problems(drop, kind, **spec)
    assert len(found) == 1, found
    return found[0]


def image(path: Path, size: tuple[int, int] = (32, 24), fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 80, 40)).save(path, format=fmt)
    return path


# --- accepted formats -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "kind", "chars"),
    [
        (CHAT, "chat", len("You are a pirate.Hello" + "Ahoy!")),
        (TOOLS, "chat", len("Weather in Oslo?rainRain in Oslo.")),
        (COMPLETION, "completions", 5),
        (TEXT, "text", len(TEXT["text"])),
    ],
)
def test_each_format_is_accepted(tmp_path: Path, row: dict, kind: str, chars: int) -> None:
    drop = make_drop(tmp_path, {"train.jsonl": lines(row, "", "   ", row, row)})
    summary = inspect_data(drop, DataSpec(), kind="llm")
    assert summary.kind == kind
    assert summary.train == [drop / "train.jsonl"] and summary.valid == []
    assert (summary.train_examples, summary.valid_examples) == (2, 1)
    assert summary.stats["examples"] == 3
    assert summary.stats["max_chars"] == chars and summary.stats["mean_chars"] == chars
    assert summary.stats["longest"] == "train.jsonl, line 1"


def test_declared_format_that_matches_is_accepted(tmp_path: Path) -> None:
    drop = make_drop(tmp_path, {"train.jsonl": lines(COMPLETION)})
    assert inspect_data(drop, DataSpec(format="completions"), kind="llm").kind == "completions"


def test_bom_and_crlf_are_accepted(tmp_path: Path) -> None:
    body = (json.dumps(TEXT) + "\r\n").encode() * 2
    drop = make_drop(tmp_path, {"train.jsonl": b"\xef\xbb\xbf" + body})
    assert inspect_data(drop, DataSpec(), kind="llm").stats["examples"] == 2


def test_train_valid_and_test_files_follow_mlx_lm(tmp_path: Path) -> None:
    drop = make_drop(
        tmp_path,
        {
            "train.jsonl": lines(CHAT, CHAT, CHAT),
            "valid.jsonl": lines(CHAT),
            "test.jsonl": "this is never read\n",
            "notes.jsonl": "nor this\n",
        },
    )
    summary = inspect_data(drop, DataSpec(), kind="llm")
    assert summary.train == [drop / "train.jsonl"] and summary.valid == [drop / "valid.jsonl"]
    assert (summary.train_examples, summary.valid_examples) == (3, 1)
    assert summary.stats["ignored"] == "notes.jsonl, test.jsonl"


def test_a_single_jsonl_of_any_name_is_the_training_data(tmp_path: Path) -> None:
    drop = make_drop(
        tmp_path,
        {
            "pirate.jsonl": lines(CHAT, CHAT),
            "valid.jsonl": lines(CHAT),
            "Readme.md": "about",
            "recipe.toml": 'extends = "chat-lora"\n',
        },
    )
    summary = inspect_data(drop, DataSpec(), kind="llm")
    assert summary.train == [drop / "pirate.jsonl"] and summary.valid == [drop / "valid.jsonl"]


def test_data_folder_is_searched_after_the_drop(tmp_path: Path) -> None:
    drop = make_drop(
        tmp_path, {"data/train.jsonl": lines(TEXT, TEXT), "data/valid.jsonl": lines(TEXT)}
    )
    summary = inspect_data(drop, DataSpec(), kind="llm")
    assert summary.train == [drop / "data/train.jsonl"]
    assert summary.valid == [drop / "data/valid.jsonl"]


def test_hidden_and_partial_files_are_not_data(tmp_path: Path) -> None:
    junk = "not json at all\n"
    drop = make_drop(
        tmp_path,
        {
            "chat.jsonl": lines(CHAT, CHAT),
            ".DS_Store": b"\x00\x01",
            "._chat.jsonl": b"\x00\x05\x16\x07",
            "~$chat.jsonl": junk,
            "more.jsonl.part": junk,
            "more.jsonl.download": junk,
            "more.jsonl.crdownload": junk,
            ".lorainbox/data/train.jsonl": junk,
            "ERROR.md": "# old error",
            "status.json": "{}",
        },
    )
    summary = inspect_data(drop, DataSpec(), kind="llm")
    assert summary.train == [drop / "chat.jsonl"] and summary.stats["examples"] == 2


def test_paths_given_in_the_recipe(tmp_path: Path) -> None:
    drop = make_drop(
        tmp_path,
        {
            "sets/a.jsonl": lines(TEXT, TEXT),
            "sets/b.jsonl": lines(TEXT),
            "x/train.jsonl": lines(TEXT),
        },
    )
    summary = inspect_data(drop, DataSpec(train="sets/a.jsonl", valid="sets/b.jsonl"), kind="llm")
    assert (summary.train_examples, summary.valid_examples) == (2, 1)
    inside = str(drop / "sets" / "a.jsonl")  # an absolute path inside the drop is fine
    assert inspect_data(drop, DataSpec(train=inside), kind="llm").train == [drop / "sets/a.jsonl"]
    folder = inspect_data(drop, DataSpec(train="x"), kind="llm")
    assert folder.train == [drop / "x/train.jsonl"]


# --- problems with finding the data ---------------------------------------------------------


def test_no_data_at_all(tmp_path: Path) -> None:
    drop = make_drop(tmp_path, {"notes.txt": "hello"})
    p = only(drop)
    assert p.what == "no training data found in the drop"
    assert p.where == "the drop folder (drop)"
    assert "train.jsonl" in p.fix and '"messages"' in p.fix


def test_several_candidates_without_train_jsonl_are_listed(tmp_path: Path) -> None:
    drop = make_drop(tmp_path, {"a.jsonl": lines(TEXT), "b.jsonl": lines(TEXT)})
    p = only(drop)
    assert p.what == "found several data files and none is named train.jsonl: a.jsonl, b.jsonl"
    assert "rename" in p.fix and '[data] train = "a.jsonl"' in p.fix


def test_valid_without_train(tmp_path: Path) -> None:
    p = only(make_drop(tmp_path, {"valid.jsonl": lines(TEXT), "test.jsonl": lines(TEXT)}))
    assert p.what == "found test.jsonl, valid.jsonl but no train.jsonl"
    assert "add train.jsonl" in p.fix


def test_missing_file_named_in_the_recipe_points_at_its_line(tmp_path: Path) -> None:
    recipe = 'extends = "chat-lora"\n\n[data]\ntrain = "trian.jsonl"\n'
    drop = make_drop(tmp_path, {"train.jsonl": lines(TEXT)}, recipe)
    p = only(drop, train="trian.jsonl")
    assert p.what == '[data] train = "trian.jsonl": there is no such file or folder in the drop'
    assert p.where == "recipe.toml, line 4"
    assert p.fix.startswith('did you mean "train.jsonl"?')


@pytest.mark.parametrize("given", ["../secret.jsonl", "data/../../secret.jsonl", "ABSOLUTE"])
def test_paths_out_of_the_drop_are_refused(tmp_path: Path, given: str) -> None:
    secret = tmp_path / "secret.jsonl"
    secret.write_text(lines(TEXT))
    given = str(secret) if given == "ABSOLUTE" else given
    drop = make_drop(tmp_path, {}, f'[data]\ntrain = "{given}"\n')
    p = only(drop, train=given)
    assert p.what == f'[data] train = "{given}" points outside the drop (to {secret})'
    assert p.where == "recipe.toml, line 2"
    assert "inside the drop folder" in p.fix


def test_symlinked_file_out_of_the_drop_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.jsonl"
    secret.write_text(lines(TEXT))
    drop = make_drop(tmp_path, {})
    (drop / "train.jsonl").symlink_to(secret)
    p = only(drop)
    assert p.what == f"train.jsonl is a link to {secret}, outside the drop"
    assert p.where == "train.jsonl" and "copy the data into the drop" in p.fix


def test_symlinked_folder_out_of_the_drop_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "train.jsonl").write_text(lines(TEXT))
    drop = make_drop(tmp_path, {})
    (drop / "data").symlink_to(outside, target_is_directory=True)
    p = only(drop)
    assert p.what == f"data is a link to {outside}, outside the drop" and p.where == "data"
    p = only(drop, train="data/train.jsonl")
    assert p.what.startswith('[data] train = "data/train.jsonl" points outside the drop')


def test_symlinks_inside_the_drop_are_fine(tmp_path: Path) -> None:
    drop = make_drop(tmp_path, {"sets/chat.jsonl": lines(CHAT)})
    (drop / "train.jsonl").symlink_to(drop / "sets" / "chat.jsonl")
    assert inspect_data(drop, DataSpec(), kind="llm").stats["examples"] == 1


def test_images_for_a_language_model_and_jsonl_for_an_image_model(tmp_path: Path) -> None:
    drop = make_drop(tmp_path, {"a.txt": "a cat"}, 'extends = "chat-lora"\nkind = "llm"\n')
    image(drop / "a.png")
    p = only(drop)
    assert p.what == "this drop holds images, but the recipe trains a language model"
    assert p.where == "recipe.toml, line 2" and 'extends = "sd15-style"' in p.fix
    other = make_drop(tmp_path / "o", {"train.jsonl": lines(CHAT)})
    p = only(other, kind="diffusion")
    assert "holds JSON Lines" in p.what and "image model" in p.what
    assert 'extends = "chat-lora"' in p.fix


def test_format_that_cannot_fit_the_kind(tmp_path: Path) -> None:
    drop = make_drop(tmp_path, {"train.jsonl": lines(CHAT)}, '[data]\nformat = "images"\n')
    p = only(drop, format="images")
    assert p.what == '[data] format = "images" does not fit kind = "llm"'
    assert p.where == "recipe.toml, line 2" and 'format = "auto"' in p.fix


# --- problems inside JSONL files ------------------------------------------------------------


def test_empty_file(tmp_path: Path) -> None:
    p = only(make_drop(tmp_path, {"train.jsonl": ""}))
    assert (p.what, p.where) == ("train.jsonl is empty", "train.jsonl")
    assert "add examples, one per line" in p.fix
    p = only(make_drop(tmp_path / "b", {"train.jsonl": "\n  \n\n"}))
    assert p.what == "train.jsonl holds no examples (only blank lines)"


def test_not_utf8_names_the_line_and_column(tmp_path: Path) -> None:
    body = lines(TEXT).encode() + b'{"text": "caf\xe9"}\n' + b'{"text": "na\xefve"}\n'
    p = only(make_drop(tmp_path, {"train.jsonl": body}))
    assert p.what == "line 2 is not UTF-8 text (byte 0xE9 at column 14); 2 lines have such bytes"
    assert p.where == "train.jsonl, line 2" and "save the file as UTF-8" in p.fix


def test_utf16_file(tmp_path: Path) -> None:
    p = only(make_drop(tmp_path, {"train.jsonl": lines(TEXT).encode("utf-16")}))
    assert p.what == "train.jsonl is UTF-16 text, not UTF-8" and "UTF-8" in p.fix


def test_invalid_json_gives_the_column(tmp_path: Path) -> None:
    drop = make_drop(tmp_path, {"train.jsonl": lines(TEXT, '{"text": "a" "b"}', TEXT)})
    p = only(drop)
    assert p.what == "line 2 is not valid JSON: Expecting ',' delimiter (column 14)"
    assert p.where == "train.jsonl, line 2"
    assert "column 14" in p.fix and "single line" in p.fix


CUT = '{"messages": [{"role": "user", "content": "hello"}'  # 50 characters, cut short


@pytest.mark.parametrize(
    ("line", "ending", "what"),
    [
        (
            CUT,
            "\n",
            "line 3 ends before its JSON object is complete: Expecting ',' delimiter (column 51)",
        ),
        (
            CUT,
            "\r\n",
            "line 3 ends before its JSON object is complete: Expecting ',' delimiter (column 51)",
        ),
        (
            '{"text": "Once upon',
            "\n",
            "line 3 ends before its JSON object is complete: Unterminated string starting (column 10)",
        ),
        (
            '{"text": "Once upon',
            "\r\n",
            "line 3 ends before its JSON object is complete: Unterminated string starting (column 10)",
        ),
        (
            '{"text": "a",',
            "\r\n",
            "line 3 ends before its JSON object is complete: Expecting property name enclosed in double quotes (column 14)",
        ),
        (
            '{"text": "a",}',
            "\n",
            "line 3 is not valid JSON: Expecting property name enclosed in double quotes (column 14)",
        ),
        ('{"text": "a"},', "\r\n", "line 3 is not valid JSON: Extra data (column 14)"),
        (
            '\t{"text": "a" "b"}',
            "\r\n",
            "line 3 is not valid JSON: Expecting ',' delimiter (column 15)",
        ),
    ],
)
def test_broken_line_is_placed_at_its_line_and_column(
    tmp_path: Path, line: str, ending: str, what: str
) -> None:
    """The column counts within the broken line itself, whatever the line endings; json alone
    would place a line cut short at the start of the next line."""
    body = "".join(
        row + ending for row in [json.dumps(TEXT), json.dumps(TEXT), line, json.dumps(TEXT)]
    )
    p = only(make_drop(tmp_path, {"train.jsonl": body.encode()}))
    assert p.what == what
    assert p.where == "train.jsonl, line 3"
    assert ("looks cut off" in p.fix) is ("ends before" in what)


def test_pretty_printed_json_is_recognised(tmp_path: Path) -> None:
    drop = make_drop(tmp_path, {"train.jsonl": json.dumps([TEXT, TEXT], indent=2)})
    p = only(drop)
    assert p.what == "train.jsonl looks like formatted JSON spread over many lines, not JSON Lines"
    assert p.where == "train.jsonl, line 1" and "jq -c" in p.fix


def msg(content: object = "x", role: object = "user") -> dict:
    return {"role": role, "content": content}


@pytest.mark.parametrize(
    ("row", "what", "fix"),
    [
        ([CHAT], "the example is a JSON list, not an object", "one object on its own line"),
        ("3", "the example is a JSON number, not an object", '{"text": "..."}'),
        ({"messages": "hi"}, '"messages" is a string, not a list', '"messages": [{"role"'),
        ({"messages": []}, '"messages" is an empty list', '"role": "assistant"'),
        ({"messages": ["hi"]}, "message 1 is a string, not an object", '{"role": "..."'),
        ({"messages": [{"content": "hi"}]}, 'message 1 has no "role"', '"role": "system"'),
        ({"messages": [{"role": "user"}]}, 'message 1 (user) has no "content"', '"content"'),
        (
            {"messages": [msg(), msg(role="human")]},
            'message 2 has the role "human", which chat templates do not know',
            'write "user" instead',
        ),
        (
            {"messages": [msg(role="narrator")]},
            'message 1 has the role "narrator", which chat templates do not know',
            "the roles are system, user, assistant and tool",
        ),
        (
            {"messages": [msg([{"type": "text", "text": "hi"}])]},
            "message 1 (user) has content that is a list, not a string",
            "one string",
        ),
        ({"messages": [msg()]}, 'no message has the role "assistant"', '{"role": "assistant"'),
        (
            {"messages": [msg(), msg(" ", "assistant")]},
            "every assistant message is empty",
            "replies",
        ),
        ({**CHAT, "tools": {"a": 1}}, '"tools" is not a list of objects', "function definitions"),
        ({"prompt": "a", "completion": ""}, '"completion" is empty', "answer"),
        ({"prompt": "a", "completion": 4}, '"completion" is a number, not a string', "in quotes"),
        ({"prompt": "a"}, 'the example has "prompt" but no "completion"', 'add "completion"'),
        ({"text": None}, '"text" is a null, not a string', "in quotes"),
        ({"text": ""}, '"text" is empty', "remove the line"),
        (
            {"conversations": [{"from": "human", "value": "hi"}]},
            'the example has "conversations" (ShareGPT style) instead of "messages"',
            '"from" to "role"',
        ),
        (
            {"instruction": "a", "input": "", "output": "b"},
            'the example has "instruction" and "output" (Alpaca style)',
            '{"prompt": instruction',
        ),
        (
            {"question": "a", "answer": "b"},
            'the example has "answer", "question", but none of "messages", "prompt" + "completion" or "text"',
            '{"prompt": "...", "completion": "..."}',
        ),
        ({}, 'the example has no keys, but none of "messages"', '{"text": "..."}'),
    ],
)
def test_wrong_shapes(tmp_path: Path, row: object, what: str, fix: str) -> None:
    drop = make_drop(tmp_path, {"train.jsonl": lines(CHAT, row)})
    p = only(drop)
    assert p.where == "train.jsonl, line 2"
    assert p.what.startswith(f"line 2: {what}"), p.what
    assert fix in p.fix, p.fix


def test_assistant_tool_call_without_content_is_fine(tmp_path: Path) -> None:
    drop = make_drop(tmp_path, {"train.jsonl": lines(TOOLS)})
    assert inspect_data(drop, DataSpec(), kind="llm").kind == "chat"


def test_mixed_formats_in_one_file(tmp_path: Path) -> None:
    drop = make_drop(tmp_path, {"train.jsonl": lines(CHAT, CHAT, COMPLETION, TEXT, CHAT)})
    p = only(drop)
    assert p.what == (
        "line 3 is completions data, but the data starts as chat (train.jsonl, line 1) "
        "(2 lines in all); one drop holds one format"
    )
    assert p.where == "train.jsonl, line 3" and '{"messages": [' in p.fix


def test_valid_file_in_another_format(tmp_path: Path) -> None:
    drop = make_drop(tmp_path, {"train.jsonl": lines(CHAT), "valid.jsonl": lines(TEXT)})
    p = only(drop)
    assert p.where == "valid.jsonl, line 1"
    assert p.what.startswith(
        "line 1 is text data, but the data starts as chat (train.jsonl, line 1)"
    )


def test_format_that_disagrees_with_the_recipe(tmp_path: Path) -> None:
    drop = make_drop(tmp_path, {"train.jsonl": lines(COMPLETION, COMPLETION)})
    p = only(drop, format="chat")
    assert p.what == (
        'line 1 is completions data, but the recipe says [data] format = "chat" (2 lines in all)'
    )
    assert p.where == "train.jsonl, line 1"
    assert 'set format = "completions" (or "auto")' in p.fix


def test_a_ten_megabyte_line_is_refused_without_reading_it_into_memory(tmp_path: Path) -> None:
    drop = make_drop(tmp_path, {})
    with open(drop / "train.jsonl", "w") as f:
        f.write(lines(TEXT))
        f.write('{"text": "' + "a" * (10 * 1024 * 1024) + '"}\n')
        f.write("{broken\n")
    tracemalloc.start()
    try:
        found = problems(drop)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 * 1024 * 1024, peak
    assert [p.where for p in found] == ["train.jsonl, line 2", "train.jsonl, line 3"]
    assert found[0].what == "line 2 is 10.5 MB long; one line may hold at most 1 MB"
    assert "split it into several examples" in found[0].fix


def test_all_problems_are_reported_at_once_and_capped(tmp_path: Path) -> None:
    drop = make_drop(
        tmp_path,
        {"train.jsonl": lines(CHAT, "nope", {"text": 1}), "valid.jsonl": lines("[1,"), "x.txt": ""},
    )
    assert [p.where for p in problems(drop)] == [
        "train.jsonl, line 2",
        "train.jsonl, line 3",
        "valid.jsonl, line 1",
    ]
    many = make_drop(tmp_path / "many", {"train.jsonl": lines(*['{"text": '] * 50)})
    found = problems(many)
    assert len(found) == MAX_PROBLEMS + 1
    assert found[-1].what == f"only the first {MAX_PROBLEMS} problems are listed; there may be more"


# --- the split ------------------------------------------------------------------------------


def chat_drop(tmp_path: Path, n: int) -> Path:
    rows = [{"messages": [msg(f"q{i}"), msg(f"a{i}", "assistant")], "id": i} for i in range(n)]
    return make_drop(tmp_path, {"train.jsonl": lines(*rows)})


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize(
    ("n", "fraction", "expected"),
    [(1, 0.1, 0), (2, 0.1, 1), (3, 0.34, 1), (10, 0.1, 1), (50, 0.1, 5), (50, 0.0, 0), (4, 0.9, 3)],
)
def test_valid_count(n: int, fraction: float, expected: int) -> None:
    assert valid_count(n, fraction) == expected


def test_split_is_seeded_and_sized(tmp_path: Path) -> None:
    drop = chat_drop(tmp_path, 50)
    summary = inspect_data(drop, DataSpec(), kind="llm")
    assert (summary.train_examples, summary.valid_examples) == (45, 5)
    train, valid = prepare_split(summary, tmp_path / "out", valid_fraction=0.1, seed=7)
    assert valid is not None
    rows_t, rows_v = read_jsonl(train), read_jsonl(valid)
    assert (len(rows_t), len(rows_v)) == (45, 5)
    assert (summary.train_examples, summary.valid_examples) == (45, 5)
    contents = [r["messages"][0]["content"] for r in rows_t + rows_v]
    assert sorted(contents) == sorted(f"q{i}" for i in range(50))
    assert all(set(r) == {"messages"} for r in rows_t)  # stray keys such as "id" are dropped
    again = inspect_data(drop, DataSpec(), kind="llm")
    prepare_split(again, tmp_path / "again", valid_fraction=0.1, seed=7)
    assert (tmp_path / "again/valid.jsonl").read_bytes() == valid.read_bytes()
    other = inspect_data(drop, DataSpec(), kind="llm")
    prepare_split(other, tmp_path / "other", valid_fraction=0.1, seed=8)
    assert (tmp_path / "other/valid.jsonl").read_bytes() != valid.read_bytes()
    expected = sorted(random.Random(7).sample(range(50), 5))
    assert [int(r["messages"][0]["content"][1:]) for r in rows_v] == expected


def test_split_of_one_example_has_no_valid_file(tmp_path: Path) -> None:
    summary = inspect_data(chat_drop(tmp_path, 1), DataSpec(), kind="llm")
    out = tmp_path / "out"
    out.mkdir()
    (out / "valid.jsonl").write_text("stale\n")
    train, valid = prepare_split(summary, out, valid_fraction=0.1, seed=0)
    assert valid is None and not (out / "valid.jsonl").exists()
    assert len(read_jsonl(train)) == 1
    two = inspect_data(chat_drop(tmp_path / "two", 2), DataSpec(), kind="llm")
    _, valid = prepare_split(two, tmp_path / "out2", valid_fraction=0.1, seed=0)
    assert valid is not None and len(read_jsonl(valid)) == 1


def test_given_valid_file_is_used_whole_and_normalised(tmp_path: Path) -> None:
    extra = {**COMPLETION, "tools": [{"type": "function"}], "source": "web"}
    drop = make_drop(
        tmp_path,
        {
            "train.jsonl": lines(COMPLETION, extra, COMPLETION),
            "valid.jsonl": lines({"prompt": "é", "completion": "ü"}),
        },
    )
    summary = inspect_data(drop, DataSpec(), kind="llm")
    train, valid = prepare_split(summary, tmp_path / "out", valid_fraction=0.5, seed=0)
    assert read_jsonl(train) == [
        COMPLETION,
        {**COMPLETION, "tools": [{"type": "function"}]},
        COMPLETION,
    ]
    assert (
        valid is not None
        and valid.read_text(encoding="utf-8") == '{"prompt": "é", "completion": "ü"}\n'
    )


def test_split_is_idempotent_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    drop = chat_drop(tmp_path, 20)
    out = tmp_path / "out"
    first = prepare_split(
        inspect_data(drop, DataSpec(), kind="llm"), out, valid_fraction=0.2, seed=3
    )
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    second = prepare_split(
        inspect_data(drop, DataSpec(), kind="llm"), out, valid_fraction=0.2, seed=3
    )
    assert first == second
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(before) == ["train.jsonl", "valid.jsonl"]


# --- images ---------------------------------------------------------------------------------


def test_images_with_caption_sidecars(tmp_path: Path) -> None:
    drop = make_drop(tmp_path, {"cat.txt": "a  cat\n", "dog.txt": "a dog", "README.txt": "hi"})
    image(drop / "cat.png", (64, 48))
    image(drop / "dog.JPG", (20, 30), "JPEG")
    summary = inspect_data(drop, DataSpec(), kind="diffusion")
    assert summary.kind == "images" and summary.train == [drop] and summary.valid == []
    assert summary.items == [
        ImageItem(drop / "cat.png", "a cat", 1),
        ImageItem(drop / "dog.JPG", "a dog", 1),
    ]
    assert (summary.train_examples, summary.valid_examples) == (2, 0)
    assert summary.stats | {} == {
        "format": "images",
        "images": 2,
        "examples": 2,
        "repeats": 1,
        "mean_caption_chars": 5.0,
        "min_size": "20x30",
        "max_size": "64x48",
        "min_side": 20,
    }


def test_images_in_an_images_folder_and_webp_bmp(tmp_path: Path) -> None:
    drop = make_drop(tmp_path, {"images/a.txt": "a", "images/b.txt": "b"})
    image(drop / "images/a.webp", fmt="WEBP")
    image(drop / "images/b.bmp", fmt="BMP")
    assert len(inspect_data(drop, DataSpec(), kind="diffusion").items) == 2


def test_caption_and_image_mismatches(tmp_path: Path) -> None:
    drop = make_drop(tmp_path, {"a.txt": "one", "ghost.txt": "boo", "c.txt": " \n"})
    for name in ("a", "b", "c"):
        image(drop / f"{name}.png")
    found = {p.where: p for p in problems(drop, "diffusion")}
    assert found["ghost.txt"].what == "the caption ghost.txt has no image beside it"
    assert "add the image (ghost.png" in found["ghost.txt"].fix
    assert found["b.png"].what == "the image b.png has no caption"
    assert found["b.png"].fix == "add b.txt beside it with a caption, or remove the image"
    assert found["c.txt"].what == "the caption c.txt is empty"
    assert len(found) == 3


def test_images_without_any_captions(tmp_path: Path) -> None:
    drop = make_drop(tmp_path, {})
    image(drop / "a.png")
    image(drop / "b.png")
    p = only(drop, "diffusion")
    assert p.what == "the 2 images in the drop folder (drop) have no captions"
    assert "a.txt for a.png" in p.fix and "metadata.csv" in p.fix and "10_mystyle/" in p.fix


def test_corrupt_and_truncated_images(tmp_path: Path) -> None:
    drop = make_drop(tmp_path, {"noise.png": random.Random(0).randbytes(2000), "noise.txt": "n"})
    whole = image(drop / "cut.jpg", (256, 256), "JPEG").read_bytes()
    (drop / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    (drop / "cut.txt").write_text("cut")
    found = {p.where: p for p in problems(drop, "diffusion")}
    assert found["noise.png"].what.startswith("the image noise.png cannot be read (cannot identify")
    assert found["cut.jpg"].what.startswith("the image cut.jpg cannot be read (")
    assert found["cut.jpg"].fix == "open it and export it again as PNG or JPEG, or remove it"


def test_symlinked_image_out_of_the_drop(tmp_path: Path) -> None:
    outside = image(tmp_path / "private.png")
    drop = make_drop(tmp_path, {"a.txt": "a", "p.txt": "p"})
    image(drop / "a.png")
    (drop / "p.png").symlink_to(outside)
    p = only(drop, "diffusion")
    assert (p.what, p.where) == (f"p.png is a link to {outside}, outside the drop", "p.png")


@pytest.mark.parametrize(
    "header", ["filename,prompt", "file_name,text", "Filename;Prompt", "\ufefffilename,prompt"]
)
def test_metadata_csv(tmp_path: Path, header: str) -> None:
    sep = ";" if ";" in header else ","
    body = f'{header}\nimgs/a.png{sep}"a red fox, running"\n\nb.jpg{sep}a blue bird\n'
    drop = make_drop(tmp_path, {"metadata.csv": body})
    image(drop / "imgs/a.png")
    image(drop / "b.jpg", fmt="JPEG")
    summary = inspect_data(drop, DataSpec(), kind="diffusion")
    assert summary.train == [drop / "metadata.csv"]
    assert [(i.path, i.caption) for i in summary.items] == [
        (drop / "imgs/a.png", "a red fox, running"),
        (drop / "b.jpg", "a blue bird"),
    ]


def test_metadata_csv_problems(tmp_path: Path) -> None:
    body = "filename,prompt\na.png,ok\nmissing.png,a ghost\nb.png,\n../out.png,escape\nnotes.md,x\n"
    drop = make_drop(tmp_path, {"metadata.csv": body})
    (tmp_path / "out.png").write_bytes(b"")
    for name in ("a", "b", "unlisted"):
        image(drop / f"{name}.png")
    found = problems(drop, "diffusion")
    by_where = {p.where: p for p in found}
    assert by_where["metadata.csv, line 3"].what == (
        'the row names "missing.png", which is not in the drop folder (drop)'
    )
    assert "relative to the folder of metadata.csv" in by_where["metadata.csv, line 3"].fix
    assert by_where["metadata.csv, line 4"].what == 'the row for "b.png" has an empty prompt'
    assert (
        by_where["metadata.csv, line 4"].fix
        == "write a caption after the comma: b.png,a photo of ..."
    )
    escape = by_where["metadata.csv, line 5"]
    assert escape.what == f"../out.png points outside the drop (to {tmp_path / 'out.png'})"
    assert "copy the data into the drop folder" in escape.fix
    assert by_where["metadata.csv, line 6"].what.startswith('"notes.md" is not an image')
    assert by_where["unlisted.png"].what == "the image unlisted.png is not listed in metadata.csv"
    assert "add a row `unlisted.png,<caption>`" in by_where["unlisted.png"].fix
    # b.png is named, with an empty prompt: one problem for it, not also "not listed"
    assert len(found) == 5


def test_metadata_csv_without_header(tmp_path: Path) -> None:
    drop = make_drop(tmp_path, {"metadata.csv": "a.png,a fox\n"})
    image(drop / "a.png")
    p = only(drop, "diffusion")
    assert (p.what, p.where) == ("metadata.csv has no header row", "metadata.csv, line 1")
    assert "`filename,prompt`" in p.fix
    (drop / "metadata.csv").write_text("image,caption\na.png,a fox\n")
    p = only(drop, "diffusion")
    assert (
        p.what
        == "metadata.csv needs the columns filename and prompt; its header has: image, caption"
    )


def test_kohya_repeat_folders(tmp_path: Path) -> None:
    drop = make_drop(tmp_path, {"10_fox/a.txt": "a fox", "10_fox/b.txt": "b fox"})
    image(drop / "10_fox/a.png")
    image(drop / "10_fox/b.png")
    image(drop / "3_blue bird/c.png")  # no captions at all: the folder's name is the caption
    summary = inspect_data(drop, DataSpec(), kind="diffusion")
    assert [(i.caption, i.repeats) for i in summary.items] == [
        ("a fox", 10),
        ("b fox", 10),
        ("blue bird", 3),
    ]
    assert summary.train_examples == 23
    assert summary.stats["images"] == 3 and summary.stats["repeats"] == 10
    assert summary.stats["folders"] == "10_fox (10x), 3_blue bird (3x)"
    assert summary.train == [drop, drop / "10_fox", drop / "3_blue bird"]
    path, valid = prepare_split(summary, tmp_path / "out", valid_fraction=0.1, seed=0)
    assert valid is None and path.name == "images.jsonl"
    assert read_jsonl(path)[2] == {
        "path": str((drop / "3_blue bird/c.png").resolve()),
        "caption": "blue bird",
        "repeats": 3,
    }


def test_kohya_folder_problems(tmp_path: Path) -> None:
    drop = make_drop(tmp_path, {"5_fox/a.txt": "a fox", "2_empty/x.txt": "x"})
    image(drop / "5_fox/a.png")
    image(drop / "5_fox/b.png")
    image(drop / "0_cat/c.png")
    found = {p.where: p for p in problems(drop, "diffusion")}
    assert found["0_cat/"].what == "the folder 0_cat/ repeats its images 0 times"
    assert found["0_cat/"].fix.startswith("rename it to 1_cat")
    assert found["5_fox/b.png"].what == "the image b.png has no caption"
    assert found["2_empty/"].what == "the folder 2_empty/ holds no images"
    assert len(found) == 3


def test_diffusion_refuses_a_valid_file(tmp_path: Path) -> None:
    drop = make_drop(tmp_path, {"a.txt": "a"}, '[data]\nvalid = "v.jsonl"\n')
    image(drop / "a.png")
    p = only(drop, "diffusion", valid="v.jsonl")
    assert p.where == "recipe.toml, line 2" and "no validation set" in p.what


def test_image_sizes_are_read_when_checked_and_again_when_the_list_is_loaded(
    tmp_path: Path,
) -> None:
    drop = make_drop(tmp_path, {"5_fox/a.txt": "a fox"})
    image(drop / "5_fox/a.png", (64, 48))
    summary = inspect_data(drop, DataSpec(), kind="diffusion")
    assert [i.size for i in summary.items] == [(64, 48)]
    listing, _ = prepare_split(summary, tmp_path / "out", valid_fraction=0.1, seed=0)
    image(drop / "5_fox/a.png", (40, 80))
    loaded = read_images(listing)
    assert loaded == [ImageItem((drop / "5_fox/a.png").resolve(), "a fox", 5)]
    assert loaded[0].size == (40, 80)


def test_prepare_split_for_images_replaces_llm_files(tmp_path: Path) -> None:
    summary = DataSummary("images", [], [], 2, 0, {}, [ImageItem(tmp_path / "é.png", "ça", 2)])
    out = tmp_path / "out"
    out.mkdir()
    (out / "valid.jsonl").write_text("old")
    path, valid = prepare_split(summary, out, valid_fraction=0.1, seed=0)
    assert valid is None and sorted(os.listdir(out)) == ["images.jsonl"]
    assert read_jsonl(path) == [{"path": str(tmp_path / "é.png"), "caption": "ça", "repeats": 2}]


# --- detect_kind ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("files", "kind"),
    [
        ({"train.jsonl": lines(CHAT)}, "chat"),
        ({"x.jsonl": lines(COMPLETION)}, "completions"),
        ({"data/train.jsonl": lines("", TEXT)}, "text"),
        ({"train.jsonl": "{oops\n"}, "chat"),  # broken data still goes to the language-model recipe
        ({"metadata.csv": "filename,prompt\n"}, "images"),
        ({"notes.txt": "hi", "recipe.toml": ""}, None),
        ({".hidden.jsonl": lines(TEXT), "a.jsonl.part": lines(TEXT)}, None),
    ],
)
def test_detect_kind(tmp_path: Path, files: dict[str, str], kind: str | None) -> None:
    assert detect_kind(make_drop(tmp_path, files)) == kind


@pytest.mark.parametrize("rel", ["a.png", "images/a.jpg", "data/a.webp", "10_fox/a.png"])
def test_detect_kind_images(tmp_path: Path, rel: str) -> None:
    drop = make_drop(tmp_path, {})
    image(drop / rel)
    assert detect_kind(drop) == "images"


def test_image_paths_given_in_the_recipe(tmp_path: Path) -> None:
    drop = make_drop(
        tmp_path,
        {"pics/a.txt": "a fox", "sets/m.csv": "file_name,text\n../pics/a.png,a red fox\n"},
        '[data]\ntrain = "train.jsonl"\n',
    )
    image(drop / "pics/a.png")
    (drop / "train.jsonl").write_text(lines(TEXT))
    folder = inspect_data(drop, DataSpec(train="pics"), kind="diffusion")
    assert [i.caption for i in folder.items] == ["a fox"]
    csv_file = inspect_data(drop, DataSpec(train="sets/m.csv"), kind="diffusion")
    assert [i.caption for i in csv_file.items] == ["a red fox"]
    p = only(drop, "diffusion", train="train.jsonl")
    assert p.where == "recipe.toml, line 2"
    assert p.what.startswith('[data] train = "train.jsonl" is a file, but image training needs')
