"""The cache's file format: constants, the error type, the metadata file and the key ranges (see the package
docstring of :mod:`insightface_pwr.distill.teacher_cache`)."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Sequence, Union

import numpy as np

from ...infra.errors import UserError

CACHE_FORMAT = "insightface_pwr.distill.teacher_cache/2"  # /2: + chunk_sha256
FORMAT_V1 = "insightface_pwr.distill.teacher_cache/1"  # no chunk checksums: readable with verify="none" only
TRAIN_MEAN = 127.5
TRAIN_STD = 127.5
_WINDOW_EDGE = 1 << 20
_WINDOW = 1 << 16
_WINDOWS = 16
FLIP_MODES = {"both": (False, True), "none": (False,)}
PathLike = Union[str, "os.PathLike[str]"]


class CacheError(UserError, ValueError):
    """A teacher cache is missing, incomplete, or belongs to another teacher or RecordIO set."""


def _to_ranges(keys: Sequence[int]) -> List[List[int]]:
    """``[start, stop)`` runs of consecutive keys, in the keys' order (vectorised: 5.8 M keys in milliseconds)."""
    k = np.asarray(keys, dtype=np.int64).reshape(-1)
    if k.size == 0:
        return []
    breaks = np.nonzero(np.diff(k) != 1)[0] + 1
    starts = k[np.concatenate(([0], breaks))]
    stops = k[np.concatenate((breaks - 1, [k.size - 1]))] + 1
    return np.stack([starts, stops], 1).tolist()


def _from_ranges(ranges: Sequence[Sequence[int]]) -> np.ndarray:
    if not ranges:
        return np.zeros(0, np.int64)
    return np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in ranges])


def hash_rows(path: PathLike, offset: int, row_bytes: int, lo: int, hi: int, block: int = 8 << 20) -> str:
    """Hex sha256 of rows ``[lo, hi)`` of the ``.npy`` array ``path`` (data at byte ``offset``, ``row_bytes`` per
    row), read from the file (the bytes a reader's memory map sees). Releases the GIL while hashing."""
    h = hashlib.sha256()
    start, end = offset + lo * row_bytes, offset + hi * row_bytes
    with open(path, "rb", buffering=0) as f:
        f.seek(start)
        while start < end:
            data = f.read(min(block, end - start))
            if not data:
                raise CacheError(f"teacher cache array {str(path)!r} ends at byte {start}, expected {end} bytes "
                                 f"(rows {lo}..{hi - 1})")
            h.update(data)
            start += len(data)
    return h.hexdigest()


def _meta_path(out: PathLike) -> Path:
    return Path(str(os.fspath(out)) + ".json")


def _read_meta(path: Path) -> Dict[str, Any]:
    try:
        with open(path, "r", encoding="utf-8") as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise CacheError(f"teacher cache metadata {str(path)!r} not found (made by insightface-pwr "
                         f"cache-teacher beside the array)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CacheError(f"teacher cache metadata {str(path)!r} is not JSON: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") not in (CACHE_FORMAT, FORMAT_V1):
        raise CacheError(f"{str(path)!r} is not a teacher cache's metadata (format "
                         f"{meta.get('format') if isinstance(meta, dict) else None!r}, expected {CACHE_FORMAT!r})")
    return meta
