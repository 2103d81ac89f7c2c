"""Several processes, one model: DDP under ``torchrun``, and a no-op world of one without it.

``torchrun --nproc_per_node 4 -m bot.cli train ...`` starts one process per GPU with
``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR`` set; we join the group with ``env://``,
NCCL on GPUs and gloo on CPUs (which is also how the tests run two ranks on one machine).
Every rank trains on its own random windows and DDP averages the gradients, so the effective
batch is ``world_size`` times the per-rank one. Rank 0 alone writes checkpoints, training
state and the progress bar; decisions that must agree (stop now? was that the best model?)
are taken on rank 0 and broadcast.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class World:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(setting: str) -> torch.device:
    """``auto`` is CUDA when present, else CPU."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def init_world(device_setting: str = "auto") -> World:
    """Join the torchrun process group if there is one; otherwise a world of one."""
    device = pick_device(device_setting)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return World(0, 1, device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, init_method="env://")
    rank = dist.get_rank()
    if device.type == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    log.info("rank %d of %d on %s", rank, world_size, device)
    return World(rank, dist.get_world_size(), device)


def close_world(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, world: World) -> nn.Module:
    """The module to run forward/backward through: DDP across ranks, the model itself alone."""
    if not world.distributed:
        return model
    ids = [world.device.index] if world.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def broadcast_floats(values: list[float], world: World) -> list[float]:
    """Rank 0's ``values`` on every rank (a no-op alone)."""
    if not world.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=_comm_device(world))
    dist.broadcast(t, src=0)
    return [float(v) for v in t.tolist()]


def mean_across(value: float, world: World) -> float:
    """The mean of ``value`` over all ranks."""
    if not world.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_comm_device(world))
    dist.all_reduce(t)
    return float(t.item()) / world.world_size


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def _comm_device(world: World) -> torch.device:
    # NCCL only moves CUDA tensors; gloo only CPU ones.
    return world.device if world.device.type == "cuda" else torch.device("cpu")
