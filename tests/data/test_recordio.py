"""RecordIO framing, headers and errors, checked against hand-worked bytes (MXNet/dmlc-core's format)."""
import pickle
import struct

import numpy as np
import pytest

from insightface_pwr.data import DataFileError
from insightface_pwr.data.recordio import (MAGIC, IRHeader, MXIndexedRecordIO, MXRecordIO, encode_record, pack,
                                           unpack)

M = bytes.fromhex("0a23d7ce")  # 0xCED7230A little-endian


def lrec(cflag, length):
    return struct.pack("<I", cflag << 29 | length)


def test_magic_bytes():
    assert struct.pack("<I", MAGIC) == M


@pytest.mark.parametrize("payload, frames", [
    (b"", M + lrec(0, 0)),
    (b"abc", M + lrec(0, 3) + b"abc\0"),
    (b"abcd", M + lrec(0, 4) + b"abcd"),
    (b"abcde", M + lrec(0, 5) + b"abcde\0\0\0"),
    # an aligned magic splits the record; the magic itself is not stored
    (b"ABCD" + M + b"EF", M + lrec(1, 4) + b"ABCD" + M + lrec(3, 2) + b"EF\0\0"),
    (M, M + lrec(1, 0) + M + lrec(3, 0)),
    (M + M + b"x", M + lrec(1, 0) + M + lrec(2, 0) + M + lrec(3, 1) + b"x\0\0\0"),
    # an unaligned magic, or one in the unaligned tail, does not
    (b"A" + M + b"BCD", M + lrec(0, 8) + b"A" + M + b"BCD"),
    (b"AB" + M, M + lrec(0, 6) + b"AB" + M + b"\0\0"),
])
def test_encode_record_hand_worked(payload, frames, tmp_path):
    assert encode_record(payload) == frames
    path = tmp_path / "a.rec"
    with MXRecordIO(path, "w") as w:
        w.write(payload)
        w.write(b"next")
    assert path.read_bytes() == frames + M + lrec(0, 4) + b"next"
    r = MXRecordIO(path, "r")
    assert r.read() == payload
    assert r.read() == b"next"
    assert r.read() is None
    r.reset()
    assert r.read() == payload


def test_pack_unpack_hand_worked():
    raw = pack(IRHeader(0, 3.5, 7, 9), b"img")
    assert raw == struct.pack("<IfQQ", 0, 3.5, 7, 9) + b"img"
    header, rest = unpack(raw)
    assert header == IRHeader(0, 3.5, 7, 9) and rest == b"img"
    # a vector label: flag = its length, header label 0, float32 values after the header
    raw = pack(IRHeader(5, [1.0, 2.5], 3, 0), b"z")
    assert raw == struct.pack("<IfQQ", 2, 0.0, 3, 0) + struct.pack("<2f", 1.0, 2.5) + b"z"
    header, rest = unpack(raw)
    assert header.flag == 2 and header.label.dtype == np.float32 and list(header.label) == [1.0, 2.5]
    assert rest == b"z"
    # a numeric label forces flag 0 (as MXNet does)
    assert unpack(pack(IRHeader(3, 1.0, 0, 0), b""))[0].flag == 0


def test_unpack_short_record_names_source():
    with pytest.raises(DataFileError, match="x.rec, record 4: .*shorter than the 24-byte"):
        unpack(b"abc", source="x.rec", key=4)
    with pytest.raises(DataFileError, match="flag=3"):
        unpack(struct.pack("<IfQQ", 3, 0, 0, 0) + b"1234", source="x.rec", key=4)


def write_set(tmp_path, records):
    idx, rec = tmp_path / "t.idx", tmp_path / "t.rec"
    with MXIndexedRecordIO(idx, rec, "w") as w:
        for k, payload in records:
            w.write_idx(k, payload)
    return idx, rec


