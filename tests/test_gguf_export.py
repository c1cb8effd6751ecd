"""GGUF export with llama.cpp's converter: metadata that must travel, llama.cpp runs the result,
and people's mistakes (unknown architecture, broken tokenizer, damaged file) read clearly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from lorainbox.core.errors import DropError
from lorainbox.export.gguf import convert_to_gguf, inspect_gguf, modelfile_text, stop_tokens
from lorainbox.export.templates import CHATML, ollama_template

from tests.models import TINY_FACT

if TYPE_CHECKING:
    from tests.fixtures_models import Exported

pytest_plugins = ["tests.fixtures_models"]


@pytest.mark.parametrize(("outtype", "file_type"), [("f16", "F16"), ("q8_0", "Q8_0")])
def test_metadata_travels_into_the_gguf(
    tiny_ggufs: dict[str, Exported], tiny_hf: Path, outtype: str, file_type: str
) -> None:
    info = tiny_ggufs[outtype].info
    assert info.path.name == "model.gguf" and info.path.is_file()
    assert info.file_type == file_type
    assert info.quantized == (outtype == "q8_0")
    assert info.architecture == "llama"
    assert info.tokenizer_model == "llama"
    assert info.tensor_count > 0 and info.parameter_count > 100_000
    assert info.context_length == 1024
    assert info.chat_template == (tiny_hf / "chat_template.jinja").read_text()
    assert (info.eos_token, info.bos_token) == ("<|im_end|>", "<s>")
    assert info.eos_token_id == json.loads((tiny_hf / "config.json").read_text())["eos_token_id"]
    assert [p.name for p in info.path.parent.iterdir()] == ["model.gguf"]  # no partial, no log
    as_json = json.loads(json.dumps(info.as_dict()))
    assert as_json["path"] == str(info.path) and as_json["file_type"] == file_type


def test_progress_is_reported(tiny_ggufs: dict[str, Exported]) -> None:
    stages = [stage for stage, _ in tiny_ggufs["f16"].progress]
    assert stages[0] == "loading" and stages[-1] == "done"
    assert "writing" in stages


@pytest.mark.parametrize("outtype", ["f16", "q8_0"])
def test_llama_cpp_loads_and_generates(tiny_ggufs: dict[str, Exported], outtype: str) -> None:
    from llama_cpp import Llama

    llm = Llama(str(tiny_ggufs[outtype].info.path), n_ctx=256, verbose=False, seed=0)
    out = llm.create_completion("The capital of France is", max_tokens=8, temperature=0)
    assert out["usage"]["completion_tokens"] >= 1
    assert isinstance(out["choices"][0]["text"], str)
    assert llm.metadata["tokenizer.chat_template"].startswith("{% for message in messages %}")


def test_stop_tokens_and_modelfile(tiny_ggufs: dict[str, Exported]) -> None:
    info = tiny_ggufs["f16"].info
    stops = stop_tokens(info)
    assert stops == ["<|im_end|>", "<|im_start|>"]
    template = ollama_template(info.chat_template)
    assert template == CHATML
    text = modelfile_text(
        "model.gguf", "You are a pirate.", {"stop": stops, "temperature": 0.7}, template
    )
    assert text.splitlines()[0] == "FROM ./model.gguf"
    assert 'SYSTEM """You are a pirate."""' in text
    assert f'TEMPLATE """{CHATML}"""' in text
    assert 'PARAMETER stop "<|im_end|>"\nPARAMETER stop "<|im_start|>"\n' in text
    assert "PARAMETER temperature 0.7\n" in text
    with pytest.raises(DropError, match="triple double quote"):
        modelfile_text("model.gguf", system='say """hi"""')


def test_unsupported_architecture_is_a_clear_drop_error(tiny_hf: Path, tmp_path: Path) -> None:
    model = shutil.copytree(tiny_hf, tmp_path / "foo")
    config = json.loads((model / "config.json").read_text())
    config["architectures"] = ["FooBarForCausalLM"]
    (model / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out" / "model.gguf"
    with pytest.raises(DropError) as err:
        convert_to_gguf(model, out)
    problem = err.value.problems[0]
    assert "architecture FooBarForCausalLM is not supported" in problem.what
    assert "Llama, Qwen2" in problem.fix and "[export] gguf = false" in problem.fix
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir()] == ["model.convert.log"]


def test_broken_tokenizer_is_a_clear_drop_error(tiny_hf: Path, tmp_path: Path) -> None:
    model = shutil.copytree(tiny_hf, tmp_path / "broken")
    (model / "tokenizer.model").write_bytes(b"this is not a sentencepiece model")
    out = tmp_path / "model.gguf"
    with pytest.raises(DropError) as err:
        convert_to_gguf(model, out, "q8_0")
    problem = err.value.problems[0]
    assert "could not read the tokenizer" in problem.what
    assert "tokenizer.model" in problem.what
    assert "convert.log" in problem.where
    assert not out.exists()


def test_folder_without_config_or_architecture(tmp_path: Path) -> None:
    with pytest.raises(DropError, match="no config.json"):
        convert_to_gguf(tmp_path, tmp_path / "model.gguf")
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(DropError, match="names no architecture"):
        convert_to_gguf(tmp_path, tmp_path / "model.gguf")
    (tmp_path / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    with pytest.raises(DropError, match="no weights"):
        convert_to_gguf(tmp_path, tmp_path / "model.gguf")
    with pytest.raises(DropError, match="q4_K_M"):
        convert_to_gguf(tmp_path, tmp_path / "model.gguf", "q4_K_M")  # type: ignore[arg-type]


def test_damaged_gguf_is_refused(tiny_gguf: Path, tmp_path: Path) -> None:
    data = tiny_gguf.read_bytes()
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(data[: len(data) // 2])
    header_only = tmp_path / "header.gguf"
    header_only.write_bytes(data[:64])
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"not a gguf at all" * 10)
    for path in (truncated, header_only, garbage):
        with pytest.raises(DropError) as err:
            inspect_gguf(path)
        assert err.value.problems[0].where == str(path)
        assert "export the model again" in err.value.problems[0].fix
    with pytest.raises(DropError, match="not found"):
        inspect_gguf(tmp_path / "missing.gguf")


def test_gguf_without_tensors_or_tokenizer_is_refused(tmp_path: Path) -> None:
    import gguf

    path = tmp_path / "empty.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(DropError) as err:
        inspect_gguf(path)
    whats = " / ".join(p.what for p in err.value.problems)
    assert "no tensors" in whats and "no tokenizer" in whats and "end-of-sequence" in whats


def test_no_space_is_put_after_special_tokens_as_in_training(
    tiny_ggufs: dict[str, Exported],
) -> None:
    """The Hugging Face tokenizer adds no "▁" after <|im_start|>; llama.cpp must not either."""
    from llama_cpp import Llama

    llm = Llama(str(tiny_ggufs["f16"].info.path), n_ctx=64, verbose=False)
    assert llm.metadata["tokenizer.ggml.add_space_prefix"] == "false"
    ids = llm.tokenize(b"<|im_start|>user\n", add_bos=False, special=True)
    assert not llm.detokenize(ids[1:2]).startswith(b" ")


def test_the_gguf_reads_chats_as_training_did_and_computes_as_the_model(
    tiny_ggufs: dict[str, Exported], tiny_hf: Path
) -> None:
    """The SentencePiece tokenizer's added chat tokens survive; no BOS or "▁" training never saw."""
    from llama_cpp import Llama
    from transformers import AutoTokenizer

    for outtype, most in (("f16", 0.5), ("q8_0", 5.0)):
        check = tiny_ggufs[outtype].info.self_check
        assert check is not None and check.examples == 2  # the probe chat, and it as served
        assert (check.add_bos, check.space_prefix) == (False, False)
        assert check.max_logit_diff is not None and check.max_logit_diff < most, check
        assert check.same_next_token
    llm = Llama(str(tiny_ggufs["f16"].info.path), vocab_only=True, verbose=False)
    start = AutoTokenizer.from_pretrained(tiny_hf).convert_tokens_to_ids("<|im_start|>")
    assert llm.tokenize(b"<|im_start|>user\n", add_bos=True, special=True)[0] == start


