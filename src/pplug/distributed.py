"""Data-parallel training over N processes on torch.distributed: DDP all-reduces the gradients (gloo on CPU).

Three ways to start the processes; all give each one ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``:
- ``pplug train --processes N``: `launch` spawns N workers with ``torch.multiprocessing`` (spawn);
- ``torchrun --nproc_per_node N -m pplug train ...``;
- ``accelerate launch --multi_gpu --num_processes N -m pplug train ...`` (torchrun underneath, CPU too).
``accelerate launch --cpu --num_processes N`` starts ONE process unless given ``--mpirun_hostfile`` (its
multi-CPU mode is MPI); the MPI rank variables are read as accelerate reads them, and the one-process case is
refused with a one-line error (`launched`) instead of silently training alone.

What each rank does (see `DataParallelStep`): the same seeds, the same shuffled order and the same micro-batches
on every rank; rank r computes micro-batches r, r + N, ... of each optimizer step; DDP averages the gradients
once per step; every rank applies the same update. Rank 0 alone evaluates dev (the others wait for its
score), writes the run folder and shows progress bars.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from pplug.errors import PPlugError

# the variables a launcher sets, in the order accelerate reads them (torchrun, then MPI flavours)
RANK_VARS = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")
SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
TIMEOUT = timedelta(hours=2)  # a collective's patience: the other ranks wait while rank 0 evaluates dev


@dataclass(frozen=True)
class World:
    rank: int = 0  # this process's index in the run, 0..size-1
    size: int = 1  # processes training together

    @property
    def main(self) -> bool:
        """Rank 0: the one process that evaluates, writes files and shows progress."""
        return self.rank == 0


def _env_int(names: Sequence[str]) -> int | None:
    for name in names:
        if os.environ.get(name, "").strip():
            return int(os.environ[name])
    return None


def launched() -> World:
    """The world a launcher started this process in (``World()`` when started alone).

    Raises:
        PPlugError: ``accelerate launch --cpu --num_processes N`` (N > 1) started this process alone.
    """
    size, rank = _env_int(SIZE_VARS), _env_int(RANK_VARS)
    if size is not None and size > 1:
        return World(rank or 0, size)
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true" and os.environ.get("MASTER_ADDR"):
        raise PPlugError("accelerate launch --cpu started this process alone (its multi-CPU mode needs "
                         "--mpirun_hostfile); use `accelerate launch --multi_gpu --num_processes N` (torchrun, "
                         "CPU too), `torchrun --nproc_per_node N`, or `pplug train --processes N`")
    return World()


def current() -> World:
    """The process group this process has joined (``World()`` when none)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def training_world(processes: int) -> World:
    """The world a training loop with ``train.processes = processes`` runs in (1: alone, even inside a group).

    Raises:
        PPlugError: ``processes`` > 1 but this process is not in a group of that size.
    """
    if processes == 1:
        return World()
    world = current()
    if world.size != processes:
        raise PPlugError(f"train.processes={processes}, but this process is not one of {processes} launched "
                         f"together; start them with `pplug train --processes {processes}` or torchrun")
    return world


@contextmanager
def session(processes: int) -> Iterator[World]:
    """Join the launcher's process group (gloo) for one training run, or run alone when not launched.

    Args:
        processes: the asked number of processes; 1 follows the launcher.

    Raises:
        PPlugError: ``processes`` disagrees with the launcher's world size.
    """
    world = launched()
    if world.size == 1:
        yield world
        return
    if processes not in (1, world.size):
        raise PPlugError(f"--processes {processes}: this process is already one of {world.size} started by a "
                         f"launcher; drop --processes (the launcher decides)")
    own = not dist.is_initialized()
    if own:  # MASTER_ADDR / MASTER_PORT come from the launcher (env://)
        dist.init_process_group("gloo", rank=world.rank, world_size=world.size, timeout=TIMEOUT)
    if not world.main:
        from pplug.progress import set_quiet

        set_quiet(True)  # progress bars and epoch summaries on rank 0 only
    try:
        yield world
    finally:
        if own:
            dist.destroy_process_group()


def barrier(world: World) -> None:
    """Wait until every rank gets here (a no-op alone)."""
    if world.size > 1:
        dist.barrier()


