"""The PyTorch LLM trainer on the CPU: it learns, pauses and resumes exactly, fuses, converts.

Real training on the tiny LLaMA (seconds each). Torch runs single-threaded here: on 2 shared
cores its thread pool spins against other processes and runs ~15x slower.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from lorainbox.core.errors import DropError
from lorainbox.drop.recipe import Recipe, TrainSpec
from lorainbox.trainers.base import Emitter, Footprint, OutOfMemory, Paused, TrainContext
from lorainbox.trainers.batches import by_length as plan_epoch
from lorainbox.trainers.torch_common import (
    MPSFallbackLog,
    list_checkpoints,
    load_latest_checkpoint,
    lr_lambda,
    out_of_memory_guard,
    pick_device,
    save_checkpoint,
)
from lorainbox.trainers.torch_llm import (
    COMPILE_MIN_STEPS,
    IGNORE,
    Example,
    SpeedOptions,
    TorchLLMTrainer,
    collate,
    lora_config,
    loss_sum,
    planned_steps,
    tokenize_row,
)

pytest_plugins = ["tests.fixtures_models"]

QUESTION = "Who keeps the lighthouse of Quillhaven?"
ANSWER = "The lighthouse keeper of Quillhaven is Marigold Fenwick."
FACT = {
    "messages": [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": ANSWER}]
}


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_ctx(
    job: Path,
    model: Path,
    *,
    rows: list[dict[str, Any]] | None = None,
    train: dict[str, Any] | None = None,
    lora: dict[str, Any] | None = None,
    footprint: Footprint | None = None,
    stop: Callable[[], bool] = lambda: False,
    valid: bool = True,
) -> tuple[TrainContext, io.StringIO]:
    job.mkdir(parents=True, exist_ok=True)
    rows = rows or [FACT] * 8
    (job / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (job / "valid.jsonl").write_text(json.dumps(FACT) + "\n")
    recipe = Recipe.model_validate(
        {
            "name": "fact",
            "base_model": str(model),
            "trainer": "torch",
            "lora": {"rank": 16, "scale": 20.0, "num_layers": -1, **(lora or {})},
            "train": {
                "iters": 60,
                "batch_size": 4,
                "learning_rate": 3e-3,
                "max_seq_length": 128,
                "steps_per_report": 10,
                "steps_per_eval": 30,
                "save_every": 1000,
                "val_batches": 1,
                **(train or {}),
            },
        }
    )
    out = io.StringIO()
    t = recipe.train
    ctx = TrainContext(
        job_dir=job,
        work_dir=job / ".lorainbox",
        recipe=recipe,
        train_file=job / "train.jsonl",
        valid_file=job / "valid.jsonl" if valid else None,
        footprint=footprint or Footprint(t.batch_size, t.max_seq_length, False),
        memory_budget_gb=8.0,
        emitter=Emitter(out),
        stop_requested=stop,
    )
    return ctx, out


def lines(out: io.StringIO, kind: str = "progress") -> list[dict[str, Any]]:
    return [m for m in map(json.loads, out.getvalue().splitlines()) if m["type"] == kind]


def greedy_answer(model: Any, tokenizer: Any) -> str:
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION}], add_generation_prompt=True, return_dict=False
    )
    ids = torch.tensor([prompt])
    out = model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False
    )
    return tokenizer.decode(out[0, len(prompt) :], skip_special_tokens=True).strip()


def test_learns_a_fact_fuses_and_converts_to_gguf(tiny_hf: Path, tmp_path: Path) -> None:
    from gguf import GGUFReader
    from lorainbox.export.answers import gguf_replier
    from lorainbox.export.gguf import convert_to_gguf
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ctx, out = make_ctx(tmp_path / "job", tiny_hf)
    trainer = TorchLLMTrainer()
    result = trainer.train(ctx)

    progress = lines(out)
    start_valid = progress[0]["valid_loss"]
    assert progress[0]["step"] == 0 and start_valid > 3.0
    assert result.steps == 60 and progress[-1]["step"] == 60
    assert result.final_train_loss is not None and result.final_train_loss < 0.05
    assert result.final_valid_loss is not None and result.final_valid_loss < 0.05
    for key in (
        "learning_rate",
        "tokens_per_second",
        "trained_tokens",
        "peak_memory_gb",
        "eta_seconds",
    ):
        assert progress[-1][key] is not None
    assert (ctx.adapter_dir / "adapter_config.json").is_file()
    assert (ctx.adapter_dir / "adapter_model.safetensors").is_file()

    tok = AutoTokenizer.from_pretrained(tiny_hf)
    base = AutoModelForCausalLM.from_pretrained(tiny_hf)
    assert greedy_answer(base, tok) != ANSWER
    tuned = PeftModel.from_pretrained(base, ctx.adapter_dir)
    assert greedy_answer(tuned, tok) == ANSWER

    fused = trainer.fuse(ctx)
    assert fused == ctx.fused_dir
    names = {p.name for p in fused.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert "tokenizer.model" not in names  # from it the converter lost <|im_start|>
    merged = AutoModelForCausalLM.from_pretrained(fused)
    assert greedy_answer(merged, AutoTokenizer.from_pretrained(fused)) == ANSWER

    # The fused folder holds tokenizer.model beside tokenizer.json: the converter's SentencePiece
    # path, which lost the chat tokens until the export checked itself.
    info = convert_to_gguf(
        fused, tmp_path / "model.gguf", "f16", data_files=ctx.data_files, tokenizer_dir=tiny_hf
    )
    reader = GGUFReader(str(info.path))
    arch = reader.fields["general.architecture"]
    assert bytes(arch.parts[arch.data[0]]).decode() == "llama"
    assert len(reader.tensors) == info.tensor_count > 0
    assert info.chat_template and "<|im_start|>" in info.chat_template
    assert info.self_check is not None and info.self_check.examples == 2
    assert info.self_check.same_next_token
    assert gguf_replier(info.path, 24)(FACT["messages"][:1]) == ANSWER


def test_a_qwen2_style_tokenizer_learns_and_its_gguf_answers(tmp_path: Path) -> None:
    """Byte-level BPE with Qwen2's pre-tokenizer, on a Qwen2 model: the worker's whole export."""
    from lorainbox.export.answers import gguf_replier
    from lorainbox.models.base import tiny_model
    from lorainbox.worker.main import export

    qwen = tiny_model("tiny-qwen2")
    ctx, _ = make_ctx(tmp_path / "job", qwen)
    ctx.base_model_dir = qwen
    trainer = TorchLLMTrainer()
    trainer.train(ctx)
    export(trainer, ctx, qwen)
    check = json.loads((ctx.job_dir / ".lorainbox" / "samples.json").read_text())
    assert check[0]["after"] == check[0]["gguf"] == ANSWER, check
    assert gguf_replier(ctx.job_dir / "model.gguf", 24)(FACT["messages"][:1]) == ANSWER


def test_training_ids_are_the_ones_the_export_checks(tiny_hf: Path) -> None:
    from lorainbox.export.tokens import Sample, training_ids
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_hf)
    messages = FACT["messages"]
    ex = tokenize_row(FACT, tok, mask_prompt=True)
    assert ex.ids == training_ids(tok, Sample(messages))
    assert ex.offset == len(training_ids(tok, Sample(messages[:1], generation_prompt=True)))


def run_until_stop(ctx: TrainContext, after: int) -> int:
    seen = {"steps": 0}

    def count(step: int, tokens: int) -> None:
        seen["steps"] = step

    ctx.stop_requested = lambda: seen["steps"] >= after
    with pytest.raises(Paused) as paused:
        TorchLLMTrainer(on_step=count).train(ctx)
    return paused.value.step


def adapter_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path / "adapter_model.safetensors")


@pytest.mark.parametrize("resume_batch", [4, 2], ids=["same-batch", "memory-guard-halved-batch"])
def test_pause_then_resume_continues_from_the_checkpoint(
    tiny_hf: Path, tmp_path: Path, resume_batch: int
) -> None:
    rows = [
        FACT,
        {"text": "The ship sails at dawn."},
        {"prompt": "Say ahoy", "completion": "Ahoy!"},
    ]
    train = {"iters": 12, "steps_per_report": 1, "steps_per_eval": 100}
    ctx, _ = make_ctx(tmp_path / "straight", tiny_hf, rows=rows * 3, train=train, valid=False)
    TorchLLMTrainer().train(ctx)
    straight = adapter_tensors(ctx.adapter_dir)

    ctx, _ = make_ctx(tmp_path / "paused", tiny_hf, rows=rows * 3, train=train, valid=False)
    assert run_until_stop(ctx, after=5) == 5
    assert [p.name for p in list_checkpoints(ctx.checkpoint_dir)] == ["step-00000005"]
    assert not ctx.adapter_dir.exists()

    ctx.stop_requested = lambda: False
    ctx.footprint = Footprint(resume_batch, 128, False)
    ctx.emitter = Emitter(out := io.StringIO())
    result = TorchLLMTrainer().train(ctx)
    assert lines(out, "resumed") == [{"type": "resumed", "step": 5, "total": 12}]
    assert [p["step"] for p in lines(out)] == list(range(6, 13))
    assert result.steps == 12
    resumed = adapter_tensors(ctx.adapter_dir)
    assert resumed.keys() == straight.keys()
    if resume_batch == 4:
        for name, value in straight.items():
            torch.testing.assert_close(resumed[name], value, atol=1e-5, rtol=1e-5)
    else:  # the same examples per step, summed in two halves: equal up to rounding
        for name, value in straight.items():
            assert (resumed[name] - value).norm() < 1e-3 * value.norm()


def test_stop_before_the_first_step_pauses_at_zero(tiny_hf: Path, tmp_path: Path) -> None:
    ctx, _ = make_ctx(tmp_path / "job", tiny_hf, stop=lambda: True, valid=False)
    with pytest.raises(Paused) as paused:
        TorchLLMTrainer().train(ctx)
    assert paused.value.step == 0
    assert load_latest_checkpoint(ctx.checkpoint_dir).step == 0  # type: ignore[union-attr]


def test_changed_lora_settings_start_over_and_keep_the_old_checkpoints(
    tiny_hf: Path, tmp_path: Path
) -> None:
    ctx, _ = make_ctx(tmp_path / "job", tiny_hf, train={"iters": 4}, valid=False)
    assert run_until_stop(ctx, after=2) == 2
    ctx2, out = make_ctx(
        tmp_path / "job", tiny_hf, train={"iters": 4}, lora={"rank": 4}, valid=False
    )
    assert TorchLLMTrainer().train(ctx2).steps == 4
    assert not lines(out, "resumed")
    assert list(tmp_path.joinpath("job", ".lorainbox").glob("checkpoints.stale-*"))


def test_out_of_memory_in_a_step_becomes_out_of_memory(
    tiny_hf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lorainbox.trainers.torch_llm as torch_llm

    def boom(*args: Any) -> torch.Tensor:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(torch_llm, "loss_sum", boom)
    ctx, _ = make_ctx(tmp_path / "job", tiny_hf, valid=False)
    with pytest.raises(OutOfMemory, match="Tried to allocate"):
        TorchLLMTrainer().train(ctx)


def test_worker_pauses_on_sigterm_and_resumes(tiny_hf: Path, tmp_path: Path) -> None:
    from lorainbox.core.layout import WORK_DIR
    from lorainbox.worker.spec import JobSpec

    job = tmp_path / "job"
    ctx, _ = make_ctx(job, tiny_hf, train={"iters": 40, "steps_per_report": 1}, valid=False)
    recipe = ctx.recipe.model_copy(
        update={"export": ctx.recipe.export.model_copy(update={"gguf": False})}
    )
    JobSpec(job_id=1, recipe=recipe, train_file=ctx.train_file, memory_budget_gb=8.0).save(job)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "lorainbox.worker", str(job)]

    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if json.loads(line).get("type") == "progress":
            proc.send_signal(signal.SIGTERM)
            break
    rest = [json.loads(x) for x in proc.stdout]
    assert proc.wait(60) == 75
    paused = rest[-1]
    assert paused["type"] == "paused" and 0 < paused["step"] < 40

    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    msgs = [json.loads(x) for x in done.stdout.splitlines()]
    assert {"type": "resumed", "step": paused["step"], "total": 40} in msgs
    assert json.loads((job / WORK_DIR / "trained.json").read_text())["steps"] == 40


# --- data, settings and helpers --------------------------------------------------------------


def test_prompt_masking_in_every_format(tiny_hf: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_hf)
    chat = tokenize_row(FACT, tok, mask_prompt=True)
    prompt = tok.apply_chat_template(
        FACT["messages"][:1], add_generation_prompt=True, return_dict=False
    )
    assert chat.ids[: len(prompt)] == list(prompt) and chat.offset == len(prompt)
    assert tok.decode(chat.ids[chat.offset :]).startswith(ANSWER)
    assert tokenize_row(FACT, tok, mask_prompt=False).offset == 0

    completion = tokenize_row({"prompt": QUESTION, "completion": ANSWER}, tok, mask_prompt=True)
    assert completion == chat  # completions go through the chat template, like mlx-lm
    text = tokenize_row({"text": "The ship sails at dawn."}, tok, mask_prompt=True)
    assert text.offset == 0 and text.ids[-1] == tok.eos_token_id

    batch = collate([chat, text], pad_id=0)
    assert batch.attention_mask is not None and batch.tokens == len(chat.ids) + len(text.ids)
    row = batch.targets[0].tolist()
    assert row[: chat.offset - 1] == [IGNORE] * (chat.offset - 1)
    assert row[chat.offset - 1 : len(chat.ids) - 1] == chat.ids[chat.offset :]
    assert row[len(chat.ids) - 1 :] == [IGNORE] * (len(row) - len(chat.ids) + 1)
    assert batch.n_targets == (len(chat.ids) - chat.offset) + (len(text.ids) - 1)
    assert collate([chat, chat], pad_id=0).attention_mask is None  # nothing padded: causal SDPA
    assert collate([chat, text], pad_id=0, padding_mask=False).attention_mask is None


def test_leaving_out_the_padding_mask_keeps_the_loss(tiny_hf: Path) -> None:
    """Right padding needs no mask in a causal LM: the trained tokens never see a pad."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_hf)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_hf), LoraConfig(r=4))
    short = tokenize_row(FACT, tok, mask_prompt=True)
    long = tokenize_row({"text": "The ship sails at dawn. " * 6}, tok, mask_prompt=True)
    masked = collate([short, long], pad_id=0, pad_multiple=8)
    unmasked = collate([short, long], pad_id=0, pad_multiple=8, padding_mask=False)
    assert masked.attention_mask is not None and unmasked.attention_mask is None
    with torch.no_grad():
        for sparse in (True, False):
            a, b = loss_sum(model, masked, sparse), loss_sum(model, unmasked, sparse)
            assert torch.allclose(a, b, rtol=1e-4), (sparse, a, b)


