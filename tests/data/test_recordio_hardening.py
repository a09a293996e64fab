"""Crafted or damaged RecordIO sets: header counts, labels against ``property``, missing files and folders,
truncation, and the temporary files of killed writers. Every failure is one DataFileError line naming the file, the
record and the value at fault; the references are the hand-written headers and files of each test."""
import fcntl
import io
import os
import time
import tracemalloc

import pytest
from PIL import Image

from insightface_pwr.data import DataFileError
from insightface_pwr.data.dataset import FaceDataset
from insightface_pwr.data.recordio import IRHeader, MXIndexedRecordIO, MXRecordIO, encode_record, pack
from insightface_pwr.infra import faults


def png(color=(10, 20, 30)):
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), color).save(buf, format="PNG")
    return buf.getvalue()


def insightface_set(folder, labels, header_label=None, prop=None):
    """Records 0 (header), 1..N (images with ``labels``), then identity ranges; optional ``property`` text."""
    folder.mkdir(parents=True, exist_ok=True)
    n, classes = len(labels), len(set(labels))
    header_label = [1 + n, 1 + n + classes] if header_label is None else header_label
    with MXIndexedRecordIO(folder / "train.idx", folder / "train.rec", "w") as w:
        w.write_idx(0, pack(IRHeader(2, header_label, 0, 0), b""))
        for key, label in enumerate(labels, 1):
            w.write_idx(key, pack(IRHeader(0, float(label), key, 0), png()))
        for j in range(classes):
            w.write_idx(1 + n + j, pack(IRHeader(2, [1 + j, 2 + j], 1 + n + j, 0), b""))
    if prop is not None:
        (folder / "property").write_text(prop)
    return folder


# -- item 2: header record 0 ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), 2.5])
def test_header_image_count_not_an_integer(tmp_path, value):
    folder = insightface_set(tmp_path / "s", [0, 1], header_label=[value, 5.0])
    with pytest.raises(DataFileError) as e:
        FaceDataset(folder)
    assert e.value.record == 0 and e.value.path.endswith("train.rec")
    assert str(e.value).startswith(f"{folder / 'train.rec'}, record 0: header image count {value!r}"), str(e.value)


def test_header_image_count_bounded_by_the_index_before_allocating(tmp_path):
    """Keys 0, 1 and 2**25 - 1 in the index (the two ends a count of 2**25 needs) and nothing between: refused
    from the index's size, without allocating 2**25 keys (256 MiB of int64)."""
    folder = insightface_set(tmp_path / "s", [0, 1], header_label=[2.0 ** 25, 2.0 ** 25 + 2])
    lines = (folder / "train.idx").read_text().splitlines()
    (folder / "train.idx").write_text("\n".join(lines[:2] + [f"{2 ** 25 - 1}\t{lines[2].split()[1]}"]) + "\n")
    tracemalloc.start()
    try:
        with pytest.raises(DataFileError, match=r"train.rec, record 0: header says 33554431 images \(keys "
                                                r"1\.\.33554431\) but the index has only 3 records"):
            FaceDataset(folder)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, peak


def test_identity_range_header_not_an_integer(tmp_path):
    ds = FaceDataset(insightface_set(tmp_path / "s", [0, 1], header_label=[3.0, float("nan")]))
    assert len(ds) == 2
    with pytest.raises(DataFileError, match=r"train.rec, record 0: header identity end nan is not"):
        ds.identity_ranges()


# -- item 2: labels against property -------------------------------------------------------------------------------
def test_label_at_or_past_property_classes(tmp_path):
    ds = FaceDataset(insightface_set(tmp_path / "s", [0, 1, 2], prop="2,4,4\n"))
    assert ds.label_of(1) == 1 and int(ds[1][1]) == 1
    for read in (ds.label_of, ds.__getitem__):
        with pytest.raises(DataFileError, match=r"train.rec, record 3: label 2 is not a class of this set: property "
                                                r"says 2 classes \(labels 0\.\.1\)"):
            read(2)


def test_negative_label(tmp_path):
    ds = FaceDataset(insightface_set(tmp_path / "s", [0, -1], prop="2,4,4\n"))
    with pytest.raises(DataFileError, match=r"train.rec, record 2: label -1.0 is not a class index"):
        ds[1]


