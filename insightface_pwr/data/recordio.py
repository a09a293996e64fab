"""MXNet RecordIO in pure Python: a drop-in for ``mxnet.recordio`` (read and write, byte-identical files).

File format (dmlc-core's RecordIO, which MXNet writes; all integers little-endian uint32):

* a record is one or more *frames*; a frame is ``magic (0xCED7230A) | lrec | data | zero padding to 4 bytes``,
  with ``lrec = cflag << 29 | length`` (``length < 2**29`` bytes of data, padding not counted);
* ``cflag`` is 0 for a whole record; a record whose data holds the magic number at a 4-byte-aligned offset is
  split there (the magic itself is dropped and re-inserted on reading): first frame 1, middle frames 2, last 3;
* the index file (``.idx``) is text, one ``key<TAB>byte offset of the record's first frame<LF>`` line per record.

A record's payload usually starts with an image-record header (:func:`pack` / :func:`unpack`):
``struct 'IfQQ' = (flag, label, id, id2)``; when ``flag > 0`` the scalar label is 0 and ``flag`` float32 labels
follow the header, before the data.

Reads go through ``mmap`` (random access costs one slice). Writers write to a temporary file beside the target
(``.<name>.tmp.<random>``, locked with ``flock`` while open) and rename it into place on :meth:`MXRecordIO.close`
(after ``fsync``), so a crash never leaves half a file. A killed writer's temporary file stays behind; the next
writer of the same target removes such files when it commits, but only those older than its own start and not
locked by a writer still open (:func:`remove_stale_temps`; where ``fcntl`` is missing, nothing is removed).
Every malformed input raises :class:`~insightface_pwr.data.errors.DataFileError` naming the file and the record.
"""
from __future__ import annotations

import mmap
import numbers
import os
import struct
from collections import namedtuple
from typing import Callable, Dict, List, Optional, Tuple, Union

import numpy as np

from .errors import DataFileError
from ..infra.stale_temps import locked_atomic_file as _locked, remove_stale_temps

__all__ = ["MAGIC", "IRHeader", "pack", "unpack", "MXRecordIO", "MXIndexedRecordIO", "RecordIO",
           "IndexedRecordIO", "encode_record", "read_index", "remove_stale_temps"]

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_FRAME = struct.Struct("<II")
_LEN_MASK = (1 << 29) - 1
_MAX_LEN = 1 << 29

IRHeader = namedtuple("HEADER", ["flag", "label", "id", "id2"])
IRHeader.__doc__ = """Header of an image record: ``flag`` (int; the number of float32 labels when > 0),
``label`` (a float, or a float32 vector when ``flag > 0``), ``id`` and ``id2`` (uint64)."""
_IR = struct.Struct("<IfQQ")

PathLike = Union[str, "os.PathLike[str]"]


def pack(header: IRHeader, payload: bytes) -> bytes:
    """Prefix ``payload`` with an image-record header, exactly as ``mxnet.recordio.pack`` does.

    A numeric ``header.label`` is stored in the header (``flag`` forced to 0); a sequence is stored as float32
    values after the header, with ``flag`` set to their count and the header's label to 0.
    """
    header = IRHeader(*header)
    if isinstance(header.label, numbers.Number):
        return _IR.pack(0, header.label, header.id, header.id2) + bytes(payload)
    label = np.asarray(header.label, dtype=np.float32)
    return _IR.pack(label.size, 0.0, header.id, header.id2) + label.tobytes() + bytes(payload)