def test_indexed_roundtrip_and_index_format(tmp_path):
    records = [(3, b"three"), (1, b""), (10, b"ABCD" + M + b"tail"), (2, b"x" * 1001)]
    idx, rec = write_set(tmp_path, records)
    offsets, pos = [], 0
    for _, payload in records:
        offsets.append(pos)
        pos += len(encode_record(payload))
    assert idx.read_text() == "".join(f"{k}\t{o}\n" for (k, _), o in zip(records, offsets))
    assert rec.stat().st_size == pos
    r = MXIndexedRecordIO(idx, rec, "r")
    assert r.keys == [3, 1, 10, 2]
    for k, payload in reversed(records):
        assert r.read_idx(k) == payload
    r2 = pickle.loads(pickle.dumps(r))  # DataLoader workers
    assert r2.read_idx(10) == records[2][1]
    with pytest.raises(KeyError):
        r.read_idx(99)
    with pytest.raises(DataFileError, match=r"t.idx, record 99: no such key"):
        r.read_idx(99)
    r.close()


def test_writer_is_atomic(tmp_path):
    rec = tmp_path / "a.rec"
    with pytest.raises(RuntimeError):
        with MXRecordIO(rec, "w") as w:
            w.write(b"abc")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


# -- bad input: each raises DataFileError naming the file and the record ------------------------------------------

def test_missing_idx(tmp_path):
    (tmp_path / "t.rec").write_bytes(encode_record(b"abc"))
    with pytest.raises(DataFileError, match=r"t.idx: index file not found"):
        MXIndexedRecordIO(tmp_path / "t.idx", tmp_path / "t.rec", "r")


def test_missing_rec(tmp_path):
    with pytest.raises(DataFileError, match=r"t.rec: record file not found"):
        MXRecordIO(tmp_path / "t.rec", "r")


def test_truncated_rec(tmp_path):
    idx, rec = write_set(tmp_path, [(0, b"a" * 10), (1, b"b" * 40)])
    data = rec.read_bytes()
    rec.write_bytes(data[:-5])
    r = MXIndexedRecordIO(idx, rec, "r")
    assert r.read_idx(0) == b"a" * 10
    with pytest.raises(DataFileError, match=r"t.rec, record 1: truncated file"):
        r.read_idx(1)
    rec.write_bytes(data[:len(encode_record(b"a" * 10)) + 5])  # frame header cut
    with pytest.raises(DataFileError, match=r"t.rec, record 1: truncated file: a frame header"):
        MXIndexedRecordIO(idx, rec, "r").read_idx(1)


def test_wrong_magic(tmp_path):
    idx, rec = write_set(tmp_path, [(0, b"a" * 10), (7, b"b" * 4)])
    data = bytearray(rec.read_bytes())
    data[20] ^= 0xFF  # the second record's magic (8 + 10 + 2 bytes in)
    rec.write_bytes(bytes(data))
    with pytest.raises(DataFileError, match=r"t.rec, record 7: wrong magic number 0x.*expected 0xCED7230A"):
        MXIndexedRecordIO(idx, rec, "r").read_idx(7)
    with pytest.raises(DataFileError, match=r"t.rec, record at byte 20: wrong magic"):
        seq = MXRecordIO(rec, "r")
        seq.read(), seq.read()


def test_index_past_end(tmp_path):
    idx, rec = write_set(tmp_path, [(0, b"a" * 10), (1, b"b")])
    idx.write_text(idx.read_text() + "2\t4000\n")
    with pytest.raises(DataFileError, match=r"t.rec, record 2: truncated file: the index .*t.idx puts this record at "
                                            r"byte 4000, the file has 32 bytes"):
        MXIndexedRecordIO(idx, rec, "r")


def test_malformed_index_line(tmp_path):
    idx, rec = write_set(tmp_path, [(0, b"a")])
    idx.write_text("0\t0\nnot a line\n")
    with pytest.raises(DataFileError, match=r"t.idx: line 2 'not a line'"):
        MXIndexedRecordIO(idx, rec, "r")


def test_bad_continuation_flag(tmp_path):
    rec = tmp_path / "a.rec"
    rec.write_bytes(M + lrec(2, 0))
    with pytest.raises(DataFileError, match="continuation flag 2"):
        MXRecordIO(rec, "r").read()
