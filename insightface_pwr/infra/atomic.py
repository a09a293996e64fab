"""Files that are never half-written: the one atomic writer of the package.

:class:`AtomicFile` opens a temporary file beside the target (``.<name>.tmp.<random>``, same folder, so the
rename cannot cross file systems); :meth:`~AtomicFile.commit` flushes and fsyncs it, gives it the permission bits
a new file would get (``0o666 & ~umask``, or ``mode``), renames it over the target (``os.replace``, atomic on
POSIX) and fsyncs the folder, so the rename survives a crash. :meth:`~AtomicFile.abort` (also on an exception
inside ``with``) removes the temporary file. A reader sees the old file or the new one, never a partial one,
even when the writer is SIGKILLed in the middle (the fault point ``kill_in_save`` sits right before the rename).

``atomic_write_bytes`` / ``atomic_write_text`` / ``atomic_write_json`` are the one-call forms.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Optional, Union

from . import faults

__all__ = ["AtomicFile", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "fsync_dir",
           "default_mode", "temp_prefix"]

PathLike = Union[str, "os.PathLike[str]"]


def fsync_dir(directory: PathLike) -> None:
    """fsync a directory, so that a rename inside it survives a crash (a no-op where directories have no fds)."""
    try:
        fd = os.open(str(directory), os.O_RDONLY)
    except OSError:  # pragma: no cover  (platforms without directory fds)
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def default_mode() -> int:
    """The permission bits of a newly created file under the current umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def temp_prefix(path: PathLike) -> str:
    """The prefix of the temporary files of ``path`` (``.<name>.tmp.``): a crashed writer's leftovers match it."""
    return f".{Path(path).name}.tmp."


class AtomicFile:
    """A binary file written to a temporary name and renamed over ``path`` on :meth:`commit`."""

    def __init__(self, path: PathLike, mode: Optional[int] = None, buffering: int = -1) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.mode = mode
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(self.path), dir=str(self.path.parent))
        self.tmp = Path(tmp)
        self.file: BinaryIO = os.fdopen(fd, "wb", buffering=buffering)
        self.done = False

    def write(self, data: bytes) -> int:
        return self.file.write(data)

    def commit(self) -> None:
        """fsync, set the permission bits, rename over the target, fsync the folder."""
        if self.done:
            return
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            os.chmod(self.tmp, default_mode() if self.mode is None else self.mode)
            faults.hit("kill_in_save")
            os.replace(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self.done = True
        fsync_dir(self.path.parent)

    def abort(self) -> None:
        """Close and remove the temporary file; the target is untouched."""
        if self.done:
            return
        self.done = True
        try:
            self.file.close()
        finally:
            try:
                self.tmp.unlink()
            except FileNotFoundError:
                pass

    def __enter__(self) -> "AtomicFile":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def atomic_write_bytes(path: PathLike, data: bytes, mode: Optional[int] = None) -> None:
    """Write ``data`` to ``path`` atomically (see the module docstring)."""
    with AtomicFile(path, mode) as f:
        f.write(data)


def atomic_write_text(path: PathLike, text: str, mode: Optional[int] = None) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), mode)


def atomic_write_json(path: PathLike, obj: Any, mode: Optional[int] = None) -> None:
    """``obj`` as indented, key-sorted JSON with a final newline, written atomically."""
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True) + "\n", mode)