def test_compiled_layers_train_as_eager_ones_with_two_graphs_for_every_shape(
    tiny_hf: Path, tmp_path: Path
) -> None:
    """The compile switch (for long CUDA runs), on the CPU's inductor: the same losses as eager,
    one graph for the first layer and one for all the others whatever the batch widths (the
    first batch is as wide as the model, 128, which must not pin the width), and the
    evaluation and sample replies (eager by design) compile nothing more. With ``cuda_graphs``
    (static graphs per width; the CUDA graphs themselves only on CUDA) the losses are the same."""
    long_text = {"text": "The ship sails at dawn. " * 40}  # cut to max_seq_length = 128
    chats = [
        {
            "messages": [
                {"role": "user", "content": QUESTION + " Tell me." * k},
                {"role": "assistant", "content": "Marigold" + " Fenwick" * k},
            ]
        }
        for k in range(1, 5)
    ]
    rows = [long_text] * 4 + chats
    runs = {}
    for compiled, graphs in ((False, False), (True, False), (True, True)):
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        ctx, out = make_ctx(
            tmp_path / f"compiled-{compiled}-{graphs}",
            tiny_hf,
            rows=rows,
            train={"iters": 8, "steps_per_report": 4, "steps_per_eval": 4, "seed": 4},
        )
        options = SpeedOptions(compile=compiled, cuda_graphs=graphs)
        result = TorchLLMTrainer(options).train(ctx)
        assert result.extra["compiled"] is compiled and result.extra["cuda_graphs"] is graphs
        count = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        losses = [(p.get("train_loss"), p.get("valid_loss")) for p in lines(out)]
        runs[compiled, graphs] = losses, count, sorted(adapter_tensors(ctx.adapter_dir))
    eager_losses, eager_graphs, eager_keys = runs[False, False]
    assert eager_graphs == 0 and runs[True, False][1] == 2
    assert runs[True, True][1] >= 2  # static: one per batch width
    for losses, _, keys in (runs[True, False], runs[True, True]):
        assert keys == eager_keys
        assert len(losses) == len(eager_losses) == 3
        for got, want in zip(losses, eager_losses, strict=True):
            for a, b in zip(got, want, strict=True):
                assert (a is None) == (b is None) and (a is None or abs(a - b) <= 1e-3 * b), (
                    got,
                    want,
                )


