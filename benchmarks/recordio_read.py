"""RecordIO read speed: the project's pure-Python reader vs MXNet 1.9.1 on the shared LFW set, side by side.

    OMP_NUM_THREADS=1 python benchmarks/recordio_read.py [--shared ../shared] [--mxnet-python PATH] [--repeat 3]

Measures records/s (best of --repeat runs, one process, one thread) of
  * raw reads: ``read_idx`` of all 14,493 keys in a fixed shuffled order, and sequential ``read()`` of the file;
  * decode + transform: ``read_idx`` + unpack + decode the JPEG to RGB + mirror + ``(x/255 - 0.5)/0.5`` to CHW
    float32 for the first 3,000 images (ours: Pillow; MXNet: ``mx.image.imdecode``, OpenCV, as upstream's
    MXFaceDataset does, then the same numpy transform).
MXNet runs in its own interpreter (``--mxnet-python``, default $INSIGHTFACE_PWR_MXNET_PYTHON); without one only
our figures are printed. Target: raw reads at least as fast as MXNet.
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

COMMON = r'''
import json, random, sys, time
import numpy as np

def bench(open_reader, unpack, decode, rec, idx, repeat):
    reader = open_reader(idx, rec, "r")
    keys = list(reader.keys)
    order = keys[:]
    random.Random(0).shuffle(order)
    out = {}
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for k in order:
            reader.read_idx(k)
        best = min(best, time.perf_counter() - t)
    out["raw_random"] = len(order) / best
    best = float("inf")
    for _ in range(repeat):
        seq = open_reader(idx, rec, "r")
        t = time.perf_counter()
        n = 0
        while seq.read() is not None:
            n += 1
        best = min(best, time.perf_counter() - t)
    out["raw_sequential"] = n / best
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for k in range(1, 3001):
            header, payload = unpack(reader.read_idx(k))
            rgb = decode(payload)[:, ::-1]
            x = rgb.transpose(2, 0, 1).astype(np.float32)
            x = (x / 255.0 - 0.5) / 0.5
        best = min(best, time.perf_counter() - t)
    out["decode_transform"] = 3000 / best
    return out
'''

MXNET_SIDE = COMMON + r'''
import mxnet as mx
rec, idx, repeat = sys.argv[1], sys.argv[2], int(sys.argv[3])
res = bench(mx.recordio.MXIndexedRecordIO, mx.recordio.unpack, lambda p: mx.image.imdecode(p).asnumpy(), rec, idx,
            repeat)
res["version"] = "mxnet " + mx.__version__
print(json.dumps(res))
'''


def main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from insightface_pwr.data.images import decode_image
    from insightface_pwr.data.paths import shared_dir
    from insightface_pwr.data.recordio import MXIndexedRecordIO, unpack

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=str(shared_dir()))
    parser.add_argument("--mxnet-python", default=os.environ.get("INSIGHTFACE_PWR_MXNET_PYTHON"))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    train = Path(args.shared) / "data" / "lfw" / "train"
    rec, idx = str(train / "train.rec"), str(train / "train.idx")

    scope = {}
    exec(COMMON, scope)
    ours = scope["bench"](MXIndexedRecordIO, unpack, decode_image, rec, idx, args.repeat)
    theirs = None
    if args.mxnet_python:
        proc = subprocess.run([args.mxnet_python, "-c", MXNET_SIDE, rec, idx, str(args.repeat)], capture_output=True,
                              text=True, env={**os.environ, "OMP_NUM_THREADS": "1", "MXNET_CPU_WORKER_NTHREADS": "1"})
        if proc.returncode != 0:
            print(f"MXNet side failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
            return 1
        theirs = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"{'records/s':<34}{'insightface-pwr':>16}{(theirs or {}).get('version', 'mxnet (not run)'):>16}{'ratio':>8}")
    for key, label in [("raw_random", "raw read_idx, shuffled (14,493)"), ("raw_sequential", "raw read(), sequential"),
                       ("decode_transform", "read+decode+flip+normalise (3,000)")]:
        other = theirs[key] if theirs else float("nan")
        print(f"{label:<34}{ours[key]:>16,.0f}{other:>16,.0f}{ours[key] / other:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