PLAIN_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
)


def test_a_template_of_plain_text_gets_its_space_prefix(tiny_hf: Path, tmp_path: Path) -> None:
    """No special token before the text: llama.cpp must put the "▁" that training saw."""
    model = shutil.copytree(tiny_hf, tmp_path / "plain")
    (model / "chat_template.jinja").write_text(PLAIN_TEMPLATE)
    info = convert_to_gguf(model, tmp_path / "plain.gguf", data_files=[TINY_FACT / "train.jsonl"])
    assert info.self_check is not None and info.self_check.examples == 8
    assert (info.self_check.add_bos, info.self_check.space_prefix) == (False, True)


def test_a_gguf_that_reads_chats_otherwise_is_refused(tiny_hf: Path, tmp_path: Path) -> None:
    """Text both at the start and after a special token: training puts a "▁" before the first
    only, llama.cpp before both or neither, so no setting mends it and the export says so."""
    model = shutil.copytree(tiny_hf, tmp_path / "mixed")
    (model / "chat_template.jinja").write_text(PLAIN_TEMPLATE.replace("'\\n'", "'<|im_end|>'"))
    out = tmp_path / "out" / "model.gguf"
    with pytest.raises(DropError) as err:
        convert_to_gguf(model, out, data_files=[TINY_FACT / "train.jsonl"])
    problem = err.value.problems[0]
    assert "does not read the drop's chats as training did" in problem.what
    assert "Who keeps the lighthouse of Quillhaven?" in problem.what
    assert str(model) in problem.where and "tokenizer" in problem.fix
    assert not out.exists() and not list(out.parent.glob("*.partial"))