# -- item 4: missing things ----------------------------------------------------------------------------------------
def test_missing_data_folder(tmp_path):
    for root in (tmp_path / "nope", tmp_path / "nope" / "train.rec"):
        with pytest.raises(DataFileError) as e:
            FaceDataset(root)
        assert str(e.value) == f"{tmp_path / 'nope'}: data folder not found (expected train.rec, train.idx and " \
                               f"property in it)"


def test_missing_idx_names_it(tmp_path):
    folder = insightface_set(tmp_path / "s", [0])
    (folder / "train.idx").unlink()
    with pytest.raises(DataFileError) as e:
        FaceDataset(folder)
    assert str(e.value).startswith(f"{folder / 'train.idx'}: index file not found") and "\n" not in str(e.value)


def test_truncated_rec_names_the_rec_and_record(tmp_path):
    idx, rec = tmp_path / "t.idx", tmp_path / "t.rec"
    with MXIndexedRecordIO(idx, rec, "w") as w:
        w.write_idx(0, b"a" * 10)
        w.write_idx(1, b"b" * 40)
    rec.write_bytes(rec.read_bytes()[:len(encode_record(b"a" * 10))])  # record 1 gone entirely
    with pytest.raises(DataFileError) as e:
        MXIndexedRecordIO(idx, rec, "r")
    assert (e.value.path, e.value.record) == (str(rec), 1)
    assert str(e.value) == f"{rec}, record 1: truncated file: the index {idx} puts this record at byte 20, the " \
                           f"file has 20 bytes (or the index belongs to another file)"


# -- item 2: temporary files of killed writers ---------------------------------------------------------------------
def temps(folder):
    return sorted(p.name for p in folder.iterdir() if ".tmp." in p.name)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_killed_writer_temps_removed_by_next_commit(tmp_path):
    """A writer SIGKILLed before its rename leaves ``.train.rec.tmp.*`` and ``.train.idx.tmp.*``; the next writer of
    the same targets removes them when it commits, and leaves other targets' temporary files alone."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child, killed at the rename of train.rec
        os.environ[faults.ENV] = "kill_in_save:1"
        try:
            with MXIndexedRecordIO(tmp_path / "train.idx", tmp_path / "train.rec", "w") as w:
                w.write_idx(0, b"killed")
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == 9
    left = temps(tmp_path)
    assert [n.rsplit(".", 1)[0] for n in left] == [".train.idx.tmp", ".train.rec.tmp"], left
    (tmp_path / ".other.rec.tmp.abcdef").write_bytes(b"not ours")
    time.sleep(0.02)
    with MXIndexedRecordIO(tmp_path / "train.idx", tmp_path / "train.rec", "w") as w:
        w.write_idx(0, b"fresh")
    assert temps(tmp_path) == [".other.rec.tmp.abcdef"]
    assert MXIndexedRecordIO(tmp_path / "train.idx", tmp_path / "train.rec", "r").read_idx(0) == b"fresh"


def test_live_and_newer_temps_are_kept(tmp_path):
    """Another writer still open on the target (it locks its file), and a temporary file newer than this writer's
    start, are never removed; an old unlocked one is."""
    target = tmp_path / "a.rec"
    stale = tmp_path / ".a.rec.tmp.stale1"
    stale.write_bytes(b"old")
    os.utime(stale, (time.time() - 3600,) * 2)
    live = MXRecordIO(target, "w")
    live.write(b"live writer's data")
    os.utime(live._file.tmp, (time.time() - 3600,) * 2)  # idle for an hour, but its process is alive
    time.sleep(0.02)
    other = MXRecordIO(target, "w")
    newer = tmp_path / ".a.rec.tmp.newer1"
    newer.write_bytes(b"started after the writer")
    other.write(b"second")
    other.close()
    names = temps(tmp_path)
    assert live._file.tmp.name in names and newer.name in names and stale.name not in names, names
    live.close()  # its file survived: the commit works and the target is its data
    assert MXRecordIO(target, "r").read() == b"live writer's data"


def test_temp_file_locked_while_writing(tmp_path):
    """The lock the cleanup relies on: a writer's temporary file cannot be locked by anyone else while it is open."""
    w = MXRecordIO(tmp_path / "a.rec", "w")
    with open(w._file.tmp, "rb") as f:
        with pytest.raises(BlockingIOError):
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    w.close()
    assert temps(tmp_path) == [] and (tmp_path / "a.rec").read_bytes() == b""