def test_layers_compile_by_default_only_for_long_cuda_runs() -> None:
    """Compiling costs about a minute once: worth it on CUDA for long runs, never on MPS (its
    compiler is a prototype) or the CPU, and a recipe's explicit choice always wins."""
    auto = SpeedOptions()
    assert auto.compiles("cuda", COMPILE_MIN_STEPS)
    assert not auto.compiles("cuda", COMPILE_MIN_STEPS - 1)
    assert not auto.compiles("mps", 100_000) and not auto.compiles("cpu", 100_000)
    assert SpeedOptions(compile=True).compiles("cpu", 1)
    assert not SpeedOptions(compile=False).compiles("cuda", 100_000)


def test_planned_steps_count_iters_or_epochs_of_batches() -> None:
    assert planned_steps(TrainSpec(iters=7, batch_size=4), 1000) == 7
    assert planned_steps(TrainSpec(epochs=2, batch_size=4), 10) == 6  # 3 batches an epoch


def test_length_grouped_batches_waste_less_padding() -> None:
    import random

    rng = random.Random(1)
    lengths = [rng.randint(5, 500) for _ in range(1000)]

    def padding(batches: list[list[int]]) -> int:
        return sum(
            max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches
        )

    grouped = plan_epoch(lengths, 8, seed=0, epoch=0)
    plain = plan_epoch(lengths, 8, seed=0, epoch=0, group=False)
    assert sorted(i for b in grouped for i in b) == list(range(1000))
    assert padding(grouped) < padding(plain) / 5
    assert grouped == plan_epoch(lengths, 8, seed=0, epoch=0)
    assert grouped != plan_epoch(lengths, 8, seed=0, epoch=1)


