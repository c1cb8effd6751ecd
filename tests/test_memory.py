"""The memory guard: estimates from safetensors headers, the shrinking ladder, MLX's errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from lorainbox.core.errors import DropError
from lorainbox.trainers.base import Footprint, OutOfMemory
from lorainbox.trainers.memory import (
    OVERHEAD_GB,
    MemoryGuard,
    estimate_for,
    estimate_gb,
    is_out_of_memory,
    longest_example_tokens,
    memory_budget_gb,
    metal_working_set_bytes,
    plan_footprint,
    read_model_shape,
    shrink_after_oom,
    working_set_from,
)

from tests.models import TINY_FACT, tiny_fact_recipe, tiny_llama, tiny_llama_4bit  # noqa: F401


def test_shape_from_headers_plain_and_quantized(tiny_llama: Path, tiny_llama_4bit: Path) -> None:  # noqa: F811
    plain = read_model_shape(tiny_llama)
    assert (plain.hidden_size, plain.num_layers, plain.compute_bytes) == (128, 2, 4)
    assert not plain.quantized
    assert 0.9 < plain.weight_bytes / (tiny_llama / "model.safetensors").stat().st_size <= 1
    q = read_model_shape(tiny_llama_4bit)
    assert q.quantized and q.hidden_size == 128
    assert q.weight_bytes < plain.weight_bytes / 2


def test_estimate_grows_with_batch_and_sequence_and_checkpointing_saves(tiny_llama: Path) -> None:  # noqa: F811
    shape = read_model_shape(tiny_llama)
    lora = tiny_fact_recipe().lora
    base = estimate_gb(shape, lora, 4, 256, False)
    assert estimate_gb(shape, lora, 8, 256, False) > base
    assert estimate_gb(shape, lora, 4, 512, False) > base
    assert estimate_gb(shape, lora, 4, 256, True) < base
    assert base > OVERHEAD_GB


def test_fitting_recipe_is_left_alone(tiny_llama: Path) -> None:  # noqa: F811
    fp = plan_footprint(tiny_llama, tiny_fact_recipe(), 8.0)
    assert (fp.batch_size, fp.max_seq_length, fp.grad_checkpoint, fp.changes) == (4, 256, False, [])


def test_over_budget_shrinks_cheapest_first_and_says_why(tiny_llama: Path) -> None:  # noqa: F811
    recipe = tiny_fact_recipe(train__batch_size=16, train__max_seq_length=2048)
    shape = read_model_shape(tiny_llama)
    budget = round(estimate_gb(shape, recipe.lora, 4, 2048, True) + 0.01, 2)
    fp = plan_footprint(tiny_llama, recipe, budget)
    assert (fp.batch_size, fp.max_seq_length, fp.grad_checkpoint) == (4, 2048, True)
    assert [c.split(":")[0] for c in fp.changes] == [
        "grad checkpointing on",
        "batch 16 -> 8",
        "batch 8 -> 4",
    ]
    assert all(f"over the {budget:g} GB budget" in c for c in fp.changes)
    assert "estimated" in fp.changes[1]
    assert estimate_for(tiny_llama, recipe, fp) <= budget


def test_sequence_is_cut_last_and_never_below_the_floor(tiny_llama: Path) -> None:  # noqa: F811
    recipe = tiny_fact_recipe(train__batch_size=2, train__max_seq_length=2048)
    shape = read_model_shape(tiny_llama)
    budget = round(estimate_gb(shape, recipe.lora, 1, 512, True) + 0.001, 3)
    fp = plan_footprint(tiny_llama, recipe, budget)
    assert (fp.batch_size, fp.max_seq_length) == (1, 512)
    assert fp.changes[-1].startswith("max_seq_length 1024 -> 512: estimated")


def test_short_examples_are_not_charged_for_max_seq_length(tiny_llama: Path) -> None:  # noqa: F811
    recipe = tiny_fact_recipe(train__batch_size=16, train__max_seq_length=4096)
    shape = read_model_shape(tiny_llama)
    budget = estimate_gb(shape, recipe.lora, 16, 300, False) + 0.01
    assert plan_footprint(tiny_llama, recipe, budget, longest_example=300).changes == []
    assert plan_footprint(tiny_llama, recipe, budget).changes


def test_nothing_fits_is_the_persons_problem(tiny_llama: Path) -> None:  # noqa: F811
    with pytest.raises(DropError) as e:
        plan_footprint(tiny_llama, tiny_fact_recipe(), OVERHEAD_GB / 2)
    p = e.value.problems[0]
    assert "needs at least" in p.what and "batch 1, sequence 256 and checkpointing" in p.what
    assert f"the budget is {OVERHEAD_GB / 2:g} GB" in p.what
    assert "raise [memory] max_gb or pick a smaller base model" in p.fix


def test_longest_example_bound_covers_the_real_token_count(tiny_llama: Path) -> None:  # noqa: F811
    import json

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    lines = (TINY_FACT / "train.jsonl").read_text().splitlines()
    real = max(
        len(tok.apply_chat_template(json.loads(line)["messages"], return_dict=False))
        for line in lines
    )
    bound = longest_example_tokens([TINY_FACT / "train.jsonl"])
    assert bound is not None and real <= bound < real * 8


def test_oom_ladder_ends() -> None:
    fp = Footprint(2, 512, False)
    seen = []
    while (fp := shrink_after_oom(fp)) is not None:
        seen.append((fp.batch_size, fp.max_seq_length, fp.grad_checkpoint))
    assert seen == [(2, 512, True), (1, 512, True), (1, 256, True)]


def test_oom_shrink_records_the_reason() -> None:
    fp = shrink_after_oom(Footprint(4, 1024, True, ["grad checkpointing on: estimated"]))
    assert fp is not None and fp.batch_size == 2
    assert fp.changes[-1] == "batch 4 -> 2: ran out of memory"
    assert len(fp.changes) == 2


def test_budget_from_recipe_or_share_of_memory() -> None:
    import psutil

    assert memory_budget_gb(tiny_fact_recipe(memory__max_gb=6.5), 0.7) == 6.5
    share = memory_budget_gb(tiny_fact_recipe(), 0.5)
    assert share == pytest.approx(psutil.virtual_memory().total / 1e9 * 0.5, abs=0.01)


DEVICE_INFO = Path(__file__).parent / "data" / "macos" / "mlx_device_info_m4_pro.json"
GIB = 2**30


def test_metal_working_set_from_a_real_device_info() -> None:
    import json

    import mlx.core as mx

    assert working_set_from(json.loads(DEVICE_INFO.read_text())) == 40200896512
    assert working_set_from(mx.device_info()) is None  # this machine's CPU device has none
    assert metal_working_set_bytes() is None


def test_budget_is_capped_at_metals_working_set() -> None:
    recipe = tiny_fact_recipe()
    # A 16 GB Mac: Metal recommends about two thirds, less than 70 %.
    small = memory_budget_gb(recipe, 0.7, total_bytes=16 * GIB, working_set_bytes=11453251584)
    assert small == 11.45
    # The M4 Pro of the capture: 70 % of 48 GB is already below its working set.
    big = memory_budget_gb(recipe, 0.7, total_bytes=48 * GIB, working_set_bytes=40200896512)
    assert big == round(48 * GIB * 0.7 / 1e9, 2)
    assert memory_budget_gb(recipe, 0.7, total_bytes=16 * GIB, working_set_bytes=None) == 12.03


@pytest.mark.parametrize(
    "message",
    [
        "[malloc] Unable to allocate 17179869184 bytes.",
        "[metal::malloc] Unable to allocate 4096 bytes.",
        "[metal::malloc] Resource limit (499000) exceeded.",
        "[metal::malloc] Attempting to allocate 18253611008 bytes which is greater than the "
        "maximum allowed buffer size of 17179869184 bytes.",
        "[METAL] Command buffer execution failed: Insufficient Memory "
        "(00000008:kIOGPUCommandBufferCallbackErrorOutOfMemory)",
    ],
)
def test_mlx_allocation_failures_are_out_of_memory(message: str) -> None:
    assert is_out_of_memory(RuntimeError(message))


def test_other_errors_are_not_out_of_memory() -> None:
    assert not is_out_of_memory(RuntimeError("[matmul] Last dimension of first input must match"))
    assert not is_out_of_memory(KeyError("memory"))
    assert is_out_of_memory(MemoryError())


def test_guard_turns_peak_over_budget_into_out_of_memory() -> None:
    import mlx.core as mx

    old_limit = mx.get_memory_limit()
    try:
        guard = MemoryGuard(OVERHEAD_GB + 0.2)
        assert mx.get_memory_limit() == guard.limit
        guard.check()
        mx.eval(mx.zeros((80_000_000,), dtype=mx.float32))  # 0.32 GB
        with pytest.raises(OutOfMemory, match="went over"):
            guard.check()
    finally:
        mx.set_memory_limit(old_limit)
        mx.clear_cache()


def test_buffer_cache_is_bounded_by_the_working_set() -> None:
    import mlx.core as mx
    from lorainbox.trainers.memory import GB, MIN_CACHE_GB, apply_mlx_limits

    apply_mlx_limits(8.0, cache_gb=0.5)
    assert mx.set_cache_limit(0) == int(0.5 * GB)
    apply_mlx_limits(8.0, cache_gb=0.01)
    assert mx.set_cache_limit(0) == int(MIN_CACHE_GB * GB)
    limit = apply_mlx_limits(2.0, cache_gb=100.0)
    assert mx.set_cache_limit(0) == limit // 4
