"""Parallelism: processes (DDP under ``torchrun``) and the CPU threads of each.

``torchrun --nproc_per_node 4 -m bot.cli train ...`` starts one process per GPU with
``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR`` set; we join the group with ``env://``,
NCCL on GPUs and gloo on CPUs (which is also how the tests run two ranks on one machine).
Every rank trains on its own random windows and DDP averages the gradients, so the effective
batch is ``world_size`` times the per-rank one. Rank 0 alone writes checkpoints, training
state and the progress bar; decisions that must agree (stop now? was that the best model?)
are taken on rank 0 and broadcast.

On a CPU, :class:`ThreadTuner` picks how many threads each process uses, by timing steps.
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


# ------------------------------------------------------------------------------ threads


class ThreadTuner:
    """Uses the CPU thread count that trains fastest right now, re-checking as load changes.

    An OpenMP team waits at every parallel region for its slowest thread. On a machine where
    other processes hold some of the cores, a team as wide as the machine spends much of its
    time waiting: on a 2-core VM with one busy neighbour, 1 thread trained at 6.5K tokens/s
    and 2 threads at 2.2K; alone, 2 threads are the faster. So every ``every`` steps each
    candidate count runs ``trial`` steps, and the fastest (median step time) is used until
    the next round. The first ``skip`` steps (warm-up, compilation) are not timed.
    """

    def __init__(
        self, max_threads: int, *, every: int = 200, trial: int = 2, skip: int = 1
    ) -> None:
        self.candidates = sorted({max_threads, max(1, max_threads - 1), max(1, max_threads // 2)})
        self.every, self.trial, self.skip = every, trial, skip
        self.times: dict[int, list[float]] = {n: [] for n in self.candidates}
        self.best = max_threads

    def threads_for(self, step: int) -> int:
        """Set and return the thread count for optimizer step ``step``."""
        n = self._choose(step)
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
        return n

    def _choose(self, step: int) -> int:
        if step < self.skip:
            return self.best
        phase = (step - self.skip) % self.every
        if phase >= self.trial * len(self.candidates):
            return self.best
        n = self.candidates[phase // self.trial]
        if phase % self.trial == 0:
            self.times[n] = []  # a fresh trial of this count
        return n

    def record(self, step: int, threads: int, seconds: float) -> None:
        """Time of step ``step``, run with ``threads``; after a round, pick the fastest."""
        phase = (step - self.skip) % self.every
        if step < self.skip or phase >= self.trial * len(self.candidates):
            return
        self.times[threads].append(seconds)
        if phase == self.trial * len(self.candidates) - 1:
            measured = {n: sorted(t)[len(t) // 2] for n, t in self.times.items() if t}
            best = min(measured, key=measured.__getitem__)
            if best != self.best:
                log.info("using %d CPU threads (step times %s)", best, _fmt(measured))
            self.best = best


def _fmt(times: dict[int, float]) -> str:
    return ", ".join(f"{n}: {1000 * t:.0f} ms" for n, t in sorted(times.items()))
