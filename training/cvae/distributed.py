"""Training under torchrun: the launch read from its environment, the process group, each process's share of a batch.

Without torchrun there is one process and nothing here does anything. How the shares add up to one process's step:
docs/training.md ("On several GPUs or machines").
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
# Rank 0 alone validates and checkpoints every epoch while the others wait at a barrier; at the end the others
# leave without waiting for its evaluation and export.
TIMEOUT = dt.timedelta(minutes=30)


class LaunchError(SystemExit):
    """The launch cannot work as given; the message says how to fix it (a one-line error, exit status 2)."""

    def __init__(self, message: str) -> None:
        super().__init__(f"error: {message}")
        self.code = 2


@dataclass(frozen=True)
class Launch:
    """This process's place in the run: one process (the default), or one of torchrun's world_size."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: str | None = None  # "nccl" or "gloo" under torchrun; None: a single process, no process group

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs, checkpoints, evaluates and exports."""
        return self.rank == 0

    def share(self, rows: Tensor) -> Tensor:
        """This process's rows of a global batch (or of anything indexed like it): rank, rank + W, ..."""
        return rows[self.rank :: self.world_size] if self.world_size > 1 else rows

    def share_count(self, n: int) -> int:
        """How many of a global batch's first n rows are this process's."""
        return len(range(self.rank, n, self.world_size))

    def to_dict(self) -> dict[str, object]:
        return {"world_size": self.world_size, "backend": self.backend}


SINGLE_PROCESS = Launch()


def detect(env: Mapping[str, str], device_type: str) -> Launch:
    """The launch described by the environment: torchrun's variables, or none of them (a single process).

    Raises LaunchError when only some are set (a process started by hand as one rank of several, without the
    rendezvous that torchrun provides).
    """
    present = [name for name in TORCHRUN_VARIABLES if name in env]
    if not present:
        return Launch()
    missing = [name for name in TORCHRUN_VARIABLES if name not in env]
    if missing:
        raise LaunchError(
            f"{', '.join(present)} set but not {', '.join(missing)}: launch several processes with torchrun "
            "(torchrun --nproc_per_node N -m training ...), or unset those variables for one process"
        )
    try:
        rank, local_rank, world_size = (int(env[name]) for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
    except ValueError:
        raise LaunchError(
            f"RANK, LOCAL_RANK and WORLD_SIZE must be integers, got {env['RANK']!r}, {env['LOCAL_RANK']!r}, "
            f"{env['WORLD_SIZE']!r}: launch with torchrun"
        ) from None
    if not 0 <= rank < world_size or local_rank < 0:
        raise LaunchError(
            f"RANK {rank} / LOCAL_RANK {local_rank} do not fit WORLD_SIZE {world_size}: launch with torchrun"
        )
    return Launch(rank, local_rank, world_size, "nccl" if device_type == "cuda" else "gloo")


def device_of(launch: Launch, device: torch.device) -> torch.device:
    """The device this process trains on: on CUDA, one GPU per process on each machine (LOCAL_RANK)."""
    if device.type != "cuda" or not launch.distributed:
        return device
    count = torch.cuda.device_count()
    if launch.local_rank >= count:
        raise LaunchError(
            f"LOCAL_RANK {launch.local_rank} needs GPU {launch.local_rank}, but this machine has {count}: "
            f"--nproc_per_node must be at most {count} (one process per GPU)"
        )
    return torch.device("cuda", launch.local_rank)


def check_batches(launch: Launch, *, batch_size: int, label_batch: int, train_size: int) -> None:
    """Refuse, before anything is written, a world size that the global batches cannot be split over evenly."""
    w = launch.world_size
    if w == 1:
        return
    for flag, n in (("--batch-size", batch_size), ("--label-batch", label_batch)):
        if n % w:
            raise LaunchError(
                f"{flag} {n} is the global batch, split over {w} processes: it must be a multiple of {w} "
                f"(e.g. {flag} {max(w, n // w * w)})"
            )
    last = train_size % batch_size
    if 0 < last < w:
        raise LaunchError(
            f"the last batch of each epoch has {last} images ({train_size} % {batch_size}), fewer than the {w} "
            "processes: choose a --batch-size that leaves at least one image per process"
        )


def init(launch: Launch, device: torch.device) -> None:
    """Join the process group (torchrun's rendezvous, through its environment variables)."""
    if not launch.distributed:
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        launch.backend,
        rank=launch.rank,
        world_size=launch.world_size,
        timeout=TIMEOUT,
        device_id=device if device.type == "cuda" else None,
    )


def shutdown(launch: Launch) -> None:
    if launch.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(launch: Launch) -> None:
    if launch.distributed:
        dist.barrier()


def all_sum(launch: Launch, t: Tensor) -> Tensor:
    """t summed over every process (in place; t itself for one process)."""
    if launch.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t