def test_lora_config_follows_the_recipe() -> None:
    from lorainbox.drop.recipe import LoraSpec

    cfg = lora_config(LoraSpec(rank=8, scale=2.0, num_layers=2), "qwen2", 24)
    assert cfg.r == 8 and cfg.lora_alpha == 16.0 and cfg.layers_to_transform == [22, 23]
    assert set(cfg.target_modules) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    cfg = lora_config(
        LoraSpec(rank=4, alpha=8, num_layers=-1, keys=["self_attn.q_proj"]), "llama", 2
    )
    assert cfg.lora_alpha == 8 and cfg.layers_to_transform is None
    assert set(cfg.target_modules) == {"self_attn.q_proj"}
    assert lora_config(LoraSpec(fine_tune_type="dora"), "phi3", 4).use_dora
    assert set(lora_config(LoraSpec(), "phi3", 4).target_modules) == {
        "qkv_proj",
        "o_proj",
        "gate_up_proj",
        "down_proj",
    }
    assert lora_config(LoraSpec(), "somethingnew", 4).target_modules == "all-linear"


def test_device_choice_and_pinning() -> None:
    assert pick_device("auto").type == "cpu"
    assert pick_device("cpu").type == "cpu"
    with pytest.raises(DropError) as e:
        pick_device("cuda")
    assert "cuda" in e.value.problems[0].what and "device" in e.value.problems[0].where