def unpack(record: bytes, *, source: PathLike = "<record>", key: Optional[object] = None
           ) -> Tuple[IRHeader, bytes]:
    """Split a record into its :data:`IRHeader` and the rest, exactly as ``mxnet.recordio.unpack`` does.

    ``label`` is a Python float when ``flag == 0``, else a read-only float32 array of ``flag`` values.
    ``source`` and ``key`` only name the record in the error raised for a record too short for its header.
    """
    if len(record) < _IR.size:
        raise DataFileError(source, f"record of {len(record)} bytes is shorter than the {_IR.size}-byte image "
                                    f"header (flag, label, id, id2)", key)
    header = IRHeader(*_IR.unpack_from(record, 0))
    rest = record[_IR.size:]
    if header.flag > 0:
        need = 4 * header.flag
        if len(rest) < need:
            raise DataFileError(source, f"header says flag={header.flag} float32 labels ({need} bytes) but only "
                                        f"{len(rest)} bytes follow the header", key)
        header = header._replace(label=np.frombuffer(rest, np.float32, header.flag))
        rest = rest[need:]
    return header, rest


def encode_record(payload: bytes) -> bytes:
    """The frames MXNet writes for one record (split at 4-byte-aligned magic numbers, zero-padded)."""
    n = len(payload)
    if n >= _MAX_LEN:
        raise ValueError(f"a RecordIO record must be shorter than 2**29 bytes, got {n}")
    out: List[bytes] = []
    lower = n & ~3
    start = 0
    i = payload.find(_MAGIC_BYTES)
    while 0 <= i < lower:
        if i % 4:
            i = payload.find(_MAGIC_BYTES, i + 1)
            continue
        out.append(_FRAME.pack(MAGIC, (1 if start == 0 else 2) << 29 | (i - start)))
        out.append(payload[start:i])
        start = i + 4
        i = payload.find(_MAGIC_BYTES, start)
    out.append(_FRAME.pack(MAGIC, (3 if start else 0) << 29 | (n - start)))
    out.append(payload[start:])
    out.append(b"\0" * (-n % 4))
    return b"".join(out)


def _not_found(path: str, what: str) -> DataFileError:
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        return DataFileError(folder, f"folder not found (it should hold {os.path.basename(path)})")
    return DataFileError(path, what)


def read_index(idx_path: PathLike, key_type: Callable = int) -> Tuple[Dict[object, int], List[object]]:
    """Parse an ``.idx`` file into ``({key: offset}, [keys in file order])`` (a repeated key keeps its last offset)."""
    try:
        with open(idx_path, "r", encoding="utf-8", newline="\n") as f:
            lines = f.read().split("\n")
    except FileNotFoundError:
        raise _not_found(os.fspath(idx_path), "index file not found (a .rec needs its .idx for random access; "
                                              "rebuild it, or read the .rec sequentially with MXRecordIO)") from None
    except UnicodeDecodeError as e:
        raise DataFileError(idx_path, f"index file is not text: {e}") from None
    idx: Dict[object, int] = {}
    keys: List[object] = []
    for lineno, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        fields = line.split("\t")
        try:
            if len(fields) != 2:
                raise ValueError(f"expected 2 tab-separated fields, got {len(fields)}")
            key, pos = key_type(fields[0]), int(fields[1])
        except (ValueError, TypeError) as e:
            raise DataFileError(idx_path, f"line {lineno} {line[:80]!r} is not 'key<TAB>offset': {e}") from None
        if pos < 0:
            raise DataFileError(idx_path, f"negative offset {pos} on line {lineno}", key)
        idx[key] = pos
        keys.append(key)
    return idx, keys


