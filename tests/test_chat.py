"""Chat with a result: through Ollama when it answers, through llama.cpp on the GGUF otherwise."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from lorainbox.core.errors import DropError
from lorainbox.export.gguf import modelfile_text
from lorainbox.export.ollama import OllamaClient, register_model
from lorainbox.ui.chat import ChatSession, chat_once, chat_session, find_gguf

from tests.fake_ollama import free_port

if TYPE_CHECKING:
    from tests.fake_ollama import FakeOllama

pytest_plugins = ["tests.fixtures_models"]
SHORT = {"num_predict": 8, "temperature": 0, "seed": 0}


@pytest.fixture
def results(tiny_gguf: Path, tmp_path: Path) -> Path:
    """A Done/ folder as the daemon leaves it: GGUF and Modelfile in a folder named after the model."""
    done = tmp_path / "Done"
    folder = done / "tiny-bot"
    folder.mkdir(parents=True)
    shutil.copy(tiny_gguf, folder / "model.gguf")
    (folder / "Modelfile").write_text(modelfile_text("model.gguf", system="You are a pirate."))
    return done


def dead_client() -> OllamaClient:
    return OllamaClient(f"http://127.0.0.1:{free_port()}")


def test_chat_through_ollama(fake_ollama: FakeOllama, tiny_gguf: Path, results: Path) -> None:
    client = OllamaClient(fake_ollama.url)
    register_model(client, tiny_gguf, "tiny-bot", system="You are a pirate.")
    answer = chat_once("tiny-bot", "Who are you?", client=client, options=SHORT, results=[results])
    assert answer.via == "ollama" and answer.model == "tiny-bot"
    assert isinstance(answer.text, str) and answer.text
    assert answer.note is None
    tokens: list[str] = []
    session = ChatSession("tiny-bot", client=client, options=SHORT)
    again = session.ask("Who are you?", on_token=tokens.append)
    assert again.via == "ollama" and "".join(tokens) == again.text == answer.text
    assert fake_ollama.stats["chats"] == 2


def test_falls_back_to_llama_cpp_when_ollama_is_down(results: Path) -> None:
    answer = chat_once(
        "tiny-bot", "Who are you?", client=dead_client(), options=SHORT, results=[results]
    )
    assert answer.via == "llama.cpp"
    assert answer.model == str(results / "tiny-bot" / "model.gguf")
    assert isinstance(answer.text, str) and answer.text
    assert answer.note and "not running" in answer.note


def test_falls_back_when_ollama_does_not_know_the_model(
    fake_ollama: FakeOllama, results: Path
) -> None:
    client = OllamaClient(fake_ollama.url)
    answer = chat_once("tiny-bot:latest", "Hello", client=client, options=SHORT, results=[results])
    assert answer.via == "llama.cpp"
    assert answer.note and "has no model tiny-bot:latest" in answer.note


def test_a_gguf_path_goes_straight_to_llama_cpp(tiny_gguf: Path) -> None:
    answer = chat_once(tiny_gguf, "Hello", client=dead_client(), options=SHORT)
    assert (answer.via, answer.model, answer.note) == ("llama.cpp", str(tiny_gguf), None)


def test_host_and_explicit_gguf(tiny_gguf: Path, tmp_path: Path) -> None:
    """The demo's call: a name, an OLLAMA_HOST-style address, and the GGUF to fall back on."""
    host = f"127.0.0.1:{free_port()}"
    answer = chat_once("tiny-bot", "Hello", host=host, gguf=tiny_gguf, options=SHORT, results=[])
    assert answer.via == "llama.cpp" and answer.model == str(tiny_gguf)
    assert answer.note and f"http://{host}" in answer.note


def test_session_keeps_history_and_reads_prompts_lazily(results: Path) -> None:
    pulled: list[str] = []

    def prompts() -> Iterator[str]:
        for p in ["Hello", "And again?"]:
            pulled.append(p)
            yield p

    answers = chat_session(
        results / "tiny-bot",
        prompts(),
        client=dead_client(),
        options=SHORT,
        on_token=lambda t: None,
    )
    first = next(answers)
    assert pulled == ["Hello"] and first.via == "llama.cpp"
    assert [a.via for a in answers] == ["llama.cpp"]

    session = ChatSession(results / "tiny-bot", options=SHORT)
    session.ask("Hello")
    session.ask("Again")
    assert [m["role"] for m in session.history] == ["user", "assistant", "user", "assistant"]


def test_find_gguf(results: Path, tiny_gguf: Path) -> None:
    assert find_gguf("tiny-bot", [results]) == results / "tiny-bot" / "model.gguf"
    assert find_gguf("TINY-BOT:latest", [results]) == results / "tiny-bot" / "model.gguf"
    assert find_gguf(results / "tiny-bot") == results / "tiny-bot" / "model.gguf"
    assert find_gguf(tiny_gguf) == tiny_gguf
    assert find_gguf("other-bot", [results]) is None


def test_a_folder_here_without_a_gguf_does_not_hide_the_result(
    results: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The drop a job was made from, in the current folder, has the model's name too."""
    (tmp_path / "here" / "tiny-bot").mkdir(parents=True)
    (tmp_path / "here" / "tiny-bot" / "train.jsonl").write_text("{}\n")
    monkeypatch.chdir(tmp_path / "here")
    assert find_gguf("tiny-bot", [results]) == results / "tiny-bot" / "model.gguf"


def test_an_unknown_name_with_ollama_up_suggests_the_models_there(
    fake_ollama: FakeOllama, results: Path, tiny_gguf: Path
) -> None:
    client = OllamaClient(fake_ollama.url)
    register_model(client, tiny_gguf, "pirate-bot")
    with pytest.raises(DropError) as err:
        chat_once("pirate-bto", "Hello", client=client, results=[results])
    problem = err.value.problems[0]
    assert "has no model pirate-bto" in problem.what
    assert problem.fix.startswith("did you mean pirate-bot? models here: pirate-bot, tiny-bot.")
    assert "register it" in problem.fix and "ollama serve" not in problem.fix


def test_no_ollama_and_no_gguf_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(DropError) as err:
        chat_once("ghost-bot", "Hello", client=dead_client(), results=[tmp_path])
    problem = err.value.problems[0]
    assert "ghost-bot" in problem.what and "not running" in problem.what
    assert "ollama serve" in problem.fix


def test_chat_command_finds_a_model_by_its_recipe_name(tiny_gguf: Path, tmp_path: Path) -> None:
    """Folder ``good``, recipe ``name = "good-one"``: `lorainbox chat good-one` with Ollama away
    answers from the job's GGUF."""
    import os

    from lorainbox.pipeline.jobs import JobStore

    from tests.daemon_proc import lorainbox

    inbox = tmp_path / "inbox"
    folder = inbox / "Done" / "good"
    folder.mkdir(parents=True)
    shutil.copy(tiny_gguf, folder / "model.gguf")
    store = JobStore(Path(os.environ["LORAINBOX_STATE_DIR"]) / "jobs.sqlite")
    store.add(inbox, "good", folder, model="good-one")
    done = lorainbox(
        "chat",
        "good-one",
        "-p",
        "Hello",
        "--inbox",
        inbox,
        OLLAMA_HOST=f"http://127.0.0.1:{free_port()}",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "answered by llama.cpp" in done.stdout and str(folder / "model.gguf") in done.stdout
