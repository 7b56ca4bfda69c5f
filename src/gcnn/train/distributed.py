"""Process-group setup for DistributedDataParallel, and the few collectives the trainer needs.

Under ``torchrun`` the environment holds RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous address; otherwise the run
is a single process and every helper here is a no-op. The backend is NCCL on GPUs and gloo on CPUs. The model code
never sees any of this: the trainer wraps the model in DDP from here.

Every wait on the other processes is bounded by ``timeout`` (``train.dist_timeout``): a process whose peers died (a
node lost, a worker killed) stops with :class:`PeerLostError`, which names this process, its host and the cause,
instead of hanging; :func:`lost_peer` recognises the errors the backends raise then.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from gcnn.errors import ConfigError, GcnnError


class PeerLostError(GcnnError):
    """This process lost contact with the other processes of the run (or they never all joined)."""


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


def setup(device: str = "auto", timeout: float | None = None) -> Dist:
    """Pick the device and, under torchrun (WORLD_SIZE > 1), join the process group; ``timeout`` (seconds) bounds
    the joining and every later collective."""
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
    ctx = Dist(rank=rank, world_size=world_size, device=chosen)
    if world_size > 1 and not dist.is_initialized():
        kwargs = {"timeout": timedelta(seconds=timeout)} if timeout else {}
        try:
            dist.init_process_group(backend="nccl" if use_cuda else "gloo", **kwargs)
        except Exception as exc:  # noqa: BLE001 - the store and backends raise RuntimeError and its kin
            where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
            raise PeerLostError(
                f"{whoami(ctx)}: the {world_size} processes of the run did not all join the process group at {where}"
                + (f" within train.dist_timeout = {timeout:g} s" if timeout else "")
                + f" ({short_cause(exc)}); is every node started with the same torchrun --nnodes/--rdzv-endpoint, "
                "and can each reach that address and port? (a node that failed before joining says why in its own log)"
            ) from None
    return ctx


def restart_count() -> int:
    """How often torchrun restarted this node's workers (0 outside torchrun). Nodes count separately: a node whose
    workers were stopped only because another node's failed does not count it."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def restart_advice(env: dict[str, str] | None = None) -> str | None:
    """A warning for ``torchrun --max-restarts N`` over several nodes with the rendezvous store shared with the
    workers (PyTorch's default): restarted workers can then read the previous attempt's addresses from that store
    and fail to connect (PyTorch issues 135712, 167288); ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` avoids it."""
    env = os.environ if env is None else env
    several_nodes = int(env.get("GROUP_WORLD_SIZE", "1") or 1) > 1
    if several_nodes and int(env.get("TORCHELASTIC_MAX_RESTARTS", "0") or 0) > 0 \
            and env.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        return ("torchrun --max-restarts over several nodes: export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 on every "
                "node before torchrun, or a restarted group may fail to connect (stale addresses in the shared "
                "rendezvous store, PyTorch issue 135712)")
    return None


def whoami(ctx: Dist) -> str:
    """``rank R of W on host H``, for messages."""
    return f"rank {ctx.rank} of {ctx.world_size} on host {socket.gethostname()}"


def lost_peer(exc: BaseException) -> bool:
    """Whether ``exc`` is what gloo/NCCL/the store raise when another process died or stopped answering."""
    if isinstance(exc, dist.DistError):
        return True
    if not isinstance(exc, RuntimeError):
        return False
    text = str(exc).lower()
    return any(word in text for word in ("gloo", "nccl", "connection", "timed out", "timeout", "socket", "peer"))


def short_cause(exc: BaseException) -> str:
    """The first line of a backend error, without C++ source locations."""
    line = next((x.strip() for x in str(exc).splitlines() if x.strip()), type(exc).__name__)
    if line.startswith("[") and "] " in line:  # "[../third_party/gloo/.../pair.cc:534] Connection closed by peer"
        line = line.split("] ", 1)[1]
    if ". " in line:  # gloo appends advice ("This is typically caused by ...") to the cause
        line = line.split(". ", 1)[0]
    return line[:300]


def teardown(ctx: Dist, *, failed: bool = False) -> None:
    """Leave the process group. After a lost peer the group is broken: abandon it (destroying it could wait on
    the dead) and let the process exit."""
    if ctx.enabled and dist.is_initialized() and not failed:
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


def broadcast_from_main(obj: Any, ctx: Dist) -> Any:
    """Rank 0's ``obj`` on every rank (small plain-data objects)."""
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_all(obj: Any, ctx: Dist) -> list[Any]:
    """Every rank's ``obj`` on every rank (small plain-data objects)."""
    if not ctx.enabled:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out
