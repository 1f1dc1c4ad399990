"""torchrun / DDP helpers: process-group setup, rank-0 checks, exact sharded evaluation.

torchrun exports RANK, WORLD_SIZE and LOCAL_RANK; without them the trainer runs as one process.
Backend: nccl on CUDA, gloo on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def resolve_device(device_arg: str, local_rank: int) -> torch.device:
    """``--device cuda`` under torchrun -> ``cuda:LOCAL_RANK``; checks that CUDA exists."""
    device = torch.device(device_arg)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device_arg!r}: CUDA is not available on this machine (use --device cpu)")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


def init_distributed(device_arg: str) -> tuple[DistInfo, torch.device]:
    """Initialise the default process group when launched by torchrun with WORLD_SIZE > 1."""
    info = DistInfo(rank=_env_int("RANK", 0), world_size=_env_int("WORLD_SIZE", 1),
                    local_rank=_env_int("LOCAL_RANK", 0))
    device = resolve_device(device_arg, info.local_rank)
    if info.distributed and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend=backend, init_method="env://", rank=info.rank,
                                world_size=info.world_size, **kwargs)
    return info, device


def wait_for_all_ranks(info: DistInfo) -> None:
    """Barrier at the end of a successful run: ranks leave together, so none tears gloo down while
    its peer is still saving or talking to it (seen: a peer aborting in gloo's threads)."""
    if info.distributed and dist.is_initialized():
        dist.barrier()


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (no-op single-process)."""
    if info.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


class ShardSampler(Sampler[int]):
    """Deterministic, *unpadded* strided shard ``range(rank, N, world)``.

    DistributedSampler pads the dataset by repeating samples so that every rank gets the same
    count; counted in evaluation, the repeats would bias accuracy. These shards partition the
    dataset exactly, so all-reduced counts total N.
    """

    def __init__(self, num_samples: int, rank: int = 0, world_size: int = 1):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"invalid rank {rank} for world size {world_size}")
        self.num_samples_total = int(num_samples)
        self.rank, self.world_size = int(rank), int(world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.num_samples_total, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.num_samples_total, self.world_size))