class MXRecordIO:
    """Sequential RecordIO reader/writer with MXNet's API: ``MXRecordIO(uri, 'r' | 'w')``.

    ``read()`` returns the next record's bytes, or ``None`` at the end; ``write(buf)`` appends a record;
    ``tell()`` is the writer's byte offset; ``reset()`` rewinds (a writer starts over); ``close()``.
    Usable as a context manager, and picklable when reading (DataLoader workers reopen the file lazily).
    """

    def __init__(self, uri: PathLike, flag: str):
        if flag not in ("r", "w"):
            raise ValueError(f"flag must be 'r' or 'w', got {flag!r}")
        self.uri = os.fspath(uri)
        self.flag = flag
        self.writable = flag == "w"
        self.is_open = False
        self._buf: Union[mmap.mmap, bytes, None] = None
        self._file = None
        self._pos = 0
        self._pid: Optional[int] = None
        self._started = 0.0
        self.open()

    # -- life cycle -------------------------------------------------------------------------------------------
    def open(self) -> None:
        if self.writable:
            self._file, self._started = _locked(self.uri, buffering=1 << 20)
        else:
            self._map()
        self._pos = 0
        self.is_open = True

    def _map(self) -> None:
        try:
            f = open(self.uri, "rb")
        except FileNotFoundError:
            raise _not_found(self.uri, "record file not found") from None
        with f:
            size = os.fstat(f.fileno()).st_size
            self._buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        self._pid = os.getpid()

    def close(self) -> None:
        """Close; a writer's file is flushed, fsynced and renamed into place."""
        if not self.is_open:
            return
        self.is_open = False
        if self.writable:
            self._file.commit()
            self._file = None
            remove_stale_temps(self.uri, self._started)
        else:
            if isinstance(self._buf, mmap.mmap):
                self._buf.close()
            self._buf = None

    def reset(self) -> None:
        """Rewind a reader to the first record; a writer's file is truncated (as in MXNet)."""
        if self.writable:
            self.close()
        elif self.is_open:
            self._pos = 0
            return
        self.open()

    def __enter__(self) -> "MXRecordIO":
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is not None and self.writable and self._file is not None:
            self._file.abort()
            self._file, self.is_open = None, False
        self.close()

    def __del__(self) -> None:
        try:
            if self.writable and self.is_open:
                self.close()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass

    def __getstate__(self) -> dict:
        if self.writable:
            raise TypeError(f"a RecordIO writer cannot be pickled ({self.uri})")
        d = dict(self.__dict__)
        d["_buf"] = None
        return d

    def __setstate__(self, d: dict) -> None:
        self.__dict__.update(d)

    def _data(self) -> Union[mmap.mmap, bytes]:
        if self._buf is None or self._pid != os.getpid():
            if not self.is_open:
                raise ValueError(f"{self.uri} is closed")
            self._map()
        return self._buf

    # -- reading ------------------------------------------------------------------------------------------------
    def read(self) -> Optional[bytes]:
        """The next record's bytes, or ``None`` at the end of the file."""
        if self.writable:
            raise ValueError(f"{self.uri} is open for writing, not reading")
        buf = self._data()
        if self._pos >= len(buf):
            return None
        record, self._pos = self._read_at(buf, self._pos, f"at byte {self._pos}")
        return record

    def _read_at(self, buf: Union[mmap.mmap, bytes], pos: int, record: object) -> Tuple[bytes, int]:
        """Reassemble the record whose first frame starts at ``pos``; returns (bytes, offset after it)."""
        size = len(buf)
        parts: List[bytes] = []
        first = True
        while True:
            if pos + 8 > size:
                raise DataFileError(self.uri, f"truncated file: a frame header at byte {pos} needs 8 bytes, the file "
                                              f"has {size} bytes", record)
            magic, lrec = _FRAME.unpack_from(buf, pos)
            if magic != MAGIC:
                raise DataFileError(self.uri, f"wrong magic number 0x{magic:08X} at byte {pos} (expected 0x{MAGIC:08X}:"
                                              f" not a RecordIO file, or a bad index offset)", record)
            cflag, length = lrec >> 29, lrec & _LEN_MASK
            if cflag not in ((0, 1) if first else (2, 3)):
                raise DataFileError(self.uri, f"frame at byte {pos} has continuation flag {cflag}, expected "
                                              f"{'0 or 1 (a record start)' if first else '2 or 3 (a continuation)'}",
                                    record)
            end = pos + 8 + ((length + 3) & ~3)
            if end > size:
                raise DataFileError(self.uri, f"truncated file: the frame at byte {pos} needs {end - pos} bytes, only "
                                              f"{size - pos} remain", record)
            parts.append(buf[pos + 8:pos + 8 + length])
            pos = end
            if cflag in (0, 3):
                break
            parts.append(_MAGIC_BYTES)
            first = False
        return (parts[0] if len(parts) == 1 else b"".join(parts)), pos

    # -- writing ------------------------------------------------------------------------------------------------
    def write(self, buf: bytes) -> None:
        """Append one record (bytes-like)."""
        if not self.writable:
            raise ValueError(f"{self.uri} is open for reading, not writing")
        if not self.is_open:
            raise ValueError(f"{self.uri} is closed")
        frames = encode_record(bytes(buf))
        self._file.write(frames)
        self._pos += len(frames)

    def tell(self) -> int:
        """Byte offset where the next record will be written."""
        if not self.writable:
            raise ValueError(f"tell() is for writers; {self.uri} is open for reading")
        return self._pos


