"""Teacher-embedding cache: a frozen teacher's embeddings of every training image, computed once.

Files (``OUT`` is the path given to ``insightface-pwr cache-teacher --out``):

* ``OUT``: a NumPy ``.npy`` array, float16, shape ``count x F x D`` (memory-mapped for reading and writing):
  row ``r`` is the r-th image record of the RecordIO set, ``[:, 0]`` its embedding, ``[:, 1]`` (``F = 2``,
  ``flip = "both"``) the embedding of its horizontal mirror (the training transform's random flip); raw teacher
  output (not normalised), rounded to float16 (relative precision 2**-11);
* ``OUT.json``: the metadata, rewritten atomically after every chunk (it is the progress record too):
  the teacher file's sha256, the RecordIO fingerprint (below), the record keys (as ``[start, stop)`` ranges),
  image size, normalisation, flips, the chunking, ``chunks_done`` and ``complete``.

Preprocessing is the training transform's: decode the record's image to RGB, mirror it for the flipped column,
``(pixel - 127.5) / 127.5`` as NCHW float32 (what arcface_torch feeds the student, and the teacher sees unchanged).

Resumable: rows are written chunk by chunk (``chunk_size`` records, a multiple of the batch size); after each chunk
the array is flushed to disk (msync) and only then the metadata's ``chunks_done`` is committed (temp file, fsync,
rename). A run killed at any point restarts at the first uncommitted chunk and, computing every chunk with the
same batches, ends with the same bytes as an uninterrupted run.

RecordIO fingerprint (cheap, safe against the usual mistakes): sha256 of the whole ``train.idx`` (every record's
key and byte offset), the size of ``train.rec``, and a sha256 of 18 windows of ``train.rec``: its first and last
MiB and 16 evenly spaced 64 KiB windows (about 3 MiB read whatever the size). Another data set, a re-packed or
re-ordered one, a truncated or extended ``.rec`` all differ; an edit that keeps every record's length and lies
outside the sampled windows would not be seen.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..infra.errors import UserError
from .batch_keys import BATCH_KEYS, BatchKeys
from ..infra import faults
from ..infra.atomic import atomic_write_json
from ..infra.progress import progress_bar

__all__ = ["CACHE_FORMAT", "CacheError", "TeacherCache", "CachedTeacher", "build_cache", "sha256_file",
           "recordio_fingerprint", "image_records", "TRAIN_MEAN", "TRAIN_STD", "open_cached_teacher"]

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


# ------------------------------------------------------------------------------------------------ fingerprints
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


class image_records:  # noqa: N801  (used like a function: image_records(rec_dir).keys / .image(key))
    """The image records of a RecordIO folder exactly as training reads them: the data layer's
    :class:`~insightface_pwr.data.FaceDataset` (its keys, decoding and normalisation; no random flip).

    ``keys``: the RecordIO keys of the images, in the dataset's order; ``image(key, flip)``: that record's training
    tensor (3 x H x W float32, ``(pixel - 127.5) / 127.5``), mirrored when ``flip`` (as the random flip does)."""

    def __init__(self, rec_dir: PathLike) -> None:
        from ..data.dataset import FaceDataset
        _rec_paths(rec_dir)
        self.dataset = FaceDataset(rec_dir, random_flip=False, return_meta=False, mean=TRAIN_MEAN, std=TRAIN_STD)
        self.path = str(self.dataset.rec_path)
        self.keys = [int(k) for k in self.dataset.keys]
        self._pos = {k: i for i, k in enumerate(self.keys)}

    def image(self, key: int, flip: bool = False) -> torch.Tensor:
        image = self.dataset[self._pos[int(key)]][0]
        return torch.flip(image, dims=[-1]) if flip else image

    def label(self, key: int) -> int:
        return self.dataset.label_of(self._pos[int(key)])


def _meta_path(out: PathLike) -> Path:
    return Path(str(os.fspath(out)) + ".json")


# ------------------------------------------------------------------------------------------------ writing
_IDENTITY_FIELDS = ("format", "teacher", "recordio", "keys", "count", "flips", "embedding_size", "dtype",
                    "image_size", "normalisation", "batch_size", "chunk_size", "num_chunks")


def build_cache(teacher: Callable[[torch.Tensor], torch.Tensor], teacher_info: Dict[str, Any], rec_dir: PathLike,
                out: PathLike, *, flip: str = "both", batch_size: int = 64, chunk_batches: int = 16,
                device: Union[str, torch.device] = "cpu", progress: bool = True, overwrite: bool = False,
                log: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> Dict[str, Any]:
    """Compute (or finish) the cache of ``teacher`` over the images of ``rec_dir``; returns the metadata.

    ``teacher(images N x 3 x H x W on device) -> N x D`` (a frozen teacher of :mod:`insightface_pwr.distill.teachers`);
    ``teacher_info``: ``{"path", "sha256", "format", "network"}`` of its file. An existing ``out`` with the same
    teacher, RecordIO set and settings is resumed (or returned as is when complete); with other ones it is
    refused unless ``overwrite``."""
    if flip not in FLIP_MODES:
        raise CacheError(f"flip must be one of {tuple(FLIP_MODES)}, got {flip!r}")
    if batch_size <= 0 or chunk_batches <= 0:
        raise CacheError(f"batch_size and chunk_batches must be > 0, got {batch_size} and {chunk_batches}")
    out = Path(out)
    meta_path = _meta_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    records = image_records(rec_dir)
    keys = records.keys
    if not keys:
        raise CacheError(f"RecordIO set {str(rec_dir)!r} has no image records")
    first = records.image(keys[0])
    h, w = int(first.shape[1]), int(first.shape[2])
    dim = int(teacher(first[None].to(device)).shape[1])
    flips = FLIP_MODES[flip]
    chunk = batch_size * chunk_batches
    meta: Dict[str, Any] = {
        "format": CACHE_FORMAT, "teacher": dict(teacher_info), "recordio": recordio_fingerprint(rec_dir),
        "keys": _to_ranges(keys), "count": len(keys), "flips": list(flips), "embedding_size": dim,
        "dtype": "float16", "image_size": [h, w],
        "normalisation": {"mean": TRAIN_MEAN, "std": TRAIN_STD,
                          "convention": "RGB, NCHW float32, (pixel - mean) / std, as arcface_torch trains"},
        "batch_size": batch_size, "chunk_size": chunk, "num_chunks": -(-len(keys) // chunk),
        "chunks_done": 0, "complete": False}
    shape = (len(keys), len(flips), dim)

    start = 0
    if meta_path.is_file() and not overwrite:
        old = _read_meta(meta_path)
        diff = [k for k in _IDENTITY_FIELDS if old.get(k) != meta[k]]
        if diff:
            raise CacheError(f"{str(meta_path)!r} is a cache of another run (differs in: {', '.join(diff)}); "
                             f"remove it or pass --overwrite")
        start = int(old.get("chunks_done", 0))
        if old.get("complete"):
            log(f"{out}: already complete ({len(keys)} records)")
            return old
        if start > 0 and not out.is_file():
            raise CacheError(f"{str(meta_path)!r} records {start} finished chunks but {str(out)!r} is missing; "
                             f"remove the metadata file to start over")
    elif out.exists() and not overwrite and not meta_path.exists():
        raise CacheError(f"{str(out)!r} exists and is not a teacher cache (no {meta_path.name}); remove it or "
                         f"pass --overwrite")
    if start == 0:
        atomic_write_json(meta_path, meta)  # first: a kill after this leaves a resumable (empty) cache
        arr = np.lib.format.open_memmap(str(out), mode="w+", dtype=np.float16, shape=shape)
    else:
        arr = np.lib.format.open_memmap(str(out), mode="r+")
        if arr.shape != shape or arr.dtype != np.float16:
            raise CacheError(f"{str(out)!r} holds a {arr.dtype} array of shape {arr.shape}, its metadata says "
                             f"float16 {shape}; remove both files to start over")
        log(f"{out}: resuming at chunk {start} of {meta['num_chunks']} ({start * chunk} records done)")

    bar = progress_bar(len(keys) * len(flips), str(out), "img", progress,
                       initial=min(start * chunk, len(keys)) * len(flips))
    try:
        for c in range(start, meta["num_chunks"]):
            lo, hi = c * chunk, min((c + 1) * chunk, len(keys))
            for b in range(lo, hi, batch_size):
                batch_keys = keys[b:min(b + batch_size, hi)]
                for j, f in enumerate(flips):
                    images = torch.stack([records.image(k, f) for k in batch_keys])
                    if tuple(images.shape[2:]) != (h, w):
                        raise CacheError(f"{records.path}: the images of records {batch_keys[0]}..{batch_keys[-1]} "
                                         f"are not all {h} x {w} (H x W)")
                    emb = teacher(images.to(device)).float().cpu().numpy()
                    if emb.shape != (len(batch_keys), dim):
                        raise CacheError(f"the teacher gave shape {emb.shape} for {len(batch_keys)} images, "
                                         f"expected ({len(batch_keys)}, {dim})")
                    half = emb.astype(np.float16)
                    if not np.isfinite(half).all():
                        bad = batch_keys[int(np.nonzero(~np.isfinite(half).all(1))[0][0])]
                        raise CacheError(f"the teacher's embedding of record {bad} (flip={f}) is not finite in "
                                         f"float16 (|x| > 65504 or NaN): max |x| = {np.abs(emb).max():.4g}")
                    arr[b:b + len(batch_keys), j] = half
                    if bar is not None:
                        bar.update(len(batch_keys))
            arr.flush()
            faults.hit("cache_kill_before_commit", c)  # test seam: killed before the commit
            meta["chunks_done"] = c + 1
            meta["complete"] = c + 1 == meta["num_chunks"]
            atomic_write_json(meta_path, meta)
    finally:
        if bar is not None:
            bar.close()
        del arr
    return meta


# ------------------------------------------------------------------------------------------------ reading
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
