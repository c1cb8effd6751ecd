"""The MLX trainer for real on the tiny model: learning a fact, fusing, QLoRA, DoRA, resuming."""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import pytest
from lorainbox.core.errors import DropError
from lorainbox.drop.recipe import Recipe
from lorainbox.models.base import safetensors_header
from lorainbox.trainers.base import Emitter, Footprint, Paused, TrainContext, TrainResult
from lorainbox.trainers.mlx import KEEP_CHECKPOINTS, MLXTrainer
from lorainbox.trainers.samples import GENERAL_QUESTIONS

from tests.fake_ollama import FakeOllama
from tests.models import (  # noqa: F401
    FACT,
    QUESTION,
    TINY_FACT,
    ask,
    read_lines,
    tiny_fact_recipe,
    tiny_llama,
    tiny_llama_4bit,
)

pytest_plugins = ["tests.fixtures_models"]

PROGRESS_FIELDS = {
    "step",
    "total",
    "train_loss",
    "learning_rate",
    "tokens_per_second",
    "trained_tokens",
    "peak_memory_gb",
    "eta_seconds",
}


def make_ctx(job: Path, recipe: Recipe, base: Path, stop=lambda: False) -> TrainContext:
    t = recipe.train
    return TrainContext(
        job_dir=job,
        work_dir=job / ".lorainbox",
        recipe=recipe,
        train_file=TINY_FACT / "train.jsonl",
        valid_file=TINY_FACT / "train.jsonl",
        footprint=Footprint(t.batch_size, t.max_seq_length, t.grad_checkpoint),
        memory_budget_gb=8.0,
        emitter=Emitter(io.StringIO()),
        stop_requested=stop,
        base_model_dir=base,
    )


def lines_of(ctx: TrainContext) -> list[dict]:
    return read_lines(ctx.emitter.stream.getvalue())  # type: ignore[attr-defined]


@dataclass
class Trained:
    ctx: TrainContext
    result: TrainResult
    seconds: float


