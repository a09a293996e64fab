"""Write the manifest of a RecordIO set as read by REAL MXNet (run with a Python that has mxnet 1.9.1).

    /work/mxenv/bin/python tests/data/mxnet_compat/make_manifest.py ../shared/data/lfw/train \
        tests/data/mxnet_compat/lfw_train_manifest.json

The manifest holds, for every key of train.idx in file order: the header (flag, label, id, id2) as MXNet's
``recordio.unpack`` returns it, and the first 16 hex digits of the sha256 of the payload after the header; plus the
sha256 of the .rec, .idx and property files and of all payloads concatenated. tests/data/test_recordio_lfw.py
compares the project's reader against it. This script must not import the project.
"""
import hashlib
import json
import os
import sys

import mxnet as mx
import numpy as np


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def main(root, out):
    rec, idx = os.path.join(root, "train.rec"), os.path.join(root, "train.idx")
    reader = mx.recordio.MXIndexedRecordIO(idx, rec, "r")
    whole = hashlib.sha256()
    records = []
    for key in reader.keys:
        header, payload = mx.recordio.unpack(reader.read_idx(key))
        label = header.label
        label = [float(v) for v in np.asarray(label).ravel()] if header.flag > 0 else float(label)
        records.append([int(key), int(header.flag), label, int(header.id), int(header.id2),
                        hashlib.sha256(payload).hexdigest()[:16]])
        whole.update(payload)
    reader.close()
    manifest = {
        "written_by": "mxnet %s, numpy %s (tests/data/mxnet_compat/make_manifest.py)" % (mx.__version__, np.__version__),
        "files": {name: file_sha256(os.path.join(root, name)) for name in ("train.rec", "train.idx", "property")},
        "num_records": len(records),
        "payloads_sha256": whole.hexdigest(),
        "record_fields": ["key", "flag", "label", "id", "id2", "payload_sha256_16"],
        "records": records,
    }
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(manifest, f, separators=(",", ":"))
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out)
    print("%d records -> %s (%d bytes)" % (len(records), out, os.path.getsize(out)))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
