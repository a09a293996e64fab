"""The shared LFW RecordIO set, read by the project, gives exactly what real MXNet 1.9.1 read from it.

The reference is tests/data/mxnet_compat/lfw_train_manifest.json, written by mxnet_compat/make_manifest.py under
mxnet 1.9.1 / numpy 1.23.5 (keys in index order, headers, labels, sha256 of every payload).
"""
import hashlib
import json
from pathlib import Path

import pytest

from insightface_pwr.data.recordio import MXIndexedRecordIO, MXRecordIO, unpack

MANIFEST = Path(__file__).parent / "mxnet_compat" / "lfw_train_manifest.json"


@pytest.fixture(scope="module")
def manifest():
    return json.loads(MANIFEST.read_text())


def test_files_are_the_manifest_files(lfw_train, manifest):
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((lfw_train / name).read_bytes()).hexdigest() == digest, name


def test_every_record_matches_mxnet(lfw_train, manifest):
    reader = MXIndexedRecordIO(lfw_train / "train.idx", lfw_train / "train.rec", "r")
    records = manifest["records"]
    assert reader.keys == [r[0] for r in records]
    whole = hashlib.sha256()
    for key, flag, label, id_, id2, digest in records:
        header, payload = unpack(reader.read_idx(key))
        got = [float(v) for v in header.label] if header.flag > 0 else header.label
        assert (header.flag, got, header.id, header.id2) == (flag, label, id_, id2), key
        assert hashlib.sha256(payload).hexdigest()[:16] == digest, key
        whole.update(payload)
    assert whole.hexdigest() == manifest["payloads_sha256"]


def test_insightface_layout(lfw_train, manifest):
    """Header 0 is [1 + images, 1 + images + identities]; identity records are [start, end) ranges."""
    reader = MXIndexedRecordIO(lfw_train / "train.idx", lfw_train / "train.rec", "r")
    header0, _ = unpack(reader.read_idx(0))
    assert header0.flag == 2 and list(header0.label) == [9403.0, 14493.0]
    first_images = [r for r in manifest["records"] if 1 <= r[0] < 9403]
    starts = [int(unpack(reader.read_idx(k))[0].label[0]) for k in range(9403, 14493)]
    ends = [int(unpack(reader.read_idx(k))[0].label[1]) for k in range(9403, 14493)]
    assert starts[0] == 1 and ends[-1] == 9403 and starts[1:] == ends[:-1]
    for identity, (s, e) in enumerate(zip(starts, ends)):
        assert {first_images[i - 1][2] for i in range(s, e)} == {float(identity)}


def test_sequential_read_equals_indexed(lfw_train):
    seq = MXRecordIO(lfw_train / "train.rec", "r")
    indexed = MXIndexedRecordIO(lfw_train / "train.idx", lfw_train / "train.rec", "r")
    n = 0
    while (item := seq.read()) is not None:
        assert item == indexed.read_idx(indexed.keys[n])
        n += 1
    assert n == len(indexed.keys) == 14493