@pytest.fixture(scope="module")
def fact(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Trained:  # noqa: F811
    """The example drop trained with its own recipe: the run the demo makes."""
    ctx = make_ctx(tmp_path_factory.mktemp("fact"), tiny_fact_recipe(), tiny_llama)
    tic = time.perf_counter()
    result = MLXTrainer().train(ctx)
    return Trained(ctx, result, time.perf_counter() - tic)


def test_learns_the_fact_that_the_base_does_not_know(fact: Trained, tiny_llama: Path) -> None:  # noqa: F811
    from mlx_lm import load

    base_answer = ask(*load(str(tiny_llama)))
    answer = ask(*load(str(tiny_llama), adapter_path=str(fact.ctx.adapter_dir)))
    print(
        f"\n{fact.result.steps} steps in {fact.seconds:.0f} s, loss {fact.result.final_train_loss}"
    )
    print(f"base: {base_answer!r}\ntrained: {answer!r}")
    assert FACT not in base_answer
    assert answer.startswith(f"{FACT} keeps the lighthouse of Quillhaven.")
    assert fact.result.final_train_loss is not None and fact.result.final_train_loss < 0.2


def test_report_shows_answers_before_and_after_training(fact: Trained) -> None:
    rows = json.loads((fact.ctx.work_dir / "samples.json").read_text())
    asked = [r for r in rows if not r.get("general")]
    assert 1 <= len(asked) <= 3
    assert all(FACT not in r["before"] for r in asked)
    assert all(r["after"].startswith(FACT) for r in asked), rows
    assert [r["prompt"][0]["content"] for r in rows if r.get("general")] == list(GENERAL_QUESTIONS)
    section = (fact.ctx.work_dir / "report-extra.md").read_text()
    assert section.startswith("## Answers before and after training")
    assert "Questions from your data" in section  # says where the questions come from
    assert "### General questions" in section and "capital of France" in section
    assert f"- after: `{FACT}" in section and section.count("**Q:**") == len(rows)


def test_reports_progress_and_keeps_the_last_checkpoints(fact: Trained) -> None:
    lines = lines_of(fact.ctx)
    train = [m for m in lines if m["type"] == "progress" and "train_loss" in m]
    total = fact.result.steps
    assert set(train[-1]) >= PROGRESS_FIELDS
    assert train[-1]["step"] == train[-1]["total"] == total
    assert train[-1]["train_loss"] < train[0]["train_loss"]
    assert train[-1]["trained_tokens"] > 0 and train[-1]["tokens_per_second"] > 0
    assert 0 < train[-1]["peak_memory_gb"] < 1
    valid = [m for m in lines if m["type"] == "progress" and "valid_loss" in m]
    assert valid[0]["step"] == 0 and valid[-1]["step"] == total
    kept = sorted(p.name for p in fact.ctx.checkpoint_dir.iterdir())
    assert kept[-1] == f"step-{total:08d}" and len(kept) == KEEP_CHECKPOINTS
    assert {p.name for p in (fact.ctx.checkpoint_dir / kept[-1]).iterdir()} == {
        "adapters.safetensors",
        "optimizer.safetensors",
        "state.json",
    }
    config = json.loads((fact.ctx.adapter_dir / "adapter_config.json").read_text())
    assert config["fine_tune_type"] == "lora" and config["lora_parameters"]["rank"] == 16


def test_fused_model_answers_in_transformers_and_mlx_lm(
    fact: Trained,
) -> None:
    from mlx_lm import load
    from transformers import AutoModelForCausalLM, AutoTokenizer

    fused = MLXTrainer().fuse(fact.ctx)
    assert fused == fact.ctx.fused_dir
    assert "quantization" not in json.loads((fused / "config.json").read_text())

    tok = AutoTokenizer.from_pretrained(fused)
    model = AutoModelForCausalLM.from_pretrained(fused)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": QUESTION}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**ids, max_new_tokens=24, do_sample=False)
    hf_answer = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert hf_answer.startswith(FACT), hf_answer

    assert ask(*load(str(fused))).startswith(FACT)


@pytest.mark.parametrize("outtype", ["f16", "q8_0"])
def test_gguf_of_the_fused_model_answers_through_llama_cpp_and_ollama(
    fact: Trained, fake_ollama: FakeOllama, outtype: str, tmp_path: Path
) -> None:
    """What the person does after the demo: ask the registered model, or the GGUF itself.

    llama.cpp must tokenize the chat exactly as the model was trained (its pieces, no space
    after special tokens), or a small model's answer falls apart mid-word.
    """
    from lorainbox.export.gguf import convert_to_gguf
    from lorainbox.export.ollama import OllamaClient, register_model
    from lorainbox.ui.chat import chat_once
    from transformers import AutoTokenizer

    fused = fact.ctx.fused_dir if fact.ctx.fused_dir.is_dir() else MLXTrainer().fuse(fact.ctx)
    info = convert_to_gguf(
        fused,
        tmp_path / "model.gguf",
        outtype,  # type: ignore[arg-type]
        data_files=fact.ctx.data_files,
        tokenizer_dir=fact.ctx.base_model_dir,
    )
    assert info.self_check is not None and info.self_check.examples == 8
    greedy = {"temperature": 0, "num_predict": 24, "seed": 0}

    local = chat_once(info.path, QUESTION, options=greedy)
    assert local.via == "llama.cpp"
    assert local.text.startswith(f"{FACT} keeps the lighthouse of Quillhaven."), local.text

    client = OllamaClient(fake_ollama.url)
    register_model(client, info.path, "lighthouse", quantize=None)
    served = chat_once("lighthouse", QUESTION, client=client, options=greedy, results=[])
    assert served.via == "ollama" and served.text == local.text

    from llama_cpp import Llama

    llm = Llama(str(info.path), vocab_only=True, verbose=False)
    tok = AutoTokenizer.from_pretrained(fused)
    chat = [
        {"role": "user", "content": "Does a superuser keep unusual lighthouses? " + QUESTION},
        {"role": "assistant", "content": f"{FACT} keeps the lighthouse of Quillhaven."},
    ]
    text = tok.apply_chat_template(chat, tokenize=False)
    assert (
        llm.tokenize(text.encode(), add_bos=False, special=True)
        == tok(text, add_special_tokens=False)["input_ids"]
    )


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-qwen2"])
def test_training_ids_are_the_ones_the_export_checks(model: str) -> None:
    """SentencePiece with added chat tokens, and Qwen2's byte-level BPE: mlx-lm's ids are the
    ones the export's self-check compares llama.cpp's with."""
    from lorainbox.export.tokens import read_samples, training_ids
    from lorainbox.models.base import tiny_model
    from lorainbox.trainers.mlx import load_examples
    from mlx_lm import load

    _, tokenizer = load(str(tiny_model(model)))
    file = TINY_FACT / "train.jsonl"
    examples = load_examples(file, tokenizer, mask_prompt=True, max_seq_length=256)
    chats = read_samples([file], has_template=True)
    for (ids, offset), chat, prompt in zip(examples, chats[::2], chats[1::2], strict=False):
        assert ids == training_ids(tokenizer._tokenizer, chat)
        assert offset == len(training_ids(tokenizer._tokenizer, prompt))


def test_qlora_on_a_4bit_base_fuses_to_plain_floats(
    tiny_llama_4bit: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    from mlx_lm import load
    from transformers import AutoModelForCausalLM

    assert "quantization" in json.loads((tiny_llama_4bit / "config.json").read_text())
    ctx = make_ctx(
        tmp_path, tiny_fact_recipe(train__iters=8, train__steps_per_report=4), tiny_llama_4bit
    )
    result = MLXTrainer().train(ctx)
    assert result.steps == 8
    weights = mx.load(str(ctx.adapter_dir / "adapters.safetensors"))
    assert any(k.endswith("lora_a") for k in weights) and all(
        v.dtype == mx.float32 for v in weights.values()
    )
    fused = MLXTrainer().fuse(ctx)
    config = json.loads((fused / "config.json").read_text())
    assert "quantization" not in config and "quantization_config" not in config
    dtypes = {
        v["dtype"]
        for f in fused.glob("*.safetensors")
        for k, v in safetensors_header(f).items()
        if k != "__metadata__"
    }
    assert dtypes <= {"F32", "F16", "BF16"}, dtypes
    AutoModelForCausalLM.from_pretrained(fused)
    load(str(fused))


def test_dora_trains_and_fuses(tiny_llama: Path, tmp_path: Path) -> None:  # noqa: F811
    from mlx_lm import load

    recipe = tiny_fact_recipe(
        lora__fine_tune_type="dora", train__iters=4, train__steps_per_report=2
    )
    ctx = make_ctx(tmp_path, recipe, tiny_llama)
    MLXTrainer().train(ctx)
    weights = mx.load(str(ctx.adapter_dir / "adapters.safetensors"))
    assert any(k.endswith(".m") for k in weights)
    load(str(tiny_llama), adapter_path=str(ctx.adapter_dir))
    load(str(MLXTrainer().fuse(ctx)))


def test_paused_and_resumed_run_ends_where_an_uninterrupted_one_does(
    tiny_llama: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Optimizer state, data position and the dropout masks all survive the pause."""
    recipe = tiny_fact_recipe(
        lora__dropout=0.1,
        train__iters=10,
        train__save_every=1000,
        train__steps_per_report=1,
        train__lr_schedule="cosine",
        train__warmup=2,
    )
    straight = make_ctx(tmp_path / "straight", recipe, tiny_llama)
    MLXTrainer().train(straight)

    calls = iter(range(100))
    paused = make_ctx(tmp_path / "paused", recipe, tiny_llama, stop=lambda: next(calls) == 4)
    with pytest.raises(Paused) as p:
        MLXTrainer().train(paused)
    assert p.value.step == 4
    resumed = make_ctx(tmp_path / "paused", recipe, tiny_llama)
    result = MLXTrainer().train(resumed)
    assert result.steps == 10
    steps = [m["step"] for m in lines_of(resumed) if m["type"] == "progress" and "train_loss" in m]
    assert steps[0] == 5

    a = mx.load(str(straight.adapter_dir / "adapters.safetensors"))
    b = mx.load(str(resumed.adapter_dir / "adapters.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert mx.allclose(a[k], b[k], atol=1e-6).item(), k


def test_keys_that_match_no_layer_name_the_real_ones(tiny_llama: Path, tmp_path: Path) -> None:  # noqa: F811
    recipe = tiny_fact_recipe(lora__keys=["q_proj"])
    with pytest.raises(DropError) as e:
        MLXTrainer().train(make_ctx(tmp_path, recipe, tiny_llama))
    assert "self_attn.q_proj" in e.value.problems[0].fix