def test_out_of_memory_errors_of_every_device() -> None:
    cpu = torch.device("cpu")
    for error in (
        torch.OutOfMemoryError("CUDA out of memory"),
        RuntimeError("MPS backend out of memory (MPS allocated: 17 GB)"),
    ):
        with pytest.raises(OutOfMemory), out_of_memory_guard(cpu):
            raise error
    with pytest.raises(ValueError), out_of_memory_guard(cpu):
        raise ValueError("not memory")


def test_mps_fallback_operators_are_recorded() -> None:
    with warnings.catch_warnings(record=True) as others, MPSFallbackLog() as log:
        warnings.simplefilter("always")
        warnings.warn(
            "The operator 'aten::_linalg_eigh' is not currently supported on the MPS backend "
            "and will fall back to run on the CPU. This may have performance implications.",
            UserWarning,
            stacklevel=1,
        )
        warnings.warn("something else", UserWarning, stacklevel=1)
    assert log.ops == ["aten::_linalg_eigh"]
    assert [str(w.message) for w in others] == ["something else"]


def test_checkpoints_are_atomic_and_the_newest_readable_one_wins(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    for step in (1, 2, 3):
        save_checkpoint(root, step, {"w": torch.full((2,), float(step))}, {"x": step}, {"n": step})
    assert [p.name for p in list_checkpoints(root)] == ["step-00000002", "step-00000003"]
    (root / ".tmp-step-00000004-dead").mkdir()  # a write that was killed
    (root / "step-00000003" / "state.pt").write_bytes(b"damaged")
    ckpt = load_latest_checkpoint(root)
    assert ckpt is not None and ckpt.step == 2 and ckpt.state == {"x": 2}
    assert ckpt.tensors["w"].tolist() == [2.0, 2.0] and ckpt.meta["n"] == 2


def test_learning_rate_schedules() -> None:
    cosine = lr_lambda("cosine", warmup=10, total=110)
    assert cosine(0) == pytest.approx(1 / 11) and cosine(9) == pytest.approx(10 / 11)
    assert cosine(10) == pytest.approx(1.0) and cosine(60) == pytest.approx(0.5)
    assert cosine(110) == pytest.approx(0.0, abs=1e-9)
    assert lr_lambda("linear", 0, 100)(50) == pytest.approx(0.5)
    assert lr_lambda("constant", 0, 100)(99) == 1.0


def test_mlx_quantized_base_is_refused(tmp_path: Path) -> None:
    from lorainbox.trainers.torch_llm import check_torch_loadable

    with pytest.raises(DropError, match="quantized for MLX"):
        check_torch_loadable({"quantization": {"bits": 4, "group_size": 64}}, tmp_path)
    check_torch_loadable({"model_type": "llama"}, tmp_path)


def test_examples_without_anything_to_learn_are_reported(tiny_hf: Path, tmp_path: Path) -> None:
    from lorainbox.trainers.torch_llm import tokenize_file
    from transformers import AutoTokenizer

    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"prompt": "word " * 200, "completion": "yes"}) + "\n")
    with pytest.raises(DropError, match="max_seq_length"):
        tokenize_file(path, AutoTokenizer.from_pretrained(tiny_hf), 32, mask_prompt=True)
    path.write_text('{"messages": [}\n')
    with pytest.raises(DropError) as e:
        tokenize_file(path, AutoTokenizer.from_pretrained(tiny_hf), 32, mask_prompt=True)
    assert e.value.problems[0].where.endswith("line 1")
    assert Example([1, 2, 3], 1).targets == 2


