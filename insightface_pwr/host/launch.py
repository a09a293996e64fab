"""Start the host's gloo processes on 127.0.0.1: one in this process, or ``nproc`` spawned ones.

Before any process starts, the parent loads and validates the recipe and checks that no other training holds its
output folder, so that a mistake is one error here rather than one traceback per worker. A worker that fails on a
user's mistake found later (a missing data folder or teacher, a refused resume) hands its one-line message to the
parent, which raises it as :class:`WorkerError` (a :class:`~insightface_pwr.infra.errors.UserError`); any other
failure keeps torch's report with the worker's traceback.
"""
from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Optional

import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessException

from ..infra.errors import UserError
from .train import train_process

__all__ = ["launch", "free_port", "WorkerError"]

_USER_ERRORS = (UserError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


class WorkerError(UserError):
    """A training process stopped on a user's mistake (its message is the worker's)."""


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _message(e: BaseException) -> str:
    """The one line the command line would print for ``e``."""
    if isinstance(e, OSError) and e.filename:
        return f"{e.strerror or type(e).__name__}: {os.path.abspath(os.fsdecode(e.filename))!r}"
    return str(e)


def check_before_start(recipe: str, overrides: Optional[dict] = None) -> None:
    """Load and validate ``recipe`` (plus ``overrides``) and check its output folder is free: the parent's checks."""
    from ..distill.checkpoint import check_output_free
    from ..distill.recipe import load_recipe
    cfg = load_recipe(recipe)
    cfg.update(overrides or {})
    check_output_free(cfg.output)


def launch(recipe: str, nproc: int = 1, port: Optional[int] = None, overrides: Optional[dict] = None,
           start_method: Optional[str] = None) -> None:
    """Train ``recipe`` on the CPU host with ``nproc`` gloo processes (raises if any process fails).

    ``start_method``: "fork" (default where available: starts in well under a second, as this process has run no
    torch computation) or "spawn"."""
    if nproc < 1:
        raise UserError(f"--nproc must be >= 1, got {nproc}")
    init_method = f"tcp://127.0.0.1:{port or free_port()}"
    if nproc == 1:
        train_process(0, 1, recipe, init_method, overrides)
        return
    check_before_start(recipe, overrides)
    if start_method is None:
        start_method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    if start_method == "fork":
        import torch._dynamo  # noqa: F401  (DDP imports it: seconds, paid once here rather than per process)
    errors = Path(tempfile.mkdtemp(prefix="insightface_pwr_launch_"))
    try:
        context = mp.start_processes(_worker, args=(nproc, recipe, init_method, overrides, str(errors)),
                                     nprocs=nproc, join=False, start_method=start_method)
        while not context.join(grace_period=10):  # the others stop on their own first (they fail alike)
            pass
    except ProcessException:
        reported = sorted(errors.glob("rank_*.txt"), key=lambda p: int(p.stem[len("rank_"):]))
        if reported:  # rank 0's message first: the others often only say that rank 0 failed
            raise WorkerError(reported[0].read_text(encoding="utf-8")) from None
        raise
    finally:
        shutil.rmtree(errors, ignore_errors=True)


def _worker(rank: int, nproc: int, recipe: str, init_method: str, overrides: Optional[dict], errors: str) -> None:
    try:
        train_process(rank, nproc, recipe, init_method, overrides)
    except _USER_ERRORS as e:
        Path(errors, f"rank_{rank}.txt").write_text(_message(e), encoding="utf-8")
        raise SystemExit(1) from None
