"""torchrun / DistributedDataParallel plumbing: one process per GPU, initialised from env variables.

Without torchrun (no ``WORLD_SIZE`` > 1) everything degrades to a single process, which is what the
CPU tests run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from hrvit_nas import UserError
from profiling import resolve_device


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistContext:
    """Join the torchrun process group if launched by torchrun, else a single-process context."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext(0, 1, resolve_device(device))
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_device(device)
    if resolved.type == "cuda":
        resolved = torch.device("cuda", local_rank)
        torch.cuda.set_device(resolved)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if resolved.type == "cuda" else "gloo")
    return DistContext(rank, world_size, resolved)


def wrap_model(model: torch.nn.Module, ctx: DistContext, sync_bn: bool, find_unused: bool = False) -> torch.nn.Module:
    """DDP-wrap for multi-process runs (SyncBN optional); the bare module otherwise.

    ``find_unused`` is for supernets, whose inactive sub-layers get no gradient in a step.
    """
    if not ctx.enabled:
        return model
    if sync_bn:
        if ctx.device.type != "cuda":
            raise UserError("sync_bn needs one CUDA device per process; set sync_bn: false for CPU (gloo) runs")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # swaps the BN children in place
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=find_unused)


def all_gather_objects(obj, ctx: DistContext) -> list:
    if not ctx.enabled:
        return [obj]
    gathered: list = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()