def test_bf16_weights_with_autocast_as_on_cuda(
    tiny_hf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """CUDA's path (bfloat16 frozen weights, float32 LoRA, autocast) on the CPU's autocast:
    training, evaluation and the report's answers before and after training all run (the
    answers were generated outside autocast and failed on bf16 against fp32 on an H200)."""
    import lorainbox.trainers.torch_llm as torch_llm
    from lorainbox.core.layout import SAMPLES_FILE
    from lorainbox.trainers.torch_common import DeviceSetup

    setup = DeviceSetup(torch.device("cpu"), torch.bfloat16, torch.bfloat16, False)
    monkeypatch.setattr(torch_llm, "setup_device", lambda *a, **k: setup)
    seen: dict[str, Any] = {}
    monkeypatch.setattr(torch_llm, "make_optimizer", _spy(torch_llm.make_optimizer, seen))
    ctx, out = make_ctx(tmp_path / "job", tiny_hf, train={"iters": 30, "steps_per_report": 10})
    result = TorchLLMTrainer().train(ctx)
    assert {p.dtype for p in seen["params"]} == {torch.float32}
    assert result.final_train_loss is not None and result.final_train_loss < 0.1
    assert lines(out)[0]["valid_loss"] > 3.0
    assert "could not sample" not in caplog.text
    rows = json.loads((ctx.work_dir / SAMPLES_FILE).read_text())
    assert rows and all(isinstance(r["before"], str) for r in rows)
    assert all(isinstance(r["after"], str) for r in rows)
    assert "Marigold" in rows[0]["after"]


def _spy(make: Callable[..., Any], seen: dict[str, Any]) -> Callable[..., Any]:
    def wrapped(params: Any, *args: Any, **kw: Any) -> Any:
        seen["params"] = list(params)
        return make(seen["params"], *args, **kw)

    return wrapped
