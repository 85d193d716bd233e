"""Process-group setup and model wrapping for torchrun (DDP or FSDP2).

World size 1 takes the same code path with no wrapping, so single-process runs need no
special case. The model code itself never sees any of this.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group torchrun describes through env vars; no-op for a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local)
        # rank 0 alone prepares data (world, tokenizer, shards) while the others wait at a barrier:
        # allow far longer than the 10-minute default before calling that a hang
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(hours=3))
    return DistInfo(rank=rank, local_rank=local, world_size=world)


def resolve_device(choice: str, info: DistInfo | None = None, *, flag: str = "device") -> torch.device:
    """auto | cpu | cuda | cuda:N | mps -> a torch.device; `cuda` is this process's GPU under torchrun.

    An unknown name or a GPU this machine lacks is a one-line LmforgeError naming `flag` (the
    option or config field the choice came from) instead of a torch error at the first tensor move.
    """
    from lmforge.errors import LmforgeError

    name = str(choice).strip()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":  # Apple GPUs: inference commands (chat, serve, eval) run there too
        if not (torch.backends.mps.is_available()):
            raise LmforgeError(f"{flag} {choice}: MPS is not available on this machine (use cpu)")
        return torch.device("mps")
    kind, colon, index = name.partition(":")
    if kind != "cuda" or (colon and not index.isdigit()):
        raise LmforgeError(f"{flag} {choice}: expected auto, cpu, cuda, cuda:N or mps")
    if not torch.cuda.is_available():
        raise LmforgeError(f"{flag} {choice}: CUDA is not available on this machine (use cpu)")
    i = int(index) if colon else (info or DistInfo()).local_rank
    if i >= torch.cuda.device_count():
        raise LmforgeError(f"{flag} {choice}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device("cuda", i)


def parallelize(model: torch.nn.Module, info: DistInfo, mode: str, device: torch.device) -> torch.nn.Module:
    """Wrap for data parallelism: DDP (replicated weights) or FSDP2 (sharded per block).

    FSDP2 shards every transformer block in `model` (one model's, or a policy's and a value model's
    trained together), then the root: the rest (embeddings, final norms, heads)."""
    if not info.enabled:
        return model
    if mode == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        from lmforge.model.transformer import Block

        for block in [m for m in model.modules() if isinstance(m, Block)]:
            fully_shard(block)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)


def is_fsdp(model: torch.nn.Module, inside: bool = False) -> bool:
    """Whether `model` was sharded by FSDP2's `fully_shard` (its forward then gathers its weights: a
    collective); `inside`: whether any of its modules was (a model within a sharded root)."""
    if not dist.is_available():
        return False
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in model.modules()) if inside else isinstance(model, FSDPModule)


@torch.no_grad()
def gather_full_weights(model: torch.nn.Module, replica: torch.nn.Module) -> torch.nn.Module:
    """Copy `model`'s whole weights into `replica`, a plain module of the same structure, and return it.

    Under FSDP2 every sharded parameter is all-gathered (`DTensor.full_tensor`): a collective, so every
    rank calls this, at the same point. What needs the whole model outside the sharded forward (the
    generation engine, a saved checkpoint) uses the replica: on each rank, one more copy of the weights.
    """
    from torch.distributed.tensor import DTensor

    ours, theirs = dict(model.named_parameters()), dict(replica.named_parameters())
    if ours.keys() != theirs.keys():
        raise ValueError("gather_full_weights: the replica's parameters are not the model's")
    for name, p in ours.items():
        theirs[name].copy_(p.full_tensor() if isinstance(p, DTensor) else p)
    return replica


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def all_gather_rows(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Every rank's `t` (the same shape on each), concatenated along dim 0 in rank order."""
    if not info.enabled:
        return t
    out = t.new_empty((info.world_size * t.shape[0], *t.shape[1:]))
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # the new name (2.13)
    gather(out, t.contiguous())
    return out


def mean_over_ranks(total: float, count: int, info: DistInfo, device: torch.device) -> float:
    """(sum of every rank's `total`) / (sum of every rank's `count`): a mean over sharded work.

    >>> mean_over_ranks(3.0, 4, DistInfo(), torch.device("cpu"))
    0.75
    """
    t = all_reduce_sum(torch.tensor([float(total), float(count)], dtype=torch.float64, device=device), info)
    return float(t[0] / t[1]) if float(t[1]) else float("nan")


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
