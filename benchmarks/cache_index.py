"""Start-up cost of a teacher cache at MS1M scale, without a teacher: a synthetic cache of 5.8 M records (sparse
``.npy`` of zeros, 5.8 M x 2 x 512 float16 = 12 GB apparent, ~0 on disk; metadata with one key range and the
checksums of zero chunks), then in a fresh process: ``TeacherCache`` open (``verify="none"``), a 128-key lookup,
the dataset-keys check of ``open_cached_teacher`` (5.8 M keys), and separately ``verify="full"``'s sha256 rate.

    python benchmarks/cache_index.py [--records 5822653] [--dir /tmp/cache_index] [--verify-gb 1]

Prints seconds, tracemalloc peak (Python + numpy allocations) and the growth of the process's peak RSS
(ru_maxrss) over its value after the imports. Works against the previous implementation too (no ``verify``
argument, no checksums: run with that package first on PYTHONPATH) for a before/after comparison."""
import argparse
import hashlib
import inspect
import json
import os
import resource
import time
import tracemalloc
from pathlib import Path

import numpy as np

D, F, CHUNK = 512, 2, 1024


def make_fake(out: Path, n: int) -> None:
    from insightface_pwr.distill.teacher_cache import CACHE_FORMAT
    out.parent.mkdir(parents=True, exist_ok=True)
    arr = np.lib.format.open_memmap(str(out), mode="w+", dtype=np.float16, shape=(n, F, D))  # sparse zeros
    del arr
    full = hashlib.sha256(bytes(CHUNK * F * D * 2)).hexdigest()
    num = -(-n // CHUNK)
    last = hashlib.sha256(bytes((n - (num - 1) * CHUNK) * F * D * 2)).hexdigest()
    meta = {"format": CACHE_FORMAT, "teacher": {"path": "fake", "sha256": "0" * 64}, "recordio": {},
            "keys": [[1, n + 1]], "count": n, "flips": [False, True], "embedding_size": D, "dtype": "float16",
            "image_size": [112, 112], "normalisation": {"mean": 127.5, "std": 127.5}, "batch_size": 64,
            "chunk_size": CHUNK, "num_chunks": num, "chunks_done": num, "complete": True,
            "chunk_sha256": [full] * (num - 1) + [last]}
    Path(str(out) + ".json").write_text(json.dumps(meta))


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--records", type=int, default=5822653)  # MS1M-ArcFace (ms1m-retinaface-t1: 5179510)
    p.add_argument("--dir", default="/tmp/cache_index")
    p.add_argument("--verify-gb", type=float, default=1.0, help="GB of the array to hash for the verify rate")
    a = p.parse_args()
    from insightface_pwr.distill.teacher_cache import CACHE_FORMAT, TeacherCache
    out = Path(a.dir) / "fake.f16.npy"
    meta_path = Path(str(out) + ".json")
    if not out.exists() or json.loads(meta_path.read_text())["count"] != a.records:
        make_fake(out, a.records)
    elif json.loads(meta_path.read_text())["format"] != CACHE_FORMAT:  # the other implementation's run made it
        meta = json.loads(meta_path.read_text())
        meta["format"] = CACHE_FORMAT
        meta_path.write_text(json.dumps(meta))
    new = "verify" in inspect.signature(TeacherCache.__init__).parameters
    rss0 = maxrss_mb()
    tracemalloc.start()
    t0 = time.perf_counter()
    cache = TeacherCache(out, verify="none") if new else TeacherCache(out)
    t_open = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    keys = rng.integers(1, a.records + 1, 128)
    flips = rng.random(128) < 0.5
    t0 = time.perf_counter()
    emb = cache.lookup(keys, flips)
    t_lookup = time.perf_counter() - t0
    assert tuple(emb.shape) == (128, D)
    _, peak_open = tracemalloc.get_traced_memory()
    rss_open = maxrss_mb() - rss0
    dataset_keys = np.arange(1, a.records + 1, dtype=np.int64)  # what FaceDataset holds (not counted above)
    tracemalloc.reset_peak()
    base, _ = tracemalloc.get_traced_memory()
    t0 = time.perf_counter()
    cache.check(teacher_sha256=None, rec_dir=None, dataset_keys=dataset_keys if new else dataset_keys.tolist())
    t_check = time.perf_counter() - t0
    _, peak_check = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_check = maxrss_mb() - rss0
    print(f"implementation: {'new (ranges + searchsorted)' if new else 'previous (arange + argsort + set)'}; "
          f"{a.records} records, array {cache.array.nbytes / 1e9:.1f} GB")
    print(f"open (verify=none): {t_open:.4f} s, 128-key lookup: {t_lookup * 1e3:.2f} ms; "
          f"tracemalloc peak {peak_open / 2**20:.1f} MiB, peak RSS growth {rss_open:.1f} MiB")
    print(f"check(dataset_keys={a.records}): {t_check:.3f} s, tracemalloc peak {(peak_check - base) / 2**20:.1f} MiB "
          f"over the keys array, peak RSS growth (cumulative) {rss_check:.1f} MiB")
    if new and a.verify_gb > 0:
        from insightface_pwr.distill.teacher_cache.format import hash_rows
        rows = min(a.records, int(a.verify_gb * 1e9 / (F * D * 2)))
        t0 = time.perf_counter()
        hash_rows(out, cache.array.offset, F * D * 2, 0, rows)
        dt = time.perf_counter() - t0
        rate = rows * F * D * 2 / dt / 1e9
        print(f"verify=full sha256 rate (one thread, sparse file = page-cache speed): {rate:.2f} GB/s -> "
              f"{cache.array.nbytes / 1e9 / rate:.1f} s for the whole {cache.array.nbytes / 1e9:.1f} GB on one core, "
              f"/{min(8, os.cpu_count() or 1)} threads on this machine")


if __name__ == "__main__":
    main()
