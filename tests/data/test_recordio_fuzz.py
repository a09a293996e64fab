"""Fuzzing the readers: whatever the bytes of the .rec, the .idx, a record or an image payload, the data layer
returns data or raises DataFileError - nothing else escapes."""
import io

from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from insightface_pwr.data import DataFileError
from insightface_pwr.data.images import decode_image
from insightface_pwr.data.recordio import MXIndexedRecordIO, MXRecordIO, encode_record, unpack

M = bytes.fromhex("0a23d7ce")
SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def valid_file():
    payloads = [b"hello", b"", b"ABCD" + M + b"efgh" + M, b"x" * 37, M * 3]
    data, offsets = b"", []
    for p in payloads:
        offsets.append(len(data))
        data += encode_record(p)
    return data, offsets


def read_everything(tmp_path, rec: bytes, idx_text: str):
    (tmp_path / "f.rec").write_bytes(rec)
    (tmp_path / "f.idx").write_text(idx_text)
    try:
        reader = MXIndexedRecordIO(tmp_path / "f.idx", tmp_path / "f.rec", "r")
    except DataFileError:
        pass
    else:
        for key in reader.keys:
            try:
                record = reader.read_idx(key)
                assert isinstance(record, bytes)
                try:
                    unpack(record)
                except DataFileError:
                    pass
            except DataFileError as e:
                assert str(tmp_path / "f.rec") in str(e) and e.record == key
        reader.close()
    seq = MXRecordIO(tmp_path / "f.rec", "r")
    for _ in range(len(rec) // 8 + 2):
        try:
            if seq.read() is None:
                break
        except DataFileError:
            break


@SETTINGS
@given(st.binary(max_size=200), st.lists(st.integers(-5, 260), max_size=6))
def test_random_bytes(tmp_path, rec, offsets):
    read_everything(tmp_path, rec, "".join(f"{i}\t{o}\n" for i, o in enumerate(offsets)))


@SETTINGS
@given(st.data())
def test_mutated_valid_file(tmp_path, data):
    rec, offsets = valid_file()
    rec = bytearray(rec)
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
        pos = data.draw(st.integers(0, max(len(rec) - 1, 0)))
        if kind == "flip" and rec:
            rec[pos] ^= data.draw(st.integers(1, 255))
        elif kind == "truncate":
            del rec[pos:]
        elif kind == "insert":
            rec[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
        elif rec:
            del rec[pos:pos + data.draw(st.integers(1, 8))]
    read_everything(tmp_path, bytes(rec), "".join(f"{i}\t{o}\n" for i, o in enumerate(offsets)))


@SETTINGS
@given(st.text(max_size=80))
def test_random_index_text(tmp_path, text):
    rec, _ = valid_file()
    read_everything(tmp_path, rec, text)


@SETTINGS
@given(st.binary(max_size=120))
def test_unpack_random(record):
    try:
        header, rest = unpack(record)
        assert isinstance(rest, bytes)
    except DataFileError:
        pass


def jpeg():
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 60)).save(buf, format="JPEG")
    return buf.getvalue()


JPEG = jpeg()


@SETTINGS
@given(st.data())
def test_decode_mutated_image(data):
    blob = bytearray(JPEG)
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(0, len(blob) - 1))
        if data.draw(st.booleans()):
            blob[pos] ^= data.draw(st.integers(1, 255))
        else:
            del blob[pos:]
            if not blob:
                break
    try:
        image = decode_image(bytes(blob), source="x.rec", record=3)
        assert image.ndim == 3 and image.shape[2] == 3
    except DataFileError as e:
        assert e.path == "x.rec" and e.record == 3
