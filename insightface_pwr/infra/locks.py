"""The one process lock of the package: an exclusive, non-blocking ``flock`` on a lock file that holds the holder's
pid (for messages only: the kernel drops a ``flock`` when its holder exits, SIGKILL included, so a stale file never
blocks anyone). Used for one training per output folder and one writer per teacher cache.

A lock file may be removed on release (``remove=True``); a process that locked a file which the previous holder
removed meanwhile notices (the path no longer names the inode it locked) and locks the new one, so two processes
never both hold "the" lock. ``flock`` is advisory and, on NFS, only as good as the server's lock support.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, Union

__all__ = ["LockHeld", "acquire", "release", "exclusive"]

PathLike = Union[str, "os.PathLike[str]"]


class LockHeld(Exception):
    """Another process holds the lock: ``path`` and ``holder`` ("pid N", or "pid unknown") say which."""

    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(f"{str(path)!r} is held by {holder}")
        self.path, self.holder = path, holder


def _holder(fd: int) -> str:
    try:
        pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        pid = ""
    return f"pid {pid}" if pid.isdigit() else "pid unknown"


def acquire(path: PathLike, mode: int = 0o644) -> int:
    """Lock ``path`` (created, with its folder, if needed) for this process and write its pid into it; returns the
    descriptor that holds the lock. Raises :class:`LockHeld` at once if another process holds it."""
    import fcntl  # POSIX only; imported here so that modules using locks import elsewhere too

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(str(path), os.O_RDWR | os.O_CREAT, mode)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise LockHeld(path, holder) from None
        except BaseException:
            os.close(fd)
            raise
        try:  # the inode locked must still be the one the path names (the holder before may have removed it)
            same = os.path.samestat(os.fstat(fd), os.stat(str(path)))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    return fd


def release(fd: int, path: PathLike, remove: bool = False) -> None:
    """Drop the lock held by ``fd`` (removing the file first when ``remove``: still locked while it goes)."""
    try:
        if remove:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(str(path))
    finally:
        os.close(fd)


@contextlib.contextmanager
def exclusive(path: PathLike, remove: bool = True) -> Iterator[Path]:
    """Hold the lock of ``path`` for the ``with`` block (:class:`LockHeld` at once if another process holds it)."""
    fd = acquire(path, 0o666)
    try:
        yield Path(path)
    finally:
        release(fd, path, remove)
