"""Reading a finished cache: :class:`TeacherCache`, the :class:`CachedTeacher` callable, :func:`open_cached_teacher`."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import numpy as np
import torch

from ..batch_keys import BATCH_KEYS, BatchKeys
from .fingerprint import image_records, recordio_fingerprint, sha256_file
from .format import TRAIN_MEAN, TRAIN_STD, CacheError, PathLike, _from_ranges, _meta_path, _read_meta

class TeacherCache:
    """A finished cache, memory-mapped read-only. ``lookup(keys, flips) -> N x D float32``."""

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        self.meta = meta = _read_meta(_meta_path(path))
        if not meta.get("complete"):
            raise CacheError(f"teacher cache {str(path)!r} is incomplete ({meta.get('chunks_done')} of "
                             f"{meta.get('num_chunks')} chunks): finish it by re-running the same "
                             f"insightface-pwr cache-teacher command")
        try:
            self.array = np.load(str(path), mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            raise CacheError(f"teacher cache array {str(path)!r} not found (its metadata exists)") from None
        except ValueError as e:
            raise CacheError(f"teacher cache array {str(path)!r} is not a .npy array: {e}") from None
        expect = (meta["count"], len(meta["flips"]), meta["embedding_size"])
        if self.array.shape != expect or self.array.dtype != np.float16:
            raise CacheError(f"teacher cache array {str(path)!r} is {self.array.dtype} {self.array.shape}, its "
                             f"metadata says float16 {expect}")
        self.keys = _from_ranges(meta["keys"])
        self.embedding_size = int(meta["embedding_size"])
        self.has_flips = len(meta["flips"]) == 2
        # key -> row: arithmetic for one contiguous range (InsightFace layout), else a sorted search
        self._order = np.argsort(self.keys, kind="stable")
        self._sorted = self.keys[self._order]

    def rows(self, keys: np.ndarray) -> np.ndarray:
        """Rows of ``keys`` (int64 array); a key the cache lacks is a CacheError naming it."""
        keys = np.asarray(keys, dtype=np.int64)
        pos = np.searchsorted(self._sorted, keys)
        pos = np.minimum(pos, len(self._sorted) - 1)
        found = self._sorted[pos] == keys
        if not found.all():
            missing = keys[~found]
            raise CacheError(f"teacher cache {str(self.path)!r} has no embedding for record(s) "
                             f"{missing[:10].tolist()}{' ...' if missing.size > 10 else ''} "
                             f"({missing.size} of the batch's {keys.size}); it holds {len(self.keys)} records")
        return self._order[pos]

    def lookup(self, keys: Union[np.ndarray, torch.Tensor], flips: Union[np.ndarray, torch.Tensor]) -> torch.Tensor:
        """The cached embeddings (N x D float32) of records ``keys``, of their mirror image where ``flips``."""
        keys = np.asarray(torch.as_tensor(keys).cpu().numpy(), dtype=np.int64).reshape(-1)
        flips = np.asarray(torch.as_tensor(flips).cpu().numpy(), dtype=bool).reshape(-1)
        if flips.any() and not self.has_flips:
            raise CacheError(f"teacher cache {str(self.path)!r} was made with --flip none but the batch holds "
                             f"mirrored images (the training transform flips): make it with --flip both")
        out = self.array[self.rows(keys), flips.astype(np.int64)]
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))

    def check(self, *, teacher_sha256: Optional[str], rec_dir: Optional[PathLike],
              image_size: Optional[Sequence[int]] = None, dataset_keys: Optional[Sequence[int]] = None) -> None:
        """Refuse a cache of another teacher / RecordIO set / image size, or one that misses records."""
        problems = []
        t = self.meta.get("teacher", {})
        if teacher_sha256 is not None and t.get("sha256") != teacher_sha256:
            problems.append(f"it was made with another teacher (file sha256 {str(t.get('sha256'))[:16]}... of "
                            f"{t.get('path')!r}; config.distill.teacher.weights has {teacher_sha256[:16]}...)")
        if rec_dir is not None:
            fp = recordio_fingerprint(rec_dir)
            if fp != self.meta.get("recordio"):
                differ = [k for k in fp if fp[k] != self.meta.get("recordio", {}).get(k)]
                problems.append(f"it was made from another RecordIO set than {str(rec_dir)!r} ({', '.join(differ)} "
                                f"differ)")
        if image_size is not None and list(image_size) != list(self.meta.get("image_size", [])):
            problems.append(f"its images are {self.meta.get('image_size')} (H, W), training uses "
                            f"{list(image_size)}")
        norm = self.meta.get("normalisation", {})
        if (norm.get("mean"), norm.get("std")) != (TRAIN_MEAN, TRAIN_STD):
            problems.append(f"it was computed with normalisation {norm}, training uses mean={TRAIN_MEAN}, "
                            f"std={TRAIN_STD}")
        if dataset_keys is not None:
            have = set(self.keys.tolist())
            missing = [k for k in dataset_keys if int(k) not in have]
            if missing:
                problems.append(f"it misses {len(missing)} of the data set's {len(dataset_keys)} records "
                                f"(first: {missing[:10]})")
        if problems:
            raise CacheError(f"teacher cache {str(self.path)!r} refused: " + "; ".join(problems))


class CachedTeacher:
    """A teacher callable for :class:`~insightface_pwr.distill.hooks.DistillHooks` that looks embeddings up.

    ``__call__(images)`` takes the record keys and flip flags the loader published for ``images`` (see
    :mod:`insightface_pwr.distill.batch_keys`) and returns their cached embeddings, float32 on the images' device."""

    kind = "cache"

    def __init__(self, cache: TeacherCache, channel: BatchKeys = BATCH_KEYS) -> None:
        self.cache, self.channel = cache, channel
        self.embedding_size = cache.embedding_size

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        keys, flips = self.channel.take(images)
        return self.cache.lookup(keys, flips).to(images.device, non_blocking=True)


def open_cached_teacher(teacher_spec: Dict[str, Any], rec_dir: Optional[str]) -> CachedTeacher:
    """The :class:`CachedTeacher` of ``config.distill.teacher.cache``, checked against the teacher's weights file
    (sha256), the training RecordIO folder ``rec_dir`` (fingerprint and records; ``"synthetic"``/None: refused)
    and ``teacher.input_size``."""
    path = teacher_spec["cache"]
    weights = Path(teacher_spec["weights"])
    if not weights.is_file():
        raise CacheError(f"config.distill.teacher.weights: teacher file not found: {str(weights)!r} (a cache is "
                         f"checked against the sha256 of the teacher file it was made with)")
    if rec_dir is None or rec_dir == "synthetic":
        raise CacheError(f"config.distill.teacher.cache needs a RecordIO training set (config.rec), got {rec_dir!r}")
    cache = TeacherCache(path)
    cache.check(teacher_sha256=sha256_file(weights), rec_dir=rec_dir, image_size=teacher_spec.get("input_size"),
                dataset_keys=image_records(rec_dir).keys)
    return CachedTeacher(cache)
