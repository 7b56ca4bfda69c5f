"""Process-group setup for DistributedDataParallel, and the few collectives the trainer needs.

Under ``torchrun`` the environment holds RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous address; otherwise the run
is a single process and every helper here is a no-op. The backend is NCCL on GPUs and gloo on CPUs. The model code
never sees any of this: the trainer wraps the model in DDP from here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from gcnn.errors import ConfigError


@dataclass
class Dist:
    """This process's place in the run: rank among world_size processes, and the device it trains on."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device: str = "auto") -> Dist:
    """Pick the device and, under torchrun (WORLD_SIZE > 1), join the process group."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device = cuda, but no CUDA GPU is available to this PyTorch")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local_rank)
        chosen = torch.device("cuda", local_rank)
    else:
        chosen = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Dist(rank=rank, world_size=world_size, device=chosen)


def teardown(ctx: Dist) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, ctx: Dist) -> nn.Module:
    """DDP around ``model`` when distributed. Unused parameters are expected: a batch may have no word in one
    of the adaptive softmax's tail clusters."""
    if not ctx.enabled:
        return model
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=True)


def all_sum(values: list[float], ctx: Dist) -> list[float]:
    """Element-wise sum of ``values`` over all processes (float64)."""
    if not ctx.enabled:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def all_max(value: int, ctx: Dist) -> int:
    """The largest ``value`` over all processes: used so that every rank stops at the same update."""
    if not ctx.enabled:
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=ctx.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def gather_to_main(obj: Any, ctx: Dist) -> list[Any] | None:
    """Every rank's ``obj`` on rank 0 (None elsewhere). Only for small plain-data objects (RNG states)."""
    if not ctx.enabled:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out if ctx.is_main else None


def barrier(ctx: Dist) -> None:
    if ctx.enabled:
        dist.barrier()
