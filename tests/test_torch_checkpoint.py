"""A paused PyTorch job resumes on any device: the RNG states come back as CPU ByteTensors.

On MPS or CUDA a checkpoint read with ``map_location=device`` hands ``torch.set_rng_state``
device tensors, and it raises "RNG state must be a torch.ByteTensor". The "meta" device stands
in for them here: it moves tensors off the CPU just as "mps" would, and the error is the same.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lorainbox.trainers.torch_common import (
    load_latest_checkpoint,
    restore_training_state,
    resumable_checkpoint,
    save_checkpoint,
    training_state,
)


def test_a_device_map_location_breaks_set_rng_state(tmp_path: Path) -> None:
    """The failure the loader avoids, shown with torch itself."""
    torch.save({"rng": torch.get_rng_state()}, tmp_path / "state.pt")
    moved = torch.load(tmp_path / "state.pt", map_location="meta", weights_only=False)
    with pytest.raises(TypeError, match="ByteTensor"):
        torch.set_rng_state(moved["rng"])


def test_resume_for_another_device_restores_every_rng(tmp_path: Path) -> None:
    weight = torch.nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.AdamW([weight], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    weight.grad = torch.ones(3)
    optimizer.step()
    torch.manual_seed(7)
    save_checkpoint(
        tmp_path,
        1,
        {"w": weight.detach()},
        training_state(optimizer, scheduler),
        {"signature": {"r": 1}},
    )
    expected = torch.rand(4)

    ckpt = resumable_checkpoint(tmp_path, torch.device("meta"), {"r": 1})
    assert ckpt is not None
    rng = ckpt.state["rng"]["torch"]
    assert (rng.device.type, rng.dtype) == ("cpu", torch.uint8)
    restore_training_state(ckpt.state, optimizer, scheduler)
    assert torch.equal(torch.rand(4), expected)
    assert optimizer.state[weight]["exp_avg"].device == weight.device


def test_load_latest_checkpoint_reads_onto_the_cpu(tmp_path: Path) -> None:
    save_checkpoint(
        tmp_path, 2, {"w": torch.ones(1)}, {"rng": {"torch": torch.get_rng_state()}}, {}
    )
    ckpt = load_latest_checkpoint(tmp_path)
    assert ckpt is not None and ckpt.state["rng"]["torch"].device.type == "cpu"