class MXIndexedRecordIO(MXRecordIO):
    """Random-access RecordIO with MXNet's API: ``MXIndexedRecordIO(idx_path, uri, 'r' | 'w', key_type=int)``.

    ``read_idx(key)`` returns a record's bytes; ``write_idx(key, buf)`` appends one and records its offset;
    ``keys`` lists the keys in file order and ``idx`` maps them to byte offsets. Index offsets are checked against
    the record file's size when it is opened.
    """

    def __init__(self, idx_path: PathLike, uri: PathLike, flag: str, key_type: Callable = int):
        self.idx_path = os.fspath(idx_path)
        self.key_type = key_type
        self.idx: Dict[object, int] = {}
        self.keys: List[object] = []
        self._fidx = None
        super().__init__(uri, flag)

    def open(self) -> None:
        if self.writable:
            super().open()
            self._fidx, self._idx_started = _locked(self.idx_path)
            self.idx, self.keys = {}, []
            return
        self.idx, self.keys = read_index(self.idx_path, self.key_type)
        super().open()
        size = len(self._buf)
        for key, pos in self.idx.items():
            if pos >= size:
                raise DataFileError(self.uri, f"truncated file: the index {self.idx_path} puts this record at byte "
                                              f"{pos}, the file has {size} bytes (or the index belongs to another "
                                              f"file)", key)

    def close(self) -> None:
        was_open, writable = self.is_open, self.writable
        super().close()
        if was_open and writable and self._fidx is not None:
            self._fidx.commit()
            self._fidx = None
            remove_stale_temps(self.idx_path, self._idx_started)

    def __exit__(self, *exc) -> None:
        if exc[0] is not None and self.writable and self._fidx is not None:
            self._fidx.abort()
            self._fidx = None
        super().__exit__(*exc)

    def __getstate__(self) -> dict:
        d = super().__getstate__()
        d["_fidx"] = None
        return d

    def seek(self, idx: object) -> None:
        """Move the sequential reader to record ``idx``."""
        self._pos = self._offset(idx)

    def _offset(self, idx: object) -> int:
        try:
            return self.idx[idx]
        except KeyError:
            raise _MissingKey(self.idx_path, f"no such key in the index ({len(self.idx)} keys)", idx) from None

    def read_idx(self, idx: object) -> bytes:
        """The bytes of record ``idx``."""
        if self.writable:
            raise ValueError(f"{self.uri} is open for writing, not reading")
        return self._read_at(self._data(), self._offset(idx), idx)[0]

    def write_idx(self, idx: object, buf: bytes) -> None:
        """Append a record under key ``idx``."""
        key = self.key_type(idx)
        pos = self.tell()
        self.write(buf)
        self._fidx.write(f"{key}\t{pos}\n".encode())
        self.idx[key] = pos
        self.keys.append(key)


class _MissingKey(DataFileError, KeyError):
    """A key absent from the index (also a ``KeyError``, as in MXNet)."""

    def __str__(self) -> str:
        return ValueError.__str__(self)

    def __reduce__(self):
        return (_MissingKey, (self.path, self.reason, self.record))


RecordIO = MXRecordIO
IndexedRecordIO = MXIndexedRecordIO
