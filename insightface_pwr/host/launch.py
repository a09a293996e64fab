"""Start the host's gloo processes on 127.0.0.1: one in this process, or ``nproc`` spawned ones."""
from __future__ import annotations

import socket
from typing import Optional

import torch.multiprocessing as mp

from .train import train_process

__all__ = ["launch", "free_port"]


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(recipe: str, nproc: int = 1, port: Optional[int] = None, overrides: Optional[dict] = None,
           start_method: Optional[str] = None) -> None:
    """Train ``recipe`` on the CPU host with ``nproc`` gloo processes (raises if any process fails).

    ``start_method``: "fork" (default where available: starts in well under a second, as this process has run no
    torch computation) or "spawn"."""
    if nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {nproc}")
    init_method = f"tcp://127.0.0.1:{port or free_port()}"
    if nproc == 1:
        train_process(0, 1, recipe, init_method, overrides)
    else:
        if start_method is None:
            start_method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        if start_method == "fork":
            import torch._dynamo  # noqa: F401  (DDP imports it: seconds, paid once here rather than per process)
        mp.start_processes(_worker, args=(nproc, recipe, init_method, overrides), nprocs=nproc, join=True,
                           start_method=start_method)


def _worker(rank: int, nproc: int, recipe: str, init_method: str, overrides: Optional[dict]) -> None:
    train_process(rank, nproc, recipe, init_method, overrides)
