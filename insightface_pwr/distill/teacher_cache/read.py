"""Reading a finished cache: :class:`TeacherCache`, the :class:`CachedTeacher` callable, :func:`open_cached_teacher`,
and :class:`AttachEmbeddings` (a DataLoader ``collate_fn`` that looks the batch's embeddings up in the worker)."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from ..batch_keys import BATCH_KEYS, BatchKeys
from .fingerprint import image_records, recordio_fingerprint, sha256_file
from .format import (CACHE_FORMAT, TRAIN_MEAN, TRAIN_STD, CacheError, PathLike, _from_ranges, _meta_path, _read_meta,
                     hash_rows)
from .index import KeyIndex

VERIFY_MODES = ("full", "none")
ArrayLike = Union[np.ndarray, torch.Tensor, Sequence[int]]


class TeacherCache:
    """A finished cache, memory-mapped read-only. ``lookup(keys, flips) -> N x D float32`` (torch),
    ``lookup_numpy`` the same as a numpy array.

    ``verify="full"`` (default) re-hashes every chunk at open and refuses a cache whose bytes differ from the
    checksums its builder committed (rows zeroed or altered), naming the chunk and its rows. Cost: one sequential
    read + sha256 of the whole array, O(size), on ``min(8, cpu_count)`` threads: MS1M with both flips of a 512-d
    teacher is 5.8 M x 2 x 512 x 2 B = 12 GB: 10-22 s of sha256 on one core at the 0.55-1.2 GB/s measured here
    (``benchmarks/cache_index.py``; CPUs with SHA extensions hash ~2 GB/s), divided among the threads, plus reading
    12 GB (seconds from page cache / NVMe, minutes from a slow disk), in every process that opens it.
    ``verify="none"`` skips it (checks only the array's shape and dtype): for the other ranks of a node once one
    has verified, or for caches of format /1 (no checksums).

    Picklable without its memory map (a DataLoader worker, spawn or fork, reopens it on first use and checks it is
    still the same file: inode, size, mtime)."""

    def __init__(self, path: PathLike, verify: str = "full") -> None:
        if verify not in VERIFY_MODES:
            raise CacheError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")
        self.path = Path(path)
        self.meta = meta = _read_meta(_meta_path(path))
        if not meta.get("complete"):
            raise CacheError(f"teacher cache {str(path)!r} is incomplete ({meta.get('chunks_done')} of "
                             f"{meta.get('num_chunks')} chunks): finish it by re-running the same "
                             f"insightface-pwr cache-teacher command")
        self.embedding_size = int(meta["embedding_size"])
        self.has_flips = len(meta["flips"]) == 2
        self._shape = (int(meta["count"]), len(meta["flips"]), self.embedding_size)
        self._array: Optional[np.ndarray] = None
        self._keys: Optional[np.ndarray] = None
        self._identity = None
        array = self.array  # opens and checks shape / dtype, records the file's identity
        self._offset = int(array.offset)
        self.index = KeyIndex(meta["keys"], where=f"teacher cache {str(path)!r}")
        if self.index.count != self._shape[0]:
            raise CacheError(f"teacher cache {str(path)!r}: its key ranges hold {self.index.count} records, its "
                             f"metadata says count = {self._shape[0]}")
        if verify == "full":
            self.verify()

    # -------------------------------------------------------------------------------------- the array, per process
    @property
    def array(self) -> np.ndarray:
        """The ``count x F x D`` float16 memory map (opened on first use in each process)."""
        if self._array is None:
            self._array = self._open()
        return self._array

    def _open(self) -> np.ndarray:
        path = str(self.path)
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
            st = os.stat(path)
        except FileNotFoundError:
            raise CacheError(f"teacher cache array {path!r} not found (its metadata exists)") from None
        except ValueError as e:
            raise CacheError(f"teacher cache array {path!r} is not a .npy array: {e}") from None
        if array.shape != self._shape or array.dtype != np.float16:
            raise CacheError(f"teacher cache array {path!r} is {array.dtype} {array.shape}, its metadata says "
                             f"float16 {self._shape}")
        identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if self._identity is not None and identity != self._identity:
            raise CacheError(f"teacher cache array {path!r} was replaced or modified since it was opened "
                             f"(and verified) in the main process; restart training")
        self._identity = identity
        return array

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state["_array"] = None  # a memmap pickles as its whole data: never ship it, reopen it
        state["_keys"] = None
        return state

    # -------------------------------------------------------------------------------------- checks
    def verify(self, threads: Optional[int] = None) -> None:
        """Re-hash every chunk of the array; CacheError naming the chunks (and rows) that differ from the metadata."""
        meta = self.meta
        sums = meta.get("chunk_sha256")
        if meta.get("format") != CACHE_FORMAT or not isinstance(sums, list):
            raise CacheError(f"teacher cache {str(self.path)!r} has no chunk checksums (format "
                             f"{meta.get('format')!r}, made by an older insightface-pwr): re-make it with "
                             f"insightface-pwr cache-teacher --overwrite, or open it with verify='none'")
        count, chunk, n = self._shape[0], int(meta["chunk_size"]), int(meta["num_chunks"])
        if len(sums) != n or n != -(-count // chunk):
            raise CacheError(f"teacher cache {str(self.path)!r}: {len(sums)} chunk checksums for {n} chunks of "
                             f"{chunk} rows ({count} rows); the metadata is damaged: re-make the cache")
        row_bytes = self._shape[1] * self._shape[2] * 2
        spans = [(c * chunk, min((c + 1) * chunk, count)) for c in range(n)]
        threads = threads or min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=threads) as pool:
            got = list(pool.map(lambda s: hash_rows(self.path, self._offset, row_bytes, *s), spans))
        bad = [c for c in range(n) if got[c] != sums[c]]
        if bad:
            where = ", ".join(f"chunk {c} (rows {spans[c][0]}..{spans[c][1] - 1})" for c in bad[:5])
            raise CacheError(f"teacher cache {str(self.path)!r} refused: its bytes differ from the checksums its "
                             f"builder committed in {len(bad)} of {n} chunks: {where}{' ...' if len(bad) > 5 else ''} "
                             f"(rows zeroed or altered after they were written); re-make it with insightface-pwr "
                             f"cache-teacher --overwrite")

    @property
    def keys(self) -> np.ndarray:
        """All record keys in row order (built on first use: O(records) memory; the lookups do not need it)."""
        if self._keys is None:
            self._keys = _from_ranges(self.meta["keys"])
        return self._keys

    def rows(self, keys: ArrayLike) -> np.ndarray:
        """Rows of ``keys`` (int64 array); a key the cache lacks is a CacheError naming it."""
        keys = np.asarray(keys, dtype=np.int64).reshape(-1)
        rows = self.index.rows(keys)
        if (rows < 0).any():
            missing = keys[rows < 0]
            raise CacheError(f"teacher cache {str(self.path)!r} has no embedding for record(s) "
                             f"{missing[:10].tolist()}{' ...' if missing.size > 10 else ''} "
                             f"({missing.size} of the batch's {keys.size}); it holds {self.index.count} records")
        return rows

    def lookup_numpy(self, keys: ArrayLike, flips: ArrayLike, out: Optional[np.ndarray] = None) -> np.ndarray:
        """The cached embeddings (N x D float32 numpy) of records ``keys``, of their mirror image where ``flips``;
        written into ``out`` (N x D float32) when given. Cheap and safe in DataLoader workers (see the class)."""
        keys = _as_numpy(keys, np.int64)
        flips = _as_numpy(flips, bool)
        if keys.size != flips.size:
            raise CacheError(f"teacher cache lookup: {keys.size} keys but {flips.size} flip flags")
        if flips.any() and not self.has_flips:
            raise CacheError(f"teacher cache {str(self.path)!r} was made with --flip none but the batch holds "
                             f"mirrored images (the training transform flips): make it with --flip both")
        half = self.array[self.rows(keys), flips.astype(np.intp)]  # fancy index: a copy, N x D float16
        if out is None:
            return half.astype(np.float32)
        if out.shape != half.shape or out.dtype != np.float32:
            raise CacheError(f"teacher cache lookup: out is {out.dtype} {out.shape}, expected float32 {half.shape}")
        out[...] = half
        return out

    def lookup(self, keys: ArrayLike, flips: ArrayLike, pin_memory: bool = False) -> torch.Tensor:
        """:meth:`lookup_numpy` as a torch tensor; in page-locked memory when ``pin_memory`` (then a
        ``.to(cuda, non_blocking=True)`` is a true asynchronous copy)."""
        keys = _as_numpy(keys, np.int64)
        if pin_memory:
            out = torch.empty((keys.size, self.embedding_size), dtype=torch.float32, pin_memory=True)
            self.lookup_numpy(keys, flips, out=out.numpy())
            return out
        return torch.from_numpy(self.lookup_numpy(keys, flips))

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
        if dataset_keys is not None:  # vectorised: no Python set of millions of keys
            wanted = np.asarray(dataset_keys, dtype=np.int64).reshape(-1)
            missing = wanted[~self.index.contains(wanted)]
            if missing.size:
                problems.append(f"it misses {missing.size} of the data set's {wanted.size} records "
                                f"(first: {missing[:10].tolist()})")
        if problems:
            raise CacheError(f"teacher cache {str(self.path)!r} refused: " + "; ".join(problems))



class CachedTeacher:
    """A teacher callable for :class:`~insightface_pwr.distill.hooks.DistillHooks` that looks embeddings up.

    ``__call__(images)`` takes what the loader published for ``images`` (see :mod:`insightface_pwr.distill.batch_keys`):
    the embeddings themselves when the loader carried them with the batch (:class:`AttachEmbeddings`, computed in a
    DataLoader worker), else the record keys and flip flags, looked up here. Returns float32 on the images' device
    (from page-locked memory when that is a CUDA device, so the copy does not stall the training thread)."""

    kind = "cache"

    def __init__(self, cache: TeacherCache, channel: BatchKeys = BATCH_KEYS) -> None:
        self.cache, self.channel = cache, channel
        self.embedding_size = cache.embedding_size

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        keys, flips, emb = self.channel.take(images)
        cuda = images.device.type == "cuda"
        if emb is None:
            emb = self.cache.lookup(keys, flips, pin_memory=cuda)
        else:
            if tuple(emb.shape) != (keys.numel(), self.embedding_size):
                raise CacheError(f"the loader carried teacher embeddings of shape {tuple(emb.shape)} for "
                                 f"{keys.numel()} images, expected ({keys.numel()}, {self.embedding_size}) "
                                 f"(another cache than {str(self.cache.path)!r}?)")
            if cuda and emb.device.type == "cpu" and not emb.is_pinned():
                emb = emb.pin_memory()
        return emb.to(images.device, dtype=torch.float32, non_blocking=True)


class AttachEmbeddings:
    """A DataLoader ``collate_fn`` for samples ``(image, label, key, flipped, ...)``: collates them (``collate``,
    default torch's ``default_collate``) and appends the batch's cached teacher embeddings (N x D float32 tensor),
    looked up in the worker process. Picklable (the cache travels without its memory map)::

        loader = DataLoader(dataset, ..., collate_fn=AttachEmbeddings(cached_teacher.cache), pin_memory=True)
        for img, label, key, flipped, emb in loader:
            BATCH_KEYS.publish(img, key, flipped, embeddings=emb)
    """

    def __init__(self, cache: TeacherCache, collate: Optional[Callable[[List[Any]], Any]] = None,
                 key_index: int = 2, flip_index: int = 3) -> None:
        self.cache, self.collate = cache, collate
        self.key_index, self.flip_index = key_index, flip_index

    def __call__(self, samples: List[Any]) -> tuple:
        from torch.utils.data import default_collate
        batch = (self.collate or default_collate)(samples)
        emb = self.cache.lookup(batch[self.key_index], batch[self.flip_index])
        return (*batch, emb)


def _as_numpy(x: ArrayLike, dtype: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype).reshape(-1)


def open_cached_teacher(teacher_spec: Dict[str, Any], rec_dir: Optional[str], verify: str = "full") -> CachedTeacher:
    """The :class:`CachedTeacher` of ``config.distill.teacher.cache``, checked against the teacher's weights file
    (sha256), the training RecordIO folder ``rec_dir`` (fingerprint and records; ``"synthetic"``/None: refused)
    and ``teacher.input_size``; ``verify``: see :class:`TeacherCache` (``"full"``: every chunk's checksum)."""
    path = teacher_spec["cache"]
    weights = Path(teacher_spec["weights"])
    if not weights.is_file():
        raise CacheError(f"config.distill.teacher.weights: teacher file not found: {str(weights)!r} (a cache is "
                         f"checked against the sha256 of the teacher file it was made with)")
    if rec_dir is None or rec_dir == "synthetic":
        raise CacheError(f"config.distill.teacher.cache needs a RecordIO training set (config.rec), got {rec_dir!r}")
    cache = TeacherCache(path, verify=verify)
    cache.check(teacher_sha256=sha256_file(weights), rec_dir=rec_dir, image_size=teacher_spec.get("input_size"),
                dataset_keys=image_records(rec_dir).keys)
    return CachedTeacher(cache)
