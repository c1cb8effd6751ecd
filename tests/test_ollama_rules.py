"""Ollama's server rules: our checks, the fake that plays the server, and the client between.

Each rule is checked three ways where it can be: the pure check names the mistake and the fix,
the fake refuses it with the real server's words and status, and the client never asks for
what the server's version cannot do.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from lorainbox.core.errors import DropError
from lorainbox.export.ollama import (
    OllamaClient,
    OllamaError,
    OllamaTooOld,
    parse_version,
    register_model,
)
from lorainbox.export.ollama_rules import (
    export_problems,
    name_problems,
    parameter_problems,
    quantize_source_problem,
    template_problems,
)
from lorainbox.export.templates import CHATML, LLAMA3, default_system_prompt

from tests.fake_ollama import FakeOllama

if TYPE_CHECKING:
    from tests.fixtures_models import Exported

pytest_plugins = ["tests.fixtures_models"]
STAMP = datetime(2026, 11, 29, 9, 0, 0)
QWEN25 = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. "
    "You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}{%- if not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


# --- the pure checks ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "says"),
    [
        ("{{ .Prompt ", "unclosed action"),
        ("{{ if .System }}{{ .System }}", "unexpected EOF"),
        ("{{ .Prompt }}{{ end }}", "unexpected {{end}}"),
        ("{{ foo .Prompt }}", 'function "foo" not defined'),
        (
            "{{ .Sytem }}{{ .Prompt }}",
            ".Sytem is not a field of the top level (did you mean .System?)",
        ),
        ("{{ range .Messages }}{{ .role }}{{ end }}", "did you mean .Role?"),
        ("{{ range .Messages }}{{ .Bogus }}{{ end }}", ".Bogus is not a field of a message"),
    ],
)
def test_templates_ollama_refuses_are_named(template: str, says: str) -> None:
    (problem,) = template_problems(template, "recipe.toml, line 9")
    assert says in problem.what and problem.where == "recipe.toml, line 9"
    assert "Go template (not Jinja)" in problem.fix


@pytest.mark.parametrize(
    "template",
    [
        CHATML,
        LLAMA3,
        "{{- if .System }}<|system|>{{ .System }}{{ end }}<|user|>{{ .Prompt }}<|bot|>{{ .Response }}",
        '{{ range $i, $m := .Messages }}{{ if eq $m.Role "user" }}{{ $.System }}{{ end }}'
        '{{ printf "%s}}" .Content }}{{ else }}{{ .Prompt }}{{ end }}{{/* a comment */}}',
        "{{ if gt (len .Messages) 1 }}{{ json .Tools }}{{ end }}{{ range .Tools }}{{ .Function.Name }}{{ end }}",
    ],
)
def test_templates_ollama_takes_pass(template: str) -> None:
    assert template_problems(template, "w") == []


def test_parameters_are_typed_as_ollama_types_them() -> None:
    problems = parameter_problems(
        {
            "stop": "###",
            "num_ctx": "4096",
            "temprature": 0.7,
            "temperature": 1,
            "top_k": 40.5,
            "use_mmap": 1,
            "mirostat": 2,
            "seed": 42.0,
            "num_predict": None,
        },
        "recipe.toml, line 4",
    )
    by_key = {p.where.rsplit("`", 2)[1]: p for p in problems}
    assert set(by_key) == {"stop", "num_ctx", "temprature", "top_k", "use_mmap", "mirostat"}
    assert "not of type array" in by_key["stop"].what
    assert by_key["stop"].fix == 'write it as a list of strings: stop = ["###"]'
    assert by_key["num_ctx"].fix == "write it without quotes: num_ctx = 4096"
    assert "did you mean `temperature`?" in by_key["temprature"].fix
    assert "cut it silently" in by_key["top_k"].what
    assert "removed in Ollama 0.7.0" in by_key["mirostat"].what


def test_names_quantize_and_outtype() -> None:
    assert name_problems("pirate-bot", "w", allow_tag=False) == []
    assert "not ' ', '!'" in name_problems("my bot!", "w")[0].what
    assert "80 bytes" in name_problems("b" * 100, "w")[0].what
    assert "80 bytes" in name_problems("é" * 41, "w")[0].what  # 82 bytes, 41 characters
    assert "reserves" in name_problems("bot:cloud", "w")[0].what
    assert export_problems("f16", "q4_K_M", "o", "q") == []
    assert export_problems("f32", None, "o", "q") == []
    assert export_problems("q8_0", "Q8_0", "o", "q") == []
    (weird,) = export_problems("f16", "q3_weird", "o", "q")
    assert "cannot quantize to 'q3_weird'" in weird.what and "Q4_K_M" in weird.fix
    (f32,) = export_problems("f32", "q4_K_M", "o", "q")
    assert (
        "'unknown'" in f32.what and 'outtype = "f16"' in f32.fix and 'quantize = "none"' in f32.fix
    )
    (q8,) = export_problems("q8_0", "q4_K_M", "o", "q")
    assert "already Q8_0" in q8.what
    assert quantize_source_problem("BF16", "Q4_K_M", (0, 21, 9)) is not None
    assert quantize_source_problem("BF16", "Q4_K_M", (0, 22, 0)) is None
    assert quantize_source_problem("BF16", "Q4_K_M", None) is None


def test_versions_as_ollama_reports_them() -> None:
    assert parse_version("0.32.15") == (0, 32, 15)
    assert parse_version("0.33.0-rc2") == (0, 33, 0)
    assert parse_version("0.0.0") is None  # a source build: taken to have every API
    assert parse_version("") is None


def test_the_default_system_prompt_training_used_is_found() -> None:
    assert default_system_prompt(QWEN25) == (
        "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    )
    from lorainbox.models.tinymodel import CHATML_TEMPLATE

    assert default_system_prompt(CHATML_TEMPLATE) is None
    assert default_system_prompt("{{ raise_exception('no') }}") is None
    assert default_system_prompt(None) is None


# --- the fake refuses what the real server refuses ---------------------------------------------


def _pushed(client: OllamaClient, gguf: Path) -> dict[str, str]:
    return {"model.gguf": client.push_blob(gguf)}


def test_fake_refuses_bad_templates_with_gos_words(
    fake_ollama: FakeOllama, tiny_gguf: Path
) -> None:
    client = OllamaClient(fake_ollama.url)
    files = _pushed(client, tiny_gguf)
    cases = {
        "{{ .Prompt ": "template error: template: :1: unclosed action",
        "{{ if .System }}x": "template error: template: :1: unexpected EOF",
        "{{ end }}": "template error: template: :1: unexpected {{end}}",
        "{{ foo .Prompt }}": 'template error: template: :1: function "foo" not defined',
    }
    for template, said in cases.items():
        seen: list[dict] = []
        with pytest.raises(OllamaError) as err:  # streamed: a line of a 200 stream
            client.create("t", files, template=template, on_status=seen.append)
        assert err.value.message == said and err.value.status == 200
        assert seen[0] == {"status": "parsing GGUF"}
        flat = httpx.post(
            f"{fake_ollama.url}/api/create",
            json={"model": "t", "files": files, "template": template, "stream": False},
        )
        assert (flat.status_code, flat.json()) == (400, {"error": said})
    assert client.tags() == []


def test_fake_refuses_names_quantize_and_f32_sources(
    fake_ollama: FakeOllama, tiny_gguf: Path, tiny_wide_ggufs: dict[str, Path]
) -> None:
    client = OllamaClient(fake_ollama.url)
    files = _pushed(client, tiny_gguf)
    for name in ("my bot!", "b" * 81, "bot:" + "t" * 81):
        answer = httpx.post(f"{fake_ollama.url}/api/create", json={"model": name, "files": files})
        assert (answer.status_code, answer.json()) == (400, {"error": "invalid model name"})
    with pytest.raises(OllamaError, match="unsupported quantization type Q3_WEIRD"):
        client.create("q", files, quantize="q3_weird")
    f32 = _pushed(client, tiny_wide_ggufs["f32"])
    with pytest.raises(OllamaError, match="only supported for F16, BF16 and F32 models"):
        client.create("wide", f32, quantize="q4_K_M")
    client.create("wide", f32)
    (listed,) = client.tags()
    assert listed["details"]["quantization_level"] == "unknown"  # file_type 0 (KV.FileType)
    flat = httpx.post(
        f"{fake_ollama.url}/api/create",
        json={"model": "wide2", "files": f32, "quantize": "q8_0", "stream": False},
    )
    assert flat.status_code == 500 and "only supported for" in flat.json()["error"]


def test_fake_checks_option_types_when_the_model_loads(
    fake_ollama: FakeOllama, tiny_gguf: Path
) -> None:
    client = OllamaClient(fake_ollama.url)
    files = _pushed(client, tiny_gguf)
    hi = [{"role": "user", "content": "hi"}]
    client.create("stops", files, parameters={"stop": "###"})  # stored without a check
    client.create("ctx", files, parameters={"num_ctx": "4096", "temprature": 0.1})
    client.create("fine", files)
    with pytest.raises(OllamaError) as err:
        client.ask("stops", hi)
    assert (err.value.status, err.value.message) == (500, 'option "stop" must be of type array')
    with pytest.raises(OllamaError, match='option "num_ctx" must be of type integer'):
        client.ask("ctx", hi)
    with pytest.raises(OllamaError, match='option "temperature" must be of type float32'):
        client.ask("fine", hi, {"temperature": "hot"})
    with pytest.raises(OllamaError) as missing:
        client.ask("nobody", hi)
    assert (missing.value.status, missing.value.message) == (404, "model 'nobody' not found")
    assert fake_ollama.stats["chats"] == 0


def test_fake_loads_lists_and_unloads(fake_ollama: FakeOllama, tiny_gguf: Path) -> None:
    client = OllamaClient(fake_ollama.url)
    client.create("bot", _pushed(client, tiny_gguf))
    assert client.loaded() == []
    load = httpx.post(f"{fake_ollama.url}/api/generate", json={"model": "bot"}).json()
    assert load["done_reason"] == "load"
    assert client.loaded() == ["bot:latest"]
    client.unload("bot:latest")
    assert client.loaded() == []
    client.unload("bot")  # not loaded: still fine
    with pytest.raises(OllamaError, match="not found"):
        client.unload("ghost")
    bad = httpx.post(f"{fake_ollama.url}/api/chat", json={"model": "bot", "keep_alive": [1]})
    assert bad.status_code == 400 and "Unsupported type" in bad.json()["error"]


# --- the client asks only for what the server's version can do ---------------------------------


def test_too_old_an_ollama_is_refused_before_any_upload(tmp_path: Path, tiny_gguf: Path) -> None:
    with FakeOllama(tmp_path / "old", version="0.5.4") as old:
        client = OllamaClient(old.url)
        with pytest.raises(OllamaTooOld) as err:
            register_model(client, tiny_gguf, "bot", stamp=STAMP)
        assert "Ollama 0.5.4" in err.value.message and "0.5.5 or newer" in err.value.message
        assert old.stats["blob_uploads"] == 0


def test_quantize_is_asked_only_where_the_version_can(
    tmp_path: Path, tiny_wide_ggufs: dict[str, Path]
) -> None:
    with FakeOllama(tmp_path / "v21", version="0.21.3") as v21:
        client = OllamaClient(v21.url)
        with pytest.raises(DropError, match="0.21.3 quantizes only F16 and F32") as err:
            register_model(client, tiny_wide_ggufs["bf16"], "bf", stamp=STAMP)
        assert "update Ollama to 0.22.0" in err.value.problems[0].fix
        with pytest.raises(DropError, match="cannot quantize an F32 GGUF"):
            register_model(client, tiny_wide_ggufs["f32"], "wide", stamp=STAMP)
        assert v21.stats["blob_uploads"] == 0
        kept = register_model(client, tiny_wide_ggufs["bf16"], "bf", quantize=None, stamp=STAMP)
        assert kept.quantization == "BF16"
    with FakeOllama(tmp_path / "v22", version="0.22.0") as v22:
        done = register_model(OllamaClient(v22.url), tiny_wide_ggufs["bf16"], "bf", stamp=STAMP)
        assert done.quantization == "Q4_K_M"


def test_only_lowercase_colon_digests_are_sent(fake_ollama: FakeOllama) -> None:
    client = OllamaClient(fake_ollama.url)
    for digest in ("sha256-" + "a" * 64, "sha256:" + "A" * 64, "sha256:abc"):
        with pytest.raises(ValueError, match="not a sha256 digest"):
            client.has_blob(digest)
    assert not client.has_blob("sha256:" + "a" * 64)


def test_errors_inside_a_200_stream_fail_old_style_too(tmp_path: Path, tiny_gguf: Path) -> None:
    with FakeOllama(tmp_path / "v12", version="0.12.5") as v12:  # the status rode in the line
        client = OllamaClient(v12.url)
        with pytest.raises(OllamaError) as err:
            client.create("q", _pushed(client, tiny_gguf), quantize="q3_weird")
        assert err.value.status == 500 and "unsupported quantization type" in err.value.message


def test_a_stream_without_success_is_a_failure() -> None:
    """A stream cut short after progress (no fake server does this on purpose)."""

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=json.dumps({"status": "writing manifest"}) + "\n")

    client = OllamaClient("127.0.0.1:1", transport=httpx.MockTransport(answer))
    with pytest.raises(OllamaError, match="without success"):
        client.create("cut-short", {"model.gguf": "sha256:" + "a" * 64})


def test_register_sends_no_system_when_the_template_has_none(
    fake_ollama: FakeOllama, tiny_ggufs: dict[str, Exported]
) -> None:
    client = OllamaClient(fake_ollama.url)
    result = register_model(client, tiny_ggufs["f16"].info.path, "plain", stamp=STAMP)
    assert "system" not in client.show(result.latest)
    assert not any("default system prompt" in n for n in result.notes)
