"""Writing a cache: :func:`build_cache` (resumable, chunk by chunk)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Dict, Union

import numpy as np
import torch

from ...infra import faults
from ...infra.atomic import atomic_write_json
from ...infra.progress import progress_bar
from .fingerprint import image_records, recordio_fingerprint
from .lock import exclusive_lock
from .format import (CACHE_FORMAT, FLIP_MODES, TRAIN_MEAN, TRAIN_STD, CacheError, PathLike, _meta_path, _read_meta,
                     _to_ranges, hash_rows)

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
    out.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(out):  # one writer per cache, for the whole build (lock.py)
        return _build_locked(teacher, teacher_info, rec_dir, out, flip=flip, batch_size=batch_size,
                             chunk_batches=chunk_batches, device=torch.device(device), progress=progress,
                             overwrite=overwrite, log=log)


def _build_locked(teacher: Callable[[torch.Tensor], torch.Tensor], teacher_info: Dict[str, Any], rec_dir: PathLike,
                  out: Path, *, flip: str, batch_size: int, chunk_batches: int, device: torch.device,
                  progress: bool, overwrite: bool, log: Callable[[str], None]) -> Dict[str, Any]:
    meta_path = _meta_path(out)
    records = image_records(rec_dir)
    keys = records.keys
    if len(keys) == 0:
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
        "chunks_done": 0, "complete": False, "chunk_sha256": []}
    shape = (len(keys), len(flips), dim)
    row_bytes = len(flips) * dim * np.dtype(np.float16).itemsize

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
        meta["chunk_sha256"] = list(old.get("chunk_sha256", []))[:start]
        if len(meta["chunk_sha256"]) != start:
            raise CacheError(f"{str(meta_path)!r} records {start} finished chunks but {len(meta['chunk_sha256'])} "
                             f"chunk checksums; remove both files (or pass --overwrite) to start over")
        if start > 0 and not out.is_file():
            raise CacheError(f"{str(meta_path)!r} records {start} finished chunks but {str(out)!r} is missing; "
                             f"remove the metadata file to start over")
    elif out.exists() and not overwrite and not meta_path.exists():
        raise CacheError(f"{str(out)!r} exists and is not a teacher cache (no {meta_path.name}); remove it or "
                         f"pass --overwrite")
    if start == 0:
        atomic_write_json(meta_path, meta)  # first: a kill after this leaves a resumable (empty) cache
        if out.exists():  # a new inode: a reader that still maps the old array keeps its bytes (no truncation)
            out.unlink()
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
            # the checksum of the chunk's bytes as the file now holds them (checked when training opens the cache)
            meta["chunk_sha256"].append(hash_rows(out, arr.offset, row_bytes, lo, hi))
            faults.hit("cache_kill_before_commit", c)  # test seam: killed before the commit
            meta["chunks_done"] = c + 1
            meta["complete"] = c + 1 == meta["num_chunks"]
            atomic_write_json(meta_path, meta)
    finally:
        if bar is not None:
            bar.close()
        del arr
    return meta
