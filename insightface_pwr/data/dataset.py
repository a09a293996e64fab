"""The face dataset of an InsightFace RecordIO folder (``train.rec``, ``train.idx``, ``property``), no MXNet and
no torchvision.

Layout (InsightFace's): record 0 is a header with ``flag > 0`` and ``label = [1 + images, 1 + images +
identities]``; records ``1 .. images`` are images (payload: JPEG/PNG bytes; label: the class, or a vector whose
first value is the class); records after them are identity ranges (``label = [first, end)`` image keys of one
identity). Without such a header ("plain" files) every key of the index is an image. ``property`` is the text
``classes,height,width``.

A sample is ``(image, label)``: ``image`` is ``3 x H x W`` float32 RGB ``(pixel - mean) / std`` (default
``(x/255 - 0.5)/0.5``), mirrored with probability 1/2 when ``random_flip`` (drawn from torch's RNG, which
DataLoader seeds per worker); ``label`` an int64 scalar tensor. With ``return_meta=True`` it is ``(image, label,
key, flipped)``: the RecordIO key of the record and whether the image was mirrored (what a teacher cache needs).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np
import torch

from .errors import DataFileError
from .images import decode_image, hflip, to_tensor
from .recordio import MXIndexedRecordIO, unpack

__all__ = ["FaceDataset", "read_property", "record_paths"]

PathLike = Union[str, "os.PathLike[str]"]


def record_paths(root: PathLike) -> Tuple[Path, Path]:
    """``(train.rec, train.idx)`` of a folder, or of a ``.rec`` path (its ``.idx`` beside it)."""
    root = Path(root)
    if root.suffix == ".rec":
        return root, root.with_suffix(".idx")
    return root / "train.rec", root / "train.idx"


def read_property(path: PathLike) -> Tuple[int, int, int]:
    """``(classes, height, width)`` from a ``property`` file (text ``classes,height,width``)."""
    try:
        text = Path(path).read_text().strip()
    except FileNotFoundError:
        raise DataFileError(path, "property file not found (expected the text 'classes,height,width')") from None
    try:
        values = tuple(int(v) for v in text.split(","))
        if len(values) != 3 or min(values) <= 0:
            raise ValueError
    except ValueError:
        raise DataFileError(path, f"expected 'classes,height,width' (three positive integers), got {text[:80]!r}") \
            from None
    return values  # type: ignore[return-value]


class FaceDataset(torch.utils.data.Dataset):
    """Images of a RecordIO face set (see the module docstring)."""

    def __init__(self, root: PathLike, random_flip: bool = False, return_meta: bool = False,
                 mean: float = 127.5, std: float = 127.5):
        self.rec_path, self.idx_path = record_paths(root)
        if not self.rec_path.parent.is_dir():
            raise DataFileError(self.rec_path.parent, "data folder not found (expected train.rec, train.idx and "
                                                      "property in it)")
        self.random_flip, self.return_meta = bool(random_flip), bool(return_meta)
        self.mean, self.std = float(mean), float(std)
        self.reader = MXIndexedRecordIO(self.idx_path, self.rec_path, "r")
        if not self.reader.keys:
            raise DataFileError(self.idx_path, "the index is empty: no records")
        first = self.reader.keys[0]
        self.header0, _ = unpack(self.reader.read_idx(first), source=self.rec_path, key=first)
        if self.header0.flag > 0:
            end = self._header_int(0, "image count", low=1)
            if end - 1 > len(self.reader.keys) - 1:  # before allocating the keys: a crafted count is unbounded
                raise DataFileError(self.rec_path, f"header says {end - 1} images (keys 1..{end - 1}) but the index "
                                                   f"has only {len(self.reader.keys)} records", first)
            if end > 1 and any(k not in self.reader.idx for k in (1, end - 1)):
                raise DataFileError(self.rec_path, f"header record says images are keys 1..{end - 1}, but the index "
                                                   f"lacks some of them", first)
            self.keys = np.arange(1, end, dtype=np.int64)
        else:
            self.keys = np.asarray(self.reader.keys, dtype=np.int64)
        prop = Path(self.rec_path).parent / "property"
        self.property: Optional[Tuple[int, int, int]] = read_property(prop) if prop.is_file() else None

    def _header_int(self, i: int, what: str, low: int) -> int:
        """Value ``i`` of the header record's label: an integer >= ``low``, else :class:`DataFileError`."""
        label = self.header0.label
        value = float(label[i]) if i < len(label) else None
        if value is None or not np.isfinite(value) or value != int(value) or value < low:
            raise DataFileError(self.rec_path, f"header {what} {value!r} is not an integer >= {low} (record 0's label "
                                               f"should be [1 + images, 1 + images + identities])", self.reader.keys[0])
        return int(value)

    @property
    def num_classes(self) -> Optional[int]:
        """Classes from ``property`` (``None`` without one)."""
        return None if self.property is None else self.property[0]

    def identity_ranges(self) -> List[Tuple[int, int]]:
        """``[(first key, end key), ...]`` per identity from the identity-range records (InsightFace layout)."""
        if self.header0.flag <= 0:
            raise DataFileError(self.rec_path, "no header record (flag > 0) at key 0, so no identity ranges", 0)
        ranges = []
        for key in range(self._header_int(0, "image count", 1), self._header_int(1, "identity end", 1)):
            header, _ = unpack(self.reader.read_idx(key), source=self.rec_path, key=key)
            if header.flag < 2:
                raise DataFileError(self.rec_path, f"identity record has flag {header.flag}, expected >= 2 "
                                                   f"([start, end) labels)", key)
            ranges.append((int(header.label[0]), int(header.label[1])))
        return ranges

    def __len__(self) -> int:
        return len(self.keys)

    def label_of(self, index: int) -> int:
        """The class of sample ``index`` without decoding its image."""
        key = int(self.keys[index])
        header, _ = unpack(self.reader.read_idx(key), source=self.rec_path, key=key)
        return _class_label(header, self.rec_path, key, self.num_classes)

    def __getitem__(self, index: int):
        key = int(self.keys[index])
        header, payload = unpack(self.reader.read_idx(key), source=self.rec_path, key=key)
        label = torch.tensor(_class_label(header, self.rec_path, key, self.num_classes), dtype=torch.long)
        image = decode_image(payload, source=self.rec_path, record=key)
        flipped = bool(self.random_flip and torch.rand(()) < 0.5)
        tensor = to_tensor(hflip(image) if flipped else image, self.mean, self.std)
        if self.return_meta:
            return tensor, label, key, flipped
        return tensor, label


def _class_label(header, path, key, num_classes: Optional[int]) -> int:
    label = float(header.label[0] if header.flag > 0 else header.label)
    if not np.isfinite(label) or label < 0 or label != int(label):
        raise DataFileError(path, f"label {label!r} is not a class index (a non-negative integer)", key)
    if num_classes is not None and label >= num_classes:
        raise DataFileError(path, f"label {int(label)} is not a class of this set: property says {num_classes} classes "
                                  f"(labels 0..{num_classes - 1})", key)
    return int(label)
