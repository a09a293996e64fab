"""The cache's file format: constants, the error type, the metadata file and the key ranges (see the package
docstring of :mod:`insightface_pwr.distill.teacher_cache`)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Sequence, Union

import numpy as np

from ...infra.errors import UserError

CACHE_FORMAT = "insightface_pwr.distill.teacher_cache/1"
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
    out: List[List[int]] = []
    for k in keys:
        k = int(k)
        if out and out[-1][1] == k:
            out[-1][1] = k + 1
        else:
            out.append([k, k + 1])
    return out


def _from_ranges(ranges: Sequence[Sequence[int]]) -> np.ndarray:
    if not ranges:
        return np.zeros(0, np.int64)
    return np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in ranges])


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
    if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT:
        raise CacheError(f"{str(path)!r} is not a teacher cache's metadata (format "
                         f"{meta.get('format') if isinstance(meta, dict) else None!r}, expected {CACHE_FORMAT!r})")
    return meta
