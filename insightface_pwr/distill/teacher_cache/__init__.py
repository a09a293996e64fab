"""Teacher-embedding cache: a frozen teacher's embeddings of every training image, computed once.

Files (``OUT`` is the path given to ``insightface-pwr cache-teacher --out``):

* ``OUT``: a NumPy ``.npy`` array, float16, shape ``count x F x D`` (memory-mapped for reading and writing):
  row ``r`` is the r-th image record of the RecordIO set, ``[:, 0]`` its embedding, ``[:, 1]`` (``F = 2``,
  ``flip = "both"``) the embedding of its horizontal mirror (the training transform's random flip); raw teacher
  output (not normalised), rounded to float16 (relative precision 2**-11);
* ``OUT.json``: the metadata, rewritten atomically after every chunk (it is the progress record too):
  the teacher file's sha256, the RecordIO fingerprint (below), the record keys (as ``[start, stop)`` ranges),
  image size, normalisation, flips, the chunking, ``chunks_done``, ``complete`` and ``chunk_sha256`` (the sha256 of
  each committed chunk's rows as written in ``OUT``; re-checked when training opens the cache, ``TeacherCache``'s
  ``verify``);
* ``OUT.lock``: present while a build runs; its exclusive ``flock`` refuses a second writer (``lock.py``).

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

from .build import build_cache
from .fingerprint import image_records, recordio_fingerprint, sha256_file
from .format import CACHE_FORMAT, FLIP_MODES, TRAIN_MEAN, TRAIN_STD, CacheError  # noqa: F401  (FLIP_MODES: public before the split)
from .read import AttachEmbeddings, CachedTeacher, TeacherCache, open_cached_teacher

__all__ = ["CACHE_FORMAT", "CacheError", "TeacherCache", "CachedTeacher", "build_cache", "sha256_file",
           "recordio_fingerprint", "image_records", "TRAIN_MEAN", "TRAIN_STD", "open_cached_teacher", "AttachEmbeddings"]
