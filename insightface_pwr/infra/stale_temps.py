"""Temporary files of killed RecordIO writers: lock while writing, clean up on the next commit of the same target.

:class:`~insightface_pwr.infra.atomic.AtomicFile` writes ``.<name>.tmp.<random>`` beside its target; a writer
SIGKILLed before its rename leaves that file behind for ever. A RecordIO writer therefore holds an exclusive
``flock`` on its temporary file while it is open (:func:`locked_atomic_file`), and after its own commit removes the
same target's temporary files that are older than its start and that no one locks (:func:`remove_stale_temps`):
a writer that still runs, in this process or another, holds its lock, so its file is never removed. Where ``fcntl``
is missing (Windows) nothing is locked and nothing is removed.
"""
from __future__ import annotations

import os
import stat
import time
from pathlib import Path
from typing import List, Optional, Tuple, Union

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

from .atomic import AtomicFile, temp_prefix

__all__ = ["locked_atomic_file", "remove_stale_temps"]

PathLike = Union[str, "os.PathLike[str]"]


def locked_atomic_file(path: PathLike, buffering: int = -1) -> Tuple[AtomicFile, float]:
    """An :class:`AtomicFile` whose temporary file this writer locks while open, and the time it started."""
    started = time.time()
    atomic = AtomicFile(path, buffering=buffering)
    if fcntl is not None:
        try:
            fcntl.flock(atomic.file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # a file system without flock: the cleanup cannot lock it either, so it is never removed
            pass
    return atomic, started


def remove_stale_temps(target: PathLike, started: float) -> List[str]:
    """Remove the temporary files killed writers of ``target`` left (``.<name>.tmp.*`` beside it): only regular files
    last modified before ``started`` that no open writer locks. Returns the names removed."""
    target, removed = Path(target), []
    prefix = temp_prefix(target)
    for name in sorted(os.listdir(target.parent)) if fcntl is not None else ():
        path = target.parent / name
        if not name.startswith(prefix) or (fd := _open_nofollow(path)) is None:
            continue
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_mtime >= started:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # a writer that still runs holds it (or no flock here: keep it)
                continue
            if os.stat(path, follow_symlinks=False).st_ino == st.st_ino:
                os.unlink(path)
                removed.append(name)
        except OSError:  # gone meanwhile (another writer's cleanup)
            continue
        finally:
            os.close(fd)
    return removed


def _open_nofollow(path: Path) -> Optional[int]:
    try:
        return os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
