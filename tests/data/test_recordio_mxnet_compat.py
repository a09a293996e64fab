"""Byte-compatibility with REAL MXNet: for the same records, the project writes byte-identical .rec/.idx files,
and each side reads the other's files back exactly.

MXNet does not import with numpy >= 1.24, so it runs in its own interpreter: set INSIGHTFACE_PWR_MXNET_PYTHON to a
Python with mxnet 1.9.1 and numpy 1.23.5 (.ci/run creates one). The test is skipped, with that reason, only when
the variable is unset; a set variable whose Python lacks mxnet fails the test.
"""
import json
import os
import random
import subprocess
from pathlib import Path

import pytest

from insightface_pwr.data.recordio import IRHeader, MXIndexedRecordIO, MXRecordIO, pack, unpack

SCRIPT = Path(__file__).parent / "mxnet_compat" / "mx_roundtrip.py"
MX_PYTHON = os.environ.get("INSIGHTFACE_PWR_MXNET_PYTHON")
M = bytes.fromhex("0a23d7ce")

pytestmark = pytest.mark.skipif(not MX_PYTHON, reason="INSIGHTFACE_PWR_MXNET_PYTHON is unset: no MXNet interpreter "
                                                      "to compare with (.ci/run sets it)")


def spec_records(lfw_train):
    """Edge cases of the framing and the header, plus 20 real LFW records (header 0, images, identity ranges)."""
    rng = random.Random(0)
    payloads = [b"", b"a", b"ab", b"abc", b"abcd", b"abcde", M, M + M, b"ABCD" + M, b"ABCD" + M + b"E",
                b"A" + M + b"BCD", b"AB" + M, M * 5 + b"xy", bytes(range(256)) * 3,
                bytes(rng.getrandbits(8) for _ in range(5000))]
    payloads.append(b"".join(M if rng.random() < 0.3 else bytes(rng.getrandbits(8) for _ in range(4))
                             for _ in range(300)) + b"zz")
    spec = []
    for i, p in enumerate(payloads):
        label = [float(i), 0.5, -2.0] if i % 3 == 0 else float(i) + 0.25
        spec.append([i * 7 + 1, 0, label, i, i * 1000, p.hex()])
    reader = MXIndexedRecordIO(lfw_train / "train.idx", lfw_train / "train.rec", "r")
    for key in [0, 1, 2, 3, 500, 9402, 9403, 9404, 14492] + list(range(100, 111)):
        header, payload = unpack(reader.read_idx(key))
        label = [float(v) for v in header.label] if header.flag > 0 else header.label
        spec.append([1000 + key, header.flag, label, header.id, header.id2, payload.hex()])
    return spec


def run_mx(*args):
    proc = subprocess.run([MX_PYTHON, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"MXNet script failed ({MX_PYTHON}):\n{proc.stderr[-3000:]}"


def test_byte_identical_both_ways(tmp_path, lfw_train):
    spec = spec_records(lfw_train)
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    ours_idx, ours_rec = tmp_path / "ours.idx", tmp_path / "ours.rec"
    with MXIndexedRecordIO(ours_idx, ours_rec, "w") as w:
        for key, flag, label, id_, id2, payload in spec:
            w.write_idx(key, pack(IRHeader(flag, label, id_, id2), bytes.fromhex(payload)))
    mx_idx, mx_rec = tmp_path / "mx.idx", tmp_path / "mx.rec"
    run_mx("write", tmp_path / "spec.json", mx_idx, mx_rec, "+", "read", ours_idx, ours_rec, tmp_path / "read.json")

    assert ours_rec.read_bytes() == mx_rec.read_bytes()
    assert ours_idx.read_bytes() == mx_idx.read_bytes()

    # MXNet reads our file: every record, indexed and sequential, is what we packed
    read = json.loads((tmp_path / "read.json").read_text())
    assert [r[0] for r in read["indexed"]] == [s[0] for s in spec]
    for (key, raw, flag, label, id_, id2, payload), s in zip(read["indexed"], spec):
        expect_flag = len(s[2]) if isinstance(s[2], list) else 0
        assert (flag, label, id_, id2, payload) == (expect_flag, s[2], s[3], s[4], s[5]), key
        assert bytes.fromhex(raw) == pack(IRHeader(*s[1:5]), bytes.fromhex(s[5]))
    assert read["sequential"] == [r[1] for r in read["indexed"]]

    # we read MXNet's file: same records
    ours = MXIndexedRecordIO(mx_idx, mx_rec, "r")
    seq = MXRecordIO(mx_rec, "r")
    for key, raw, *_ in read["indexed"]:
        assert ours.read_idx(key) == bytes.fromhex(raw) == seq.read()
    assert seq.read() is None
