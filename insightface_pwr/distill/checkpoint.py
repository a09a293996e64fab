"""Checkpoint files that are never half-written, and safe loading.

- :func:`atomic_save` writes ``torch.save(obj)`` to a temporary file beside ``path``, fsyncs it, renames it over
  ``path`` (``os.replace``, atomic on POSIX) and fsyncs the directory: a reader sees the old file or the new one, never a
  partial one, even when the process is SIGKILLed in the middle of the save.
- :func:`save_rotating` keeps the previous version as ``<stem>.prev<ext>``: every rank of a job that was killed
  between two saves still holds the state of the last save that ALL ranks completed (ranks are at most one save
  apart, because each training step synchronises them). :func:`load_candidates` returns both versions.
- :func:`safe_load` is ``torch.load(..., weights_only=True)`` (no arbitrary pickles) with a clear error naming the
  file.

Fault injection for the kill tests (never set in normal use): ``INSIGHTFACE_PWR_FAULT=kill_in_save:N`` makes the
N-th atomic write of a process SIGKILL the process after the temporary file is written and synced, before the
rename (:mod:`insightface_pwr.infra.faults`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, List, Union

import torch

from ..models.weights import CheckpointError, safe_load  # noqa: F401  (re-exported)
from ..infra.atomic import AtomicFile, fsync_dir

__all__ = ["atomic_save", "save_rotating", "load_candidates", "safe_load", "previous_path", "CheckpointError"]

PathLike = Union[str, "os.PathLike[str]"]


def atomic_save(obj: Any, path: PathLike) -> None:
    """``torch.save(obj, path)`` atomically (the package's one atomic writer, :mod:`insightface_pwr.infra.atomic`)."""
    with AtomicFile(path) as f:
        torch.save(obj, f.file)


def previous_path(path: PathLike) -> Path:
    """Where :func:`save_rotating` keeps the previous version of ``path``: ``name.pt`` -> ``name.prev.pt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def save_rotating(obj: Any, path: PathLike) -> None:
    """Atomically save ``obj`` to ``path``, first moving the current ``path`` (if any) to ``previous_path``.

    After a kill at any point, ``path`` and/or ``previous_path`` hold complete files of the last two saves (or
    only of the older one, when the kill fell between the two renames)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.new.{os.getpid()}")
    atomic_save(obj, tmp)
    if path.exists():
        os.replace(path, previous_path(path))
    os.replace(tmp, path)
    fsync_dir(path.parent)


def load_candidates(path: PathLike, what: str = "checkpoint") -> List[Any]:
    """The complete versions of a :func:`save_rotating` file, newest first (empty list when there is none)."""
    out = []
    for p in (Path(path), previous_path(path)):
        if p.is_file():
            out.append(safe_load(p, what))
    return out
