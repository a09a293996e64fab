"""One writer per cache: an exclusive, non-blocking ``flock`` on ``OUT.lock`` beside the array, held for a whole build.

Without it a second ``cache-teacher`` on the same ``OUT`` (the same command started twice, or ``--overwrite`` while
the first runs) wrote into the array under the first run, which then committed ``"complete": true`` over rows the
other one had truncated. The second writer is now refused at once, naming the lock file and the holder's pid.

The lock file holds the holder's pid (for the message only: the lock itself is the ``flock``, which the kernel drops
when the holder exits, SIGKILL included, so a stale file never blocks anyone). It is removed on release; a
writer that locked a file which another one removed meanwhile notices (the path no longer names the inode it
locked) and locks the new one, so two writers never both hold "the" lock. ``flock`` is advisory and, on NFS,
only as good as the server's lock support (Linux >= 2.6.12 maps it to POSIX locks there).
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from ...infra import locks
from .format import CacheError, PathLike

__all__ = ["exclusive_lock", "lock_path"]


def lock_path(out: PathLike) -> Path:
    return Path(str(os.fspath(out)) + ".lock")


@contextlib.contextmanager
def exclusive_lock(out: PathLike) -> Iterator[Path]:
    """Hold the exclusive lock of cache ``out`` (the file ``out.lock``) for the ``with`` block, or raise
    :class:`CacheError` at once if another process holds it (:mod:`insightface_pwr.infra.locks`)."""
    try:
        with locks.exclusive(lock_path(out)) as path:
            yield path
    except locks.LockHeld as e:
        raise CacheError(f"teacher cache {str(out)!r} is being written by another insightface-pwr cache-teacher "
                         f"run ({e.holder}, lock {str(e.path)!r}); wait for it to finish (or stop it), "
                         f"then run again") from None
