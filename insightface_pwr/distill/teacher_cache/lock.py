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

from .format import CacheError, PathLike

__all__ = ["exclusive_lock", "lock_path"]


def lock_path(out: PathLike) -> Path:
    return Path(str(os.fspath(out)) + ".lock")


def _holder(path: Path) -> str:
    try:
        pid = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        pid = ""
    return f"pid {pid}" if pid.isdigit() else "pid unknown"


@contextlib.contextmanager
def exclusive_lock(out: PathLike) -> Iterator[Path]:
    """Hold the exclusive lock of cache ``out`` (the file ``out.lock``) for the ``with`` block, or raise
    :class:`CacheError` at once if another process holds it."""
    import fcntl  # POSIX only; imported here so that reading a cache needs no fcntl

    path = lock_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(str(path), os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise CacheError(f"teacher cache {str(out)!r} is being written by another insightface-pwr cache-teacher "
                             f"run ({_holder(path)}, lock {str(path)!r}); wait for it to finish (or stop it), "
                             f"then run again") from None
        except BaseException:
            os.close(fd)
            raise
        try:  # the inode we locked must still be the one the path names (the holder before us may have removed it)
            same = os.path.samestat(os.fstat(fd), os.stat(str(path)))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode("ascii"))
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(str(path))  # still locked: whoever opens the old inode now re-checks and retries
        os.close(fd)
