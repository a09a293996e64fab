"""Record key -> array row, in numpy: the metadata's ``[start, stop)`` key ranges, sorted, searched with
``np.searchsorted`` (vectorised over a batch). Memory and start-up time are O(number of ranges), not O(records):
an InsightFace set (MS1M: 5.8 M records, keys ``1..5822653``) is ONE range, so no array, list or dict of all keys
is ever built."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .format import CacheError

__all__ = ["KeyIndex"]


class KeyIndex:
    """``rows(keys)``: the rows of ``keys`` (-1 where absent); ``contains(keys)``: a bool mask."""

    def __init__(self, ranges: Sequence[Sequence[int]], where: str = "teacher cache") -> None:
        r = np.asarray(ranges, dtype=np.int64).reshape(-1, 2)
        lengths = r[:, 1] - r[:, 0]
        if (lengths <= 0).any():
            bad = r[int(np.nonzero(lengths <= 0)[0][0])].tolist()
            raise CacheError(f"{where}: key range {bad} is empty or reversed (expected [start, stop), start < stop)")
        first_row = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)
        order = np.argsort(r[:, 0], kind="stable")
        self.starts, self.stops, self.first_row = r[order, 0], r[order, 1], first_row[order]
        overlap = np.nonzero(self.starts[1:] < self.stops[:-1])[0]
        if overlap.size:
            raise CacheError(f"{where}: record key {int(self.starts[overlap[0] + 1])} is listed twice in the "
                             f"metadata's key ranges (expected each record once)")
        self.count = int(lengths.sum())

    def rows(self, keys: np.ndarray) -> np.ndarray:
        keys = np.asarray(keys, dtype=np.int64).reshape(-1)
        i = np.searchsorted(self.starts, keys, side="right") - 1
        j = np.maximum(i, 0)
        found = (i >= 0) & (keys < self.stops[j]) if self.starts.size else np.zeros(keys.shape, bool)
        if not self.starts.size:
            return np.full(keys.shape, -1, np.int64)
        return np.where(found, self.first_row[j] + keys - self.starts[j], -1)

    def contains(self, keys: np.ndarray, block: int = 1 << 20) -> np.ndarray:
        keys = np.asarray(keys, dtype=np.int64).reshape(-1)
        out = np.empty(keys.shape, dtype=bool)
        for lo in range(0, keys.size, block):  # in blocks: bounded temporaries for millions of keys
            out[lo:lo + block] = self.rows(keys[lo:lo + block]) >= 0
        return out
