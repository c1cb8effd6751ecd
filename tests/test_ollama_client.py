"""The Ollama client and register_model against the fake Ollama (a real HTTP server)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tracemalloc
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from lorainbox.core.errors import DropError
from lorainbox.export.ollama import (
    UPLOADING,
    OllamaClient,
    OllamaError,
    OllamaModelNotFound,
    OllamaUnavailable,
    ollama_base_url,
    register_model,
    sha256_file,
    validate_model_name,
)
from lorainbox.export.ollama_rules import suggest_model_name
from lorainbox.export.templates import CHATML

from tests.fake_ollama import free_port

if TYPE_CHECKING:
    from tests.fake_ollama import FakeOllama
    from tests.fixtures_models import Exported

pytest_plugins = ["tests.fixtures_models"]
REPO = Path(__file__).resolve().parent.parent
STAMP1, STAMP2 = datetime(2026, 11, 22, 9, 30, 0), datetime(2026, 11, 23, 18, 5, 7)


def test_register_uploads_once_creates_both_tags_and_lists_them(
    fake_ollama: FakeOllama, tiny_gguf: Path
) -> None:
    client = OllamaClient(fake_ollama.url)
    statuses: list[dict] = []
    first = register_model(
        client,
        tiny_gguf,
        "pirate-bot",
        system="You are a pirate.",
        parameters={"temperature": 0.2},
        stamp=STAMP1,
        on_status=statuses.append,
    )
    assert first.uploaded and first.latest == "pirate-bot:latest"
    assert first.version == "pirate-bot:20261122-093000"
    assert first.digest == sha256_file(tiny_gguf)
    assert first.quantization == "Q4_K_M"
    assert first.template == CHATML
    assert first.run_command == "ollama run pirate-bot"
    assert json.loads(json.dumps(first.as_dict()))["latest"] == "pirate-bot:latest"
    assert {"status": "parsing GGUF"} in statuses and statuses[-1] == {"status": "success"}
    uploads = [s for s in statuses if s["status"] == UPLOADING]
    assert uploads and uploads[-1]["completed"] == uploads[-1]["total"] == tiny_gguf.stat().st_size

    second = register_model(client, tiny_gguf, "pirate-bot", system="Arr.", stamp=STAMP2)
    assert not second.uploaded and any("upload skipped" in n for n in second.notes)
    assert fake_ollama.stats["blob_uploads"] == 1

    names = {m["name"] for m in client.tags()}
    assert names == {
        "pirate-bot:latest",
        "pirate-bot:20261122-093000",
        "pirate-bot:20261123-180507",
    }
    shown = client.show("pirate-bot")
    assert shown["system"] == "Arr."
    assert shown["template"] == CHATML
    assert shown["details"]["family"] == "llama"
    assert shown["details"]["quantization_level"] == "Q4_K_M"
    assert shown["model_info"]["general.architecture"] == "llama"
    assert '"<|im_end|>"' in shown["parameters"]
    assert client.show(first.version)["system"] == "You are a pirate."  # old versions stay

    client.delete(first.version)
    assert first.version not in {m["name"] for m in client.tags()}
    with pytest.raises(OllamaModelNotFound, match="not found"):
        client.show(first.version)


def test_already_quantized_gguf_is_not_quantized_again(
    fake_ollama: FakeOllama, tiny_ggufs: dict[str, Exported]
) -> None:
    client = OllamaClient(fake_ollama.url)
    result = register_model(client, tiny_ggufs["q8_0"].info.path, "q8-bot", stamp=STAMP1)
    assert result.quantization == "Q8_0"
    assert any("already quantized" in n for n in result.notes)
    with pytest.raises(OllamaError, match="only supported for F16, BF16 and F32"):
        client.create("q8-bot:again", {"model.gguf": result.digest}, quantize="q4_K_M")


def test_unknown_quantization_and_bad_names_fail_before_any_upload(
    fake_ollama: FakeOllama, tiny_gguf: Path
) -> None:
    client = OllamaClient(fake_ollama.url)
    with pytest.raises(DropError, match="cannot quantize to 'q3_K_L'"):
        register_model(client, tiny_gguf, "bot", quantize="q3_K_L")
    with pytest.raises(DropError, match="carries a tag"):
        register_model(client, tiny_gguf, "bot:v1")
    assert fake_ollama.stats["blob_uploads"] == 0
    digest = client.push_blob(tiny_gguf)
    with pytest.raises(OllamaError, match="unsupported quantization type Q3_K_L"):
        client.create("bot", {"model.gguf": digest}, quantize="q3_K_L")


def test_digest_mismatch_surfaces_ollamas_text(fake_ollama: FakeOllama, tmp_path: Path) -> None:
    blob = tmp_path / "blob.bin"
    blob.write_bytes(b"hello ollama")
    client = OllamaClient(fake_ollama.url)
    wrong = "sha256:" + "0" * 64
    with pytest.raises(OllamaError) as err:
        client.push_blob(blob, digest=wrong)
    assert err.value.status == 400
    assert err.value.message == f'digest mismatch, expected "{wrong}", got "{sha256_file(blob)}"'
    assert not client.has_blob(wrong)
    with pytest.raises(ValueError, match="not a sha256 digest"):
        client.has_blob("sha256:not-hex")
    refused = httpx.post(f"{fake_ollama.url}/api/blobs/sha256:not-hex", content=b"x")
    assert (refused.status_code, refused.json()) == (400, {"error": "invalid digest format"})


def test_broken_gguf_is_refused_by_us_and_by_ollama(
    fake_ollama: FakeOllama, tiny_gguf: Path, tmp_path: Path
) -> None:
    client = OllamaClient(fake_ollama.url)
    truncated = tmp_path / "model.gguf"
    truncated.write_bytes(tiny_gguf.read_bytes()[:300_000])
    with pytest.raises(DropError, match="not a readable GGUF"):
        register_model(client, truncated, "broken")
    assert fake_ollama.stats["blob_uploads"] == 0

    digest = client.push_blob(truncated)  # straight to Ollama, as another tool might
    with pytest.raises(OllamaError, match="exceeds file size|failed to read GGUF"):
        client.create("broken", {"model.gguf": digest})
    text = tmp_path / "notes.gguf"
    text.write_text("this is not a model")
    with pytest.raises(OllamaError, match="supplied file was not in GGUF format"):
        client.create("broken", {"model.gguf": client.push_blob(text)})
    with pytest.raises(OllamaError, match="neither 'from' or 'files'") as err:
        client.create("broken")
    assert err.value.status == 400
    assert client.tags() == []


def test_server_down_is_unavailable_and_up_again_on_the_same_port(
    fake_ollama: FakeOllama, tiny_gguf: Path
) -> None:
    client = OllamaClient(fake_ollama.url)
    url = fake_ollama.url
    assert client.version()
    fake_ollama.stop()
    with pytest.raises(OllamaUnavailable) as err:
        client.version()
    assert err.value.base_url == url
    with pytest.raises(OllamaUnavailable):
        register_model(client, tiny_gguf, "later-bot", stamp=STAMP1)
    fake_ollama.start()
    assert fake_ollama.url == url
    result = register_model(client, tiny_gguf, "later-bot", stamp=STAMP1)
    assert result.latest in {m["name"] for m in client.tags()}


def test_nothing_listening_or_no_answer_is_unavailable() -> None:
    client = OllamaClient(f"127.0.0.1:{free_port()}")
    with pytest.raises(OllamaUnavailable, match="not reachable"):
        client.tags()
    with socket.socket() as hung:  # accepts connections (backlog) but never answers
        hung.bind(("127.0.0.1", 0))
        hung.listen(4)
        client = OllamaClient(f"127.0.0.1:{hung.getsockname()[1]}", timeout=0.3)
        with pytest.raises(OllamaUnavailable, match="Timeout"):
            client.version()


def test_busy_is_unavailable_and_errors_in_a_stream_are_ollama_errors() -> None:
    busy = "server busy, please try again.  maximum pending requests exceeded"

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/chat":  # server/sched.go ErrMaxQueue -> 503
            return httpx.Response(503, json={"error": busy})
        lines = [{"status": "parsing GGUF"}, {"error": "invalid file magic"}]
        return httpx.Response(200, content="".join(json.dumps(x) + "\n" for x in lines))

    client = OllamaClient("127.0.0.1:1", transport=httpx.MockTransport(answer))
    with pytest.raises(OllamaUnavailable, match="server busy"):
        client.chat("bot", [{"role": "user", "content": "hi"}])
    seen: list[dict] = []
    with pytest.raises(OllamaError) as err:
        client.create("bot", {"model.gguf": "sha256:" + "a" * 64}, on_status=seen.append)
    assert err.value.message == "invalid file magic" and seen == [{"status": "parsing GGUF"}]


def test_fake_runs_as_a_process_too(tmp_path: Path) -> None:
    port = free_port()
    cmd = [sys.executable, str(REPO / "tests" / "fake_ollama.py"), "--port", str(port)]
    proc = subprocess.Popen(
        [*cmd, "--dir", str(tmp_path)], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == f"listening on http://127.0.0.1:{port}"
        client = OllamaClient(f"http://127.0.0.1:{port}")
        assert client.version().endswith("-fake")
        blob = tmp_path / "b.bin"
        blob.write_bytes(b"x" * 1000)
        client.push_blob(blob)
        assert httpx.get(f"http://127.0.0.1:{port}/_fake/stats").json()["blob_uploads"] == 1
    finally:
        proc.terminate()
        proc.wait(10)
    with pytest.raises(OllamaUnavailable):
        client.version()


class _Recording(httpx.HTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.uploads: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and "/api/blobs/" in request.url.path:
            self.uploads.append(request)
        return super().handle_request(request)


def test_upload_streams_from_the_file(fake_ollama: FakeOllama, tmp_path: Path) -> None:
    size = 24 << 20
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        for i in range(24):
            f.write(bytes([i]) * (1 << 20))
    transport = _Recording()
    client = OllamaClient(fake_ollama.url, transport=transport)
    digest = sha256_file(big)
    tracemalloc.start()
    try:
        assert client.push_blob(big, digest=digest) == digest
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    (request,) = transport.uploads
    assert not isinstance(request.stream, httpx.ByteStream)  # an iterator, not bytes in memory
    with pytest.raises(httpx.RequestNotRead):
        _ = request.content
    assert request.headers["Content-Length"] == str(size)
    assert "Transfer-Encoding" not in request.headers
    assert peak < 8 << 20, f"upload held {peak >> 20} MiB in memory"
    assert fake_ollama.stats["blob_bytes"] == size
    assert fake_ollama.stats["max_body_read"] <= 1 << 20
    assert client.has_blob(digest)


# OLLAMA_HOST: Ollama's own table (envconfig/config_test.go TestHost / TestConnectableHost),
# as the address a client connects to.
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", "http://127.0.0.1:11434"),
        ("1.2.3.4", "http://1.2.3.4:11434"),
        (":1234", "http://127.0.0.1:1234"),
        ("1.2.3.4:1234", "http://1.2.3.4:1234"),
        ("example.com", "http://example.com:11434"),
        ("example.com:1234", "http://example.com:1234"),
        (":66000", "http://127.0.0.1:11434"),
        (":-1", "http://127.0.0.1:11434"),
        ("[::1]", "http://[::1]:11434"),
        ("[::]", "http://[::1]:11434"),
        ("::1", "http://[::1]:11434"),
        ("[::1]:1337", "http://[::1]:1337"),
        (" 1.2.3.4 ", "http://1.2.3.4:11434"),
        ('"1.2.3.4"', "http://1.2.3.4:11434"),
        (' " 1.2.3.4 " ', "http://1.2.3.4:11434"),
        ("'1.2.3.4'", "http://1.2.3.4:11434"),
        ("http://1.2.3.4", "http://1.2.3.4:80"),
        ("http://1.2.3.4:4321", "http://1.2.3.4:4321"),
        ("https://1.2.3.4", "https://1.2.3.4:443"),
        ("https://example.com/ollama", "https://example.com:443/ollama"),
        ("ollama.com", "https://ollama.com:443"),
        ("0.0.0.0", "http://127.0.0.1:11434"),
        ("0.0.0.0:1234", "http://127.0.0.1:1234"),
        ("[::]:1234", "http://[::1]:1234"),
        ("https://0.0.0.0:4321", "https://127.0.0.1:4321"),
        ("http://127.0.0.1:11434", "http://127.0.0.1:11434"),
    ],
)
def test_ollama_host_is_read_as_ollama_reads_it(value: str, expected: str) -> None:
    assert ollama_base_url(value) == expected


def test_client_reads_ollama_host_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_HOST", "0.0.0.0:5555")
    assert OllamaClient().base_url == "http://127.0.0.1:5555"
    monkeypatch.delenv("OLLAMA_HOST")
    assert OllamaClient().base_url == "http://127.0.0.1:11434"
    assert os.environ.get("OLLAMA_HOST") is None


@pytest.mark.parametrize(
    "name",
    [
        "pirate-bot",
        "Pirate_Bot.v2",
        "me/pirate-bot",
        "pirate-bot:20261122-093000",
        "localhost:5000/me/bot:v1",
    ],
)
def test_valid_model_names(name: str) -> None:
    assert validate_model_name(name).model


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("", "is empty"),
        ("pirate bot", "not ' '"),
        ("-bot", "must start with a letter, a digit or '_'"),
        ("bot:", "tag part"),
        ("/bot", "namespace part"),
        ("a" * 81, "1 to 80 bytes"),
        ("é" * 41, "1 to 80 bytes"),
        ("my.team/bot", "namespace part"),
        ("bot!", "not '!'"),
        ("bot:v 1", "tag part"),
    ],
)
def test_invalid_model_names_say_what_and_how(name: str, says: str) -> None:
    with pytest.raises(DropError) as err:
        validate_model_name(name)
    assert isinstance(err.value, ValueError)  # callers may catch either
    problem = err.value.problems[0]
    assert says in problem.what
    assert problem.where == "recipe.toml [ollama] model"
    assert "use a name like" in problem.fix or "pirate-bot" in problem.fix


def test_suggested_names_are_valid() -> None:
    for raw in ["Pirate Bot!", "--x--", "é", "a" * 200, "my model v2.0"]:
        validate_model_name(suggest_model_name(raw))
    assert suggest_model_name("Pirate Bot!") == "Pirate-Bot"
