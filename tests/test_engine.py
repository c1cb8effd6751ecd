"""``trainer = "auto"``: MLX on Apple Silicon, PyTorch with CUDA or on the CPU elsewhere, and why."""

from __future__ import annotations

import json
from pathlib import Path

import lorainbox.trainers.engine as engine
import pytest
from lorainbox.drop.recipe import Recipe
from lorainbox.trainers.engine import choose_engine
from lorainbox.worker.main import choose_trainer


@pytest.fixture
def linux_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "is_apple_silicon", lambda: False)
    monkeypatch.setattr(engine, "cuda_device", lambda: None)


def test_a_cpu_only_machine_trains_with_torch_and_says_why(linux_cpu: None) -> None:
    choice = choose_engine("auto", mlx_usable=True)  # MLX's CPU build is there, and slower
    assert choice.name == "torch"
    assert choice.reason.startswith("no GPU: PyTorch on the CPU") and "tokens/s" in choice.reason


def test_an_nvidia_card_trains_with_torch_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "is_apple_silicon", lambda: False)
    monkeypatch.setattr(engine, "cuda_device", lambda: "NVIDIA H200")
    choice = choose_engine("auto", mlx_usable=True)
    assert choice.name == "torch" and "NVIDIA GPU (NVIDIA H200)" in choice.reason


def test_apple_silicon_trains_with_mlx_and_with_torch_only_without_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(engine, "is_apple_silicon", lambda: True)
    assert choose_engine("auto", mlx_usable=True).name == "mlx"
    assert "Metal" in choose_engine("auto", mlx_usable=True).reason
    without = choose_engine("auto", mlx_usable=False)
    assert without.name == "torch" and "without MLX" in without.reason


def test_a_base_quantized_for_mlx_goes_to_mlx_where_it_runs(
    linux_cpu: None, tmp_path: Path
) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"quantization": {"bits": 4}}))
    assert choose_engine("auto", tmp_path, mlx_usable=True).name == "mlx"
    assert choose_engine("auto", tmp_path, mlx_usable=False).name == "torch"


def test_a_pinned_engine_is_taken_as_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "is_apple_silicon", lambda: True)
    assert choose_engine("torch", mlx_usable=True).name == "torch"
    monkeypatch.setattr(engine, "is_apple_silicon", lambda: False)
    pinned = choose_engine("mlx", mlx_usable=True)
    assert pinned.name == "mlx" and 'trainer = "mlx"' in pinned.reason


def test_the_worker_picks_torch_for_the_demo_recipe_on_this_linux_box(linux_cpu: None) -> None:
    recipe = Recipe.model_validate(
        {"name": "demo", "extends": None, "base_model": "lorainbox:tiny-llama", "trainer": "auto"}
    )
    trainer, why = choose_trainer(recipe)
    assert trainer.name == "torch" and why.startswith("no GPU")
    trainer, why = choose_trainer(recipe.model_copy(update={"trainer": "mlx"}))
    assert trainer.name == "mlx" and "asks for it" in why
