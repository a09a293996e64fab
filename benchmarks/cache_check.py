"""Check a finished teacher cache against its live teacher on random records (real data).

    OMP_NUM_THREADS=2 python benchmarks/cache_check.py --cache OUT.npy --teacher TEACHER --rec DIR [--samples 128]

Opens the cache as training does (teacher sha256, RecordIO fingerprint, records), draws ``--samples`` random
(record, flip) pairs, runs the live teacher on their training tensors and prints the largest error relative to
float16's rounding bound (``2**-11 |x|``); exits 1 when any element exceeds it.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from insightface_pwr.distill.teacher_cache import TeacherCache, image_records, sha256_file  # noqa: E402
from insightface_pwr.distill.teachers import load_teacher  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", required=True)
    p.add_argument("--teacher", required=True)
    p.add_argument("--rec", required=True)
    p.add_argument("--samples", type=int, default=128)
    args = p.parse_args()
    t0 = time.perf_counter()
    cache = TeacherCache(args.cache)
    records = image_records(args.rec)
    cache.check(teacher_sha256=sha256_file(args.teacher), rec_dir=args.rec, image_size=(112, 112),
                dataset_keys=records.keys)
    print(f"cache accepted: {cache.meta['count']} records x {len(cache.meta['flips'])} flips x "
          f"{cache.embedding_size}, checks took {time.perf_counter() - t0:.2f} s")
    rng = np.random.default_rng(0)
    keys = rng.choice(records.keys, args.samples, replace=False)
    flips = rng.random(args.samples) < 0.5
    teacher = load_teacher({"weights": args.teacher, "format": "auto"}, None, torch.device("cpu"))
    live = teacher(torch.stack([records.image(int(k), bool(f)) for k, f in zip(keys, flips)])).numpy()
    t = time.perf_counter()
    cached = cache.lookup(torch.from_numpy(keys), torch.from_numpy(flips)).numpy()
    lookup_ms = 1000 * (time.perf_counter() - t)
    ratio = np.abs(cached - live) / (2.0 ** -11 * np.abs(live) + 2.0 ** -25)
    print(f"{args.samples} random (record, flip) pairs ({int(flips.sum())} flipped): max |cached - live| = "
          f"{np.abs(cached - live).max():.3g} (max |live| {np.abs(live).max():.3g}); worst element at "
          f"{ratio.max():.3f} x the float16 rounding bound; lookup {lookup_ms:.2f} ms")
    return 0 if ratio.max() <= 1.0 + 1e-3 else 1


if __name__ == "__main__":
    sys.exit(main())
