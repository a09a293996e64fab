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

One training per output folder: :func:`lock_output` takes an exclusive, non-blocking ``flock`` on
``<output>/.insightface_pwr.lock`` (the file holds the holder's pid, for the message; the kernel drops the lock when
the holder exits, SIGKILL included, so a stale file never blocks anyone; the file is left in place). A second
training on the same folder is refused at once, naming the folder and the holder's pid. The lock is re-entrant
within a process (the CPU host takes it, then the distillation hooks it builds take it again).

Run identity: :func:`run_identity` is the effective config of a recipe, flattened to ``key -> repr(value)`` lines,
and its sha256, leaving out :data:`IDENTITY_EXCLUDED` (keys that may change on resume: ``resume`` itself, where the
output goes, logging and loader settings, wandb, the host's thread count and save frequency, ``val_targets``, and the
step counts the training loop derives, and ``num_epoch``: training longer is the usual reason to resume).
Everything else (data, network, margins, optimizer, lr, batch size, seed, the distill section) is the run: a checkpoint records its identity and resume refuses one of
another run, naming the keys that differ (:func:`check_identity`).

RNG states: :func:`rng_state` / :func:`set_rng_state` cover torch's CPU generator, CUDA's (when initialised),
numpy's and Python's ``random``, as tensors and plain values (``weights_only`` loading reads them).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np
import torch

from ..models.weights import CheckpointError, safe_load  # noqa: F401  (re-exported)
from ..infra import locks
from ..infra.atomic import AtomicFile, fsync_dir

__all__ = ["atomic_save", "save_rotating", "load_candidates", "safe_load", "previous_path", "CheckpointError",
           "OutputInUseError", "LOCK_NAME", "lock_output", "unlock_output", "locked_here", "check_output_free",
           "IDENTITY_EXCLUDED",
           "run_identity", "check_identity", "rng_state", "set_rng_state"]

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


# ------------------------------------------------------------------------------------------- one run per folder
LOCK_NAME = ".insightface_pwr.lock"
_HELD: Dict[str, List[int]] = {}  # resolved folder -> [fd, count, pid]


class OutputInUseError(CheckpointError):
    """Another training holds the output folder's lock."""


def _try_lock(folder: Path) -> int:
    """An fd of the folder's lock file, locked (exclusive, non-blocking), or OutputInUseError."""
    try:
        return locks.acquire(folder / LOCK_NAME)
    except locks.LockHeld as e:
        raise OutputInUseError(f"output folder {str(folder)!r} is in use by another training ({e.holder}, lock "
                               f"{str(e.path)!r}); wait for it to end (or stop it), or set config.output to another "
                               f"folder") from None


def lock_output(folder: PathLike) -> Path:
    """Take the exclusive lock of the output ``folder`` (created if needed) for this process; re-entrant (each call
    needs its :func:`unlock_output`). Raises :class:`OutputInUseError` at once if another process holds it."""
    folder = Path(folder).resolve()
    held = _HELD.get(str(folder))
    if held is not None and held[2] == os.getpid():
        held[1] += 1
        return folder
    fd = _try_lock(folder)
    _HELD[str(folder)] = [fd, 1, os.getpid()]
    return folder


def unlock_output(folder: PathLike) -> None:
    """Undo one :func:`lock_output` of this process (the lock is dropped with the last one)."""
    key = str(Path(folder).resolve())
    held = _HELD.get(key)
    if held is None or held[2] != os.getpid():
        return
    held[1] -= 1
    if held[1] <= 0:
        del _HELD[key]
        locks.release(held[0], Path(key) / LOCK_NAME)  # the file stays: its next holder overwrites the pid


def locked_here(folder: PathLike) -> bool:
    """Whether this process holds the lock of ``folder``."""
    held = _HELD.get(str(Path(folder).resolve()))
    return held is not None and held[2] == os.getpid()


def check_output_free(folder: PathLike) -> None:
    """Raise :class:`OutputInUseError` if another process holds the lock of ``folder`` (takes and drops it; writes
    nothing where the folder or its lock file does not exist yet)."""
    folder = Path(folder).resolve()
    if locked_here(folder) or not (folder / LOCK_NAME).is_file():
        return
    os.close(_try_lock(folder))


# ------------------------------------------------------------------------------------------------ run identity
IDENTITY_EXCLUDED = ("resume", "output", "frequent", "verbose", "num_workers", "host_threads", "save_every_steps",
                     "save_all_states", "val_targets", "num_epoch", "wandb_key", "wandb_entity", "wandb_project",
                     "wandb_log_all",
                     "wandb_resume", "using_wandb", "save_artifacts", "suffix_run_name", "data_backend",
                     "total_batch_size", "warmup_step", "total_step")


def _flatten(prefix: str, value: Any, out: Dict[str, str]) -> None:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, dict) and value:
        for k in sorted(value, key=str):
            _flatten(f"{prefix}.{k}", value[k], out)
    elif isinstance(value, (list, tuple)) and value and any(
            isinstance(v, dict) or dataclasses.is_dataclass(v) for v in value):
        for i, v in enumerate(value):
            _flatten(f"{prefix}[{i}]", v, out)
    else:
        out[prefix] = repr(value)


def run_identity(cfg: Dict[str, Any], prefix: str = "config") -> Dict[str, Any]:
    """``{"hash": sha256, "config": {"config.key": repr(value)}}`` of a loaded recipe, without
    :data:`IDENTITY_EXCLUDED` (see the module docstring)."""
    flat: Dict[str, str] = {}
    for k in sorted(cfg, key=str):
        if k not in IDENTITY_EXCLUDED:
            _flatten(f"{prefix}.{k}", cfg[k], flat)
    digest = hashlib.sha256(json.dumps(flat, sort_keys=True).encode("utf-8")).hexdigest()
    return {"hash": digest, "config": flat}


def check_identity(saved: Optional[Dict[str, Any]], current: Optional[Dict[str, Any]], path: PathLike) -> None:
    """Raise :class:`CheckpointError` when the checkpoint ``path`` was written by another run (its identity differs
    from ``current``), naming the keys that differ. A checkpoint without an identity (older versions) passes."""
    if not saved or not current or saved.get("hash") == current.get("hash"):
        return
    old, new = saved.get("config", {}), current.get("config", {})
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    shown = "; ".join(f"{k}: saved {old.get(k, '(unset)')}, now {new.get(k, '(unset)')}" for k in keys[:6])
    more = f" (and {len(keys) - 6} more)" if len(keys) > 6 else ""
    raise CheckpointError(
        f"resume: {os.path.abspath(os.fspath(path))!r} was written by another run (identity "
        f"{str(saved.get('hash'))[:12]}, this run {str(current.get('hash'))[:12]}): {shown or 'different keys'}{more}. "
        f"Resume with the recipe that wrote it, or set config.output to another folder (keys that may change on "
        f"resume: {', '.join(IDENTITY_EXCLUDED[:10])})")


# -------------------------------------------------------------------------------------------------- RNG states
def rng_state() -> Dict[str, Any]:
    """This process's RNG states: torch CPU, CUDA (if initialised), numpy and Python ``random``."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: Dict[str, Any] = {"torch": torch.get_rng_state(),
                             "numpy": [str(kind), torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos),
                                       int(has_gauss), float(gauss)],
                             "python": [int(version), torch.tensor(internal, dtype=torch.int64), gauss_next]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(int(v) for v in internal.tolist()), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
