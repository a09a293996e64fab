"""Write and read RecordIO files with REAL MXNet, for the byte-compatibility test (run with mxnet 1.9.1).

    python mx_roundtrip.py write SPEC.json OUT.idx OUT.rec   # records of SPEC -> files written by MXNet
    python mx_roundtrip.py read IN.idx IN.rec OUT.json       # files -> every record as MXNet reads it
    python mx_roundtrip.py write ... + read ...             # several commands in one process, joined by '+'

SPEC.json: a list of [key, flag, label (number or list), id, id2, payload as hex]; each record is written with
``mx.recordio.pack(IRHeader(flag, label, id, id2), payload)`` and ``MXIndexedRecordIO.write_idx``.
The read mode dumps [key, raw record hex, flag, label, id, id2, payload hex] per key, plus every record read
sequentially with ``MXRecordIO.read``. This script must not import the project.
"""
import json
import sys

import mxnet as mx
import numpy as np


def write(spec_path, idx_path, rec_path):
    with open(spec_path) as f:
        spec = json.load(f)
    w = mx.recordio.MXIndexedRecordIO(idx_path, rec_path, "w")
    for key, flag, label, id_, id2, payload in spec:
        w.write_idx(key, mx.recordio.pack(mx.recordio.IRHeader(flag, label, id_, id2), bytes.fromhex(payload)))
    w.close()


def read(idx_path, rec_path, out_path):
    r = mx.recordio.MXIndexedRecordIO(idx_path, rec_path, "r")
    indexed = []
    for key in r.keys:
        raw = r.read_idx(key)
        header, payload = mx.recordio.unpack(raw)
        label = [float(v) for v in np.asarray(header.label)] if header.flag > 0 else float(header.label)
        indexed.append([key, raw.hex(), int(header.flag), label, int(header.id), int(header.id2), payload.hex()])
    r.close()
    seq = []
    s = mx.recordio.MXRecordIO(rec_path, "r")
    while True:
        item = s.read()
        if item is None:
            break
        seq.append(item.hex())
    s.close()
    with open(out_path, "w") as f:
        json.dump({"indexed": indexed, "sequential": seq}, f)


if __name__ == "__main__":
    args = sys.argv[1:]
    while args:
        cut = args.index("+") if "+" in args else len(args)
        command, args = args[:cut], args[cut + 1:]
        {"write": write, "read": read}[command[0]](*command[1:])
