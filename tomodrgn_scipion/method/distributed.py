"""Data-parallel training on several GPUs (or CPU processes): torch.distributed with DistributedDataParallel.

A run is one process per rank. ``--num-gpus N`` makes the command start its N ranks itself on this
machine (:func:`launch`); ``torchrun`` (one node or several, through its rendezvous) starts them
instead and sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` and the address of rank 0 in the
environment, which :func:`setup` reads. Rank r trains on ``cuda:LOCAL_RANK`` (modulo the GPUs it
sees), or on the CPU. The backend is NCCL when every rank on a node has a GPU of its own, else gloo
(the CPU, or ranks sharing a GPU, which NCCL refuses).
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.distributed as dist

from .errors import InputError

log = logging.getLogger(__name__)
Tensor = torch.Tensor

#: Environment variables torchrun sets for every rank (and :func:`launch` too).
RANK_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass
class Context:
    """Where this process stands in a run.

    Attributes
    ----------
    rank, world : int
        This process's rank and the number of ranks (0 and 1 without torch.distributed).
    local_rank : int
        Rank on this node.
    device : torch.device
    backend : str or None
        ``nccl``, ``gloo``, or None for a single process.
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Rank 0: the one that logs and writes files."""
        return self.rank == 0

    def describe(self) -> str:
        """``device cuda:0 (NVIDIA H200, 140 GiB), 2 ranks (nccl), torch 2.13.0``."""
        d = self.device
        what = str(d)
        if d.type == "cuda":
            p = torch.cuda.get_device_properties(d)
            what += f" ({p.name}, {p.total_memory / 2 ** 30:.0f} GiB)"
        else:
            what += f" ({torch.get_num_threads()} threads)"
        ranks = f"{self.world} ranks ({self.backend})" if self.distributed else "1 rank"
        return f"device {what}, {ranks}, torch {torch.__version__}"


def in_launched_rank() -> bool:
    """Whether this process is a rank started by torchrun or :func:`launch` (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: str) -> Context:
    """Join the process group when this process is one of several ranks, and choose its device.

    Parameters
    ----------
    device : str
        The resolved ``--device`` (``cpu``, ``cuda`` or ``cuda:N``); with several ranks a CUDA
        device means ``cuda:LOCAL_RANK`` (modulo the GPUs visible).
    """
    if not in_launched_rank():
        return Context(device=torch.device(device))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    if torch.device(device).type == "cuda":
        n_gpus = torch.cuda.device_count()
        dev = torch.device("cuda", local % n_gpus)
        torch.cuda.set_device(dev)
        backend = "nccl" if local_world <= n_gpus else "gloo"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world)
    if rank > 0:
        # rank 0 tells the story; the others speak only of trouble
        logging.getLogger("tomodrgn_scipion").setLevel(logging.WARNING)
    return Context(rank, world, local, dev, backend)


def shutdown(ctx: Context) -> None:
    """Leave the process group, all ranks together: a rank that tears down its connections while
    another still writes the final files makes gloo abort the slower one at exit."""
    if ctx.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def all_sum(ctx: Context, t: Tensor) -> Tensor:
    """Sum of ``t`` over the ranks (in place; ``t`` itself with one rank)."""
    if ctx.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def share(n: int, rank: int, world: int) -> tuple[int, int]:
    """Bounds ``[lo, hi)`` of rank ``rank``'s contiguous share of ``n`` items split over ``world`` ranks."""
    return n * rank // world, n * (rank + 1) // world


def gather_rows(ctx: Context, part: np.ndarray, total: int) -> np.ndarray | None:
    """Concatenate every rank's contiguous share of ``total`` rows, in rank order, on rank 0.

    Parameters
    ----------
    part : numpy.ndarray, shape (n_r, ...)
        This rank's rows: its :func:`share` of ``total``.

    Returns
    -------
    numpy.ndarray, shape (total, ...), on rank 0; None on the others.
    """
    if not ctx.distributed:
        return part
    dev = ctx.device if ctx.backend == "nccl" else torch.device("cpu")
    longest = -(-total // ctx.world)
    buf = torch.zeros((longest,) + part.shape[1:], dtype=torch.from_numpy(part).dtype, device=dev)
    buf[:len(part)] = torch.from_numpy(part).to(dev)
    bufs = [torch.empty_like(buf) for _ in range(ctx.world)] if ctx.main else None
    if ctx.backend == "nccl":  # NCCL has no gather
        every = [torch.empty_like(buf) for _ in range(ctx.world)]
        dist.all_gather(every, buf)
        bufs = every if ctx.main else None
    else:
        dist.gather(buf, bufs, dst=0)
    if not ctx.main:
        return None
    sizes = [hi - lo for lo, hi in (share(total, r, ctx.world) for r in range(ctx.world))]
    return np.concatenate([b[:n].cpu().numpy() for b, n in zip(bufs, sizes)])


# ------------------------------------------------------------------------------------------ launch
def free_port() -> int:
    """A TCP port free on this machine now, for rank 0's rendezvous."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(argv: Sequence[str], n: int) -> int:
    """Run this command as ``n`` ranks on this machine, as torchrun does, and wait for them.

    Rank 0 writes to this process's stdout and stderr; the others' output is kept and shown only
    when one of them is the first to fail. When a rank fails, the others are stopped, and its exit
    status is returned. SIGTERM and SIGINT to this process are passed to the ranks.

    Parameters
    ----------
    argv : sequence of str
        The command line after the program name (``train_vae STAR -o OUT ...``).
    n : int
        Number of ranks.
    """
    if n < 1:
        raise InputError(f"--num-gpus {n}: must be >= 1")
    env = dict(os.environ)
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE=str(n), LOCAL_WORLD_SIZE=str(n))
    procs: list[subprocess.Popen] = []
    logs = []
    for r in range(n):
        e = dict(env, RANK=str(r), LOCAL_RANK=str(r))
        out = None if r == 0 else tempfile.TemporaryFile()
        logs.append(out)
        procs.append(subprocess.Popen([sys.executable, "-m", "tomodrgn_scipion.method.cli", *argv], env=e,
                                      stdout=out, stderr=subprocess.STDOUT if out else None))

    def forward(signum, _frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = [r for r, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                r = failed[0]
                for p in procs:
                    if p.poll() is None:
                        p.terminate()
                for p in procs:
                    try:
                        p.wait(30)
                    except subprocess.TimeoutExpired:
                        p.kill()
                if r > 0:
                    logs[r].seek(0)
                    tail = logs[r].read().decode(errors="replace").strip().splitlines()[-3:]
                    for line in tail:
                        print(f"rank {r}: {line}", file=sys.stderr)
                return int(codes[r])
            if all(c == 0 for c in codes):
                return 0
            time.sleep(0.2)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        for f in logs:
            if f is not None:
                f.close()
