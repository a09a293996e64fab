"""build-rec refuses what training would only find later (a truncated JPEG), skips hidden folders and files (they
must not become identities or images), and names an identity folder without images. References: the class order
and bytes written, read back with the RecordIO reader, and Pillow's own decode of the files."""
import io

import numpy as np
import pytest
from PIL import Image

from insightface_pwr.cli import main
from insightface_pwr.data import DataFileError
from insightface_pwr.data.build import build_recordio
from insightface_pwr.data.recordio import MXIndexedRecordIO, unpack


def jpeg(seed, size=(16, 16)):
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_truncated_jpeg_is_refused(tmp_path):
    good, cut = jpeg(0), jpeg(1)[:-200]
    with pytest.raises(OSError):  # the reference: Pillow itself cannot decode it fully
        Image.open(io.BytesIO(cut)).load()
    for name, data in {"a/0.jpg": good, "b/0.jpg": good, "b/1.jpg": cut}.items():
        (tmp_path / "in" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / name).write_bytes(data)
    with pytest.raises(DataFileError) as e:
        build_recordio(tmp_path / "in", tmp_path / "out", progress=False)
    assert str(e.value).startswith(f"{tmp_path / 'in' / 'b' / '1.jpg'}: image does not decode")
    assert e.value.record is None
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out" / "train.rec").exists() and not list((tmp_path / "out").glob(".*.tmp.*"))


def test_hidden_folders_and_files_are_skipped(tmp_path):
    root = tmp_path / "in"
    files = {".ipynb_checkpoints/0.jpg": jpeg(9), "alice/0.jpg": jpeg(1), "alice/._0.jpg": b"AppleDouble junk",
             "bob/0.jpg": jpeg(2), "bob/1.jpg": jpeg(3), "bob/.hidden.jpg": jpeg(4)}
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    assert main(["build-rec", str(root), str(tmp_path / "out"), "--no-progress"]) == 0
    r = MXIndexedRecordIO(tmp_path / "out" / "train.idx", tmp_path / "out" / "train.rec", "r")
    assert r.keys == list(range(6))  # header, 3 images, 2 identities
    records = [unpack(r.read_idx(k)) for k in (1, 2, 3)]
    assert [h.label for h, _ in records] == [0.0, 1.0, 1.0]  # alice 0, bob 1: no class for the hidden folder
    assert [p for _, p in records] == [files["alice/0.jpg"], files["bob/0.jpg"], files["bob/1.jpg"]]
    assert (tmp_path / "out" / "property").read_text() == "2,16,16\n"


def test_folder_without_images_is_named(tmp_path):
    root = tmp_path / "in"
    (root / "alice").mkdir(parents=True)
    (root / "alice" / "0.jpg").write_bytes(jpeg(1))
    (root / "carol").mkdir()
    (root / "carol" / ".hidden.jpg").write_bytes(jpeg(2))  # only a hidden file: no images
    with pytest.raises(DataFileError) as e:
        build_recordio(root, tmp_path / "out", progress=False)
    assert str(e.value) == f"{root / 'carol'}: identity folder has no images (files ending .jpg, .jpeg, .png, .bmp " \
                           f"or .webp; hidden files are skipped)"
    (root / "carol" / ".hidden.jpg").unlink()
    with pytest.raises(DataFileError, match=r"carol: identity folder has no images"):
        build_recordio(root, tmp_path / "out", progress=False)
