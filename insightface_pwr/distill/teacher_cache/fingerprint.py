"""Fingerprints (the teacher file's sha256, the RecordIO set's fingerprint) and the image records as training
reads them."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

from .format import TRAIN_MEAN, TRAIN_STD, CacheError, PathLike, _WINDOW, _WINDOW_EDGE, _WINDOWS

def sha256_file(path: PathLike, block: int = 1 << 20) -> str:
    """Hex sha256 of a whole file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def _rec_paths(rec_dir: PathLike) -> Tuple[Path, Path]:
    rec_dir = Path(rec_dir)
    rec, idx = rec_dir / "train.rec", rec_dir / "train.idx"
    for p in (rec, idx):
        if not p.is_file():
            raise CacheError(f"RecordIO set {str(rec_dir)!r}: {p.name} not found (expected train.rec and train.idx)")
    return rec, idx


def recordio_fingerprint(rec_dir: PathLike) -> Dict[str, Any]:
    """The fingerprint of ``rec_dir/train.{rec,idx}`` described in the module docstring."""
    rec, idx = _rec_paths(rec_dir)
    size = rec.stat().st_size
    h = hashlib.sha256()
    with open(rec, "rb") as f:
        starts = [0, max(0, size - _WINDOW_EDGE)] + [size * (i + 1) // (_WINDOWS + 1) for i in range(_WINDOWS)]
        for i, start in enumerate(starts):
            f.seek(start)
            data = f.read(_WINDOW_EDGE if i < 2 else _WINDOW)
            h.update(start.to_bytes(8, "little") + len(data).to_bytes(8, "little") + data)
    return {"scheme": "sha256(idx) + size(rec) + sha256(rec head/tail MiB + 16 x 64KiB)",
            "idx_sha256": sha256_file(idx), "rec_bytes": size, "rec_sample_sha256": h.hexdigest()}


# ------------------------------------------------------------------------------------------------ the records
class image_records:  # noqa: N801  (used like a function: image_records(rec_dir).keys / .image(key))
    """The image records of a RecordIO folder exactly as training reads them: the data layer's
    :class:`~insightface_pwr.data.FaceDataset` (its keys, decoding and normalisation; no random flip).

    ``keys``: the RecordIO keys of the images, in the dataset's order (int64 array); ``image(key, flip)``: that
    record's training tensor (3 x H x W float32, ``(pixel - 127.5) / 127.5``), mirrored when ``flip`` (as the random
    flip does)."""

    def __init__(self, rec_dir: PathLike) -> None:
        from ...data.dataset import FaceDataset
        _rec_paths(rec_dir)
        self.dataset = FaceDataset(rec_dir, random_flip=False, return_meta=False, mean=TRAIN_MEAN, std=TRAIN_STD)
        self.path = str(self.dataset.rec_path)
        self.keys = np.asarray(self.dataset.keys, dtype=np.int64).reshape(-1)  # no Python list / dict of all keys
        self._sorted = bool(np.all(np.diff(self.keys) > 0))
        self._pos: Optional[Dict[int, int]] = None  # key -> position, only for unsorted keys, on first use

    def _position(self, key: int) -> int:
        if self._sorted:
            i = int(np.searchsorted(self.keys, key))
            if i < len(self.keys) and self.keys[i] == key:
                return i
            raise KeyError(key)
        if self._pos is None:
            self._pos = {int(k): i for i, k in enumerate(self.keys)}
        return self._pos[int(key)]

    def image(self, key: int, flip: bool = False) -> torch.Tensor:
        image = self.dataset[self._position(key)][0]
        return torch.flip(image, dims=[-1]) if flip else image

    def label(self, key: int) -> int:
        return self.dataset.label_of(self._position(key))