def on_main(world: World, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on rank 0 only and give its result to every rank."""
    if world.size == 1:
        return fn()
    box = [fn() if world.main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class _LossModule(nn.Module):
    """The trainable parameters with the loss as ``forward``: what DDP wraps, so its hooks see every gradient."""

    def __init__(self, params: Sequence[nn.Parameter], loss_fn: Callable[[list[Any]], torch.Tensor]):
        super().__init__()
        self.params = nn.ParameterList(params)  # the same tensors, not copies
        self.loss_fn = loss_fn

    def forward(self, batch: list[Any]) -> torch.Tensor:
        return self.loss_fn(batch)


class DataParallelStep:
    """The backward pass of one optimizer step, shared by the ranks of ``world`` (alone: a plain loop).

    A step takes ``grad_accum x size`` micro-batches (one shuffled order, the same on every rank). Rank r runs
    micro-batches r, r + size, ...; each loss is divided by (micro-batches in the step / size), so DDP's average
    over ranks equals the one-process gradient sum of loss / micro-batches at ``grad_accum x size``. DDP
    all-reduces once per step (``no_sync`` on the rank's other micro-batches). A rank left without a
    micro-batch by a short last step runs the step's first one with weight 0: every rank joins each reduction.
    """

    def __init__(self, params: Sequence[nn.Parameter], loss_fn: Callable[[list[Any]], torch.Tensor], world: World):
        self.world, self.loss_fn = world, loss_fn
        self.ddp = None
        if world.size > 1:  # broadcasts rank 0's parameters: every rank starts from the same weights
            self.ddp = nn.parallel.DistributedDataParallel(_LossModule(params, loss_fn), find_unused_parameters=True)

    def backward(self, batches: list[list[Any]]) -> float:
        """Accumulate the gradients of one step's micro-batches; returns the step's loss (mean over micro-batches)."""
        size = self.world.size
        mine = batches[self.world.rank::size]
        weight = 1.0 if mine else 0.0
        mine, share = mine or batches[:1], len(batches) / size
        total = 0.0
        for k, batch in enumerate(mine):
            last = k == len(mine) - 1
            with nullcontext() if self.ddp is None or last else self.ddp.no_sync():
                loss = (self.loss_fn(batch) if self.ddp is None else self.ddp(batch)) / share
                if not weight:
                    loss = loss * weight
                loss.backward()
            total += loss.item()
        if size > 1:
            t = torch.tensor(total, dtype=torch.float64, device="cpu")  # gloo (the backend here) reduces CPU tensors
            dist.all_reduce(t)
            total = t.item() / size
        return total


def free_port() -> int:
    """A TCP port free on the loopback interface now (for the spawned workers' rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, size: int, port: int, threads: int, fn: Callable[..., Any], args: tuple) -> None:
    """One spawned process: the launcher variables torchrun would set, then ``fn(*args)``."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(size), LOCAL_WORLD_SIZE=str(size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(threads)
    try:
        fn(*args)
    except PPlugError as e:  # one line, as the CLI prints it; the parent reports which rank failed
        print(f"error: [rank {rank}] {e}", file=sys.stderr)
        sys.exit(2)


def launch(processes: int, fn: Callable[..., Any], *args: Any) -> None:
    """Run ``fn(*args)`` in ``processes`` new processes that form one gloo group (``torch.multiprocessing``).

    ``fn`` must be importable by name (spawned processes import it). Each worker gets an equal share of the
    CPU threads (``OMP_NUM_THREADS`` when set, else the cores).

    Raises:
        PPlugError: a worker failed with a user error (its message was printed by the worker).
    """
    import torch.multiprocessing as mp

    threads = max(1, (_env_int(["OMP_NUM_THREADS"]) or os.cpu_count() or 1) // processes)
    try:
        mp.start_processes(_worker, args=(processes, free_port(), threads, fn, args), nprocs=processes,
                           start_method="spawn")
    except mp.ProcessExitedException as e:
        raise PPlugError(f"training process {e.error_index} of {processes} failed (exit code {e.exit_code}; "
                         f"its error is printed above)") from e
