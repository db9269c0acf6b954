"""Process-group setup for `torchrun`: gloo on CPU, nccl on GPU, a no-op when alone."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class ProcessInfo:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str = "") -> ProcessInfo:
    """Join the process group torchrun describes in the environment, if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = device.startswith("cuda") or (not device and torch.cuda.is_available())
    if world_size == 1:
        return ProcessInfo(0, 1, torch.device(device or ("cuda" if use_cuda else "cpu")))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    chosen = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    return ProcessInfo(dist.get_rank(), dist.get_world_size(), chosen)


def cleanup() -> None:
    """Leave the group once every process is done (rank 0 may still be writing files)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def max_over_processes(value: float, device: torch.device) -> float:
    """The largest of each process's `value`, so every process takes the same decision."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor.item())
