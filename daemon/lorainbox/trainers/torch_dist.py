"""torch.distributed for the PyTorch trainer: gloo on the CPU, NCCL on CUDA.

The ranks come from torch's own launcher (``torch.distributed.run``), which sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address. The adapters' gradients are summed
with one all-reduce of a flat buffer per step rather than through DDP: the trainer already
weights every token by the global batch's count, so a sum is exactly one process's gradient,
and micro-batches (the memory guard's slices) need no ``no_sync``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import timedelta

import torch
import torch.distributed as dist

from lorainbox.drop.recipe import DistributedSpec
from lorainbox.trainers.distributed import World

TIMEOUT = timedelta(minutes=30)


def backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def join(spec: DistributedSpec) -> World:
    """Join the launcher's process group; on CUDA each rank takes the GPU of its local rank."""
    chosen = backend()
    if chosen == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(chosen, timeout=TIMEOUT)
    device = torch.device("cuda") if chosen == "nccl" else torch.device("cpu")

    def total(values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    return World.of(spec, dist.get_rank(), dist.get_world_size(), f"torch {chosen}", total)


def leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def sum_gradients(params: Sequence[torch.nn.Parameter]) -> None:
    """Sum every trainable parameter's gradient over the ranks, in one all-reduce.

    A rank whose share of a batch was empty has no gradients; it adds zeros."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    if dist.get_backend() == "gloo" and flat.device.type != "cpu":  # MPS: gloo reduces host memory
        host = flat.cpu()
        dist.all_reduce(host)
        flat = host.to(flat.device)
    else:
        dist.all_reduce(flat)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p)
        offset += n
