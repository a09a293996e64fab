"""The face dataset and the folder -> RecordIO builder.

References: the MXNet manifest (labels, identity ranges), Pillow decoding the payload directly (pixels), and the
shared LFW files themselves (a rebuild from their extracted JPEGs must give the very same bytes)."""
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from insightface_pwr.cli import main
from insightface_pwr.data import DataFileError
from insightface_pwr.data.build import build_recordio
from insightface_pwr.data.dataset import FaceDataset, read_property
from insightface_pwr.data.recordio import IRHeader, MXIndexedRecordIO, pack, unpack

MANIFEST = Path(__file__).parent / "mxnet_compat" / "lfw_train_manifest.json"


@pytest.fixture(scope="module")
def manifest():
    return json.loads(MANIFEST.read_text())


def test_lfw_dataset(lfw_train, manifest):
    ds = FaceDataset(lfw_train)
    assert len(ds) == 9402 and ds.num_classes == 5090 and ds.property == (5090, 112, 112)
    records = manifest["records"]
    assert [ds.label_of(i) for i in range(0, 9402, 97)] == [int(records[1 + i][2]) for i in range(0, 9402, 97)]
    assert ds.identity_ranges() == [tuple(int(v) for v in r[2]) for r in records[9403:]]
    for i in (0, 4321, 9401):
        image, label = ds[i]
        _, payload = unpack(ds.reader.read_idx(i + 1))
        ref = np.asarray(Image.open(io.BytesIO(payload)).convert("RGB"), dtype=np.float64)
        assert image.dtype == torch.float32 and image.shape == (3, 112, 112) and label.dtype == torch.long
        np.testing.assert_allclose(image.numpy().transpose(1, 2, 0), (ref / 255 - 0.5) / 0.5, atol=1e-6)
        assert int(label) == int(records[1 + i][2])


def test_random_flip_and_meta(lfw_train):
    ds = FaceDataset(lfw_train, random_flip=True, return_meta=True)
    plain = FaceDataset(lfw_train)
    torch.manual_seed(0)
    flips = []
    for i in range(40):
        image, label, key, flipped = ds[i]
        assert key == i + 1
        ref = plain[i][0]
        assert torch.equal(image, torch.flip(ref, dims=[2]) if flipped else ref)
        flips.append(flipped)
    assert 8 < sum(flips) < 32


def test_dataloader_workers(lfw_train):
    loader = torch.utils.data.DataLoader(FaceDataset(lfw_train), batch_size=4, num_workers=1)
    images, labels = next(iter(loader))
    assert images.shape == (4, 3, 112, 112) and labels.tolist() == [0, 1, 2, 3]


def png(color, size=(8, 6)):
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def test_plain_files_and_bad_image(tmp_path):
    with MXIndexedRecordIO(tmp_path / "train.idx", tmp_path / "train.rec", "w") as w:
        w.write_idx(5, pack(IRHeader(0, 3.0, 5, 0), png((255, 0, 0))))
        w.write_idx(9, pack(IRHeader(0, 1.0, 9, 0), png((0, 0, 255))))
        w.write_idx(11, pack(IRHeader(0, 2.0, 11, 0), b"garbage"))
    ds = FaceDataset(tmp_path / "train.rec", return_meta=True)
    assert len(ds) == 3 and ds.property is None
    image, label, key, flipped = ds[1]
    assert (int(label), key, flipped) == (1, 9, False) and image.shape == (3, 6, 8)
    assert image[2].eq(1.0).all() and image[0].eq(-1.0).all()
    with pytest.raises(DataFileError, match=r"train.rec, record 11: image does not decode"):
        ds[2]


def test_bad_property(tmp_path):
    (tmp_path / "property").write_text("12,112")
    with pytest.raises(DataFileError, match=r"property: expected 'classes,height,width'"):
        read_property(tmp_path / "property")


def test_build_from_folder(tmp_path):
    root = tmp_path / "faces"
    for name, colors in {"bob": [(1, 2, 3), (4, 5, 6)], "alice": [(7, 8, 9)], "carol": [(9, 9, 9)] * 3}.items():
        (root / name).mkdir(parents=True)
        for j, c in enumerate(colors):
            (root / name / f"{j}.png").write_bytes(png(c))
    (root / "bob" / "notes.txt").write_text("ignored")
    assert main(["build-rec", str(root), str(tmp_path / "out"), "--no-progress"]) == 0
    r = MXIndexedRecordIO(tmp_path / "out" / "train.idx", tmp_path / "out" / "train.rec", "r")
    assert r.keys == list(range(10))
    h0, p0 = unpack(r.read_idx(0))
    assert (h0.flag, list(h0.label), h0.id, p0) == (2, [7.0, 10.0], 0, b"")
    # classes in sorted folder order: alice 0, bob 1, carol 2
    assert [unpack(r.read_idx(k))[0].label for k in range(1, 7)] == [0.0, 1.0, 1.0, 2.0, 2.0, 2.0]
    assert unpack(r.read_idx(2))[1] == (root / "bob" / "0.png").read_bytes()
    assert [list(unpack(r.read_idx(k))[0].label) for k in (7, 8, 9)] == [[1, 2], [2, 4], [4, 7]]
    assert (tmp_path / "out" / "property").read_text() == "3,6,8\n"
    assert FaceDataset(tmp_path / "out").identity_ranges() == [(1, 2), (2, 4), (4, 7)]


def test_build_errors(tmp_path):
    (tmp_path / "a").mkdir()
    with pytest.raises(DataFileError, match=r"a: identity folder has no images"):
        build_recordio(tmp_path, tmp_path / "out", progress=False)
    (tmp_path / "a" / "x.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataFileError, match=r"x.jpg: image does not decode"):
        build_recordio(tmp_path, tmp_path / "out", progress=False)


def test_rebuild_lfw_is_byte_identical(lfw_train, tmp_path):
    """Extract the JPEGs of the shared set's first 400 identities to <identity>/<key>.jpg and rebuild: the image
    records and their index lines are the very bytes MXNet wrote (the header record has the same size, so the
    offsets agree too), and the identity ranges are the original ones."""
    src = MXIndexedRecordIO(lfw_train / "train.idx", lfw_train / "train.rec", "r")
    root = tmp_path / "images"
    key = 1
    while True:
        header, payload = unpack(src.read_idx(key))
        if header.label >= 400:
            break
        folder = root / f"{int(header.label):05d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{key:05d}.jpg").write_bytes(payload)
        key += 1
    n = key - 1
    counts = build_recordio(root, tmp_path / "out", progress=False)
    assert counts == {"images": n, "identities": 400, "height": 112, "width": 112}
    ours = MXIndexedRecordIO(tmp_path / "out" / "train.idx", tmp_path / "out" / "train.rec", "r")
    start, end = src.idx[1], src.idx[n + 1]
    assert (ours.idx[1], ours.idx[n + 1]) == (start, end)
    original = (lfw_train / "train.rec").read_bytes()[start:end]
    assert (tmp_path / "out" / "train.rec").read_bytes()[start:end] == original
    lines = (lfw_train / "train.idx").read_text().splitlines()[1:n + 1]
    assert (tmp_path / "out" / "train.idx").read_text().splitlines()[1:n + 1] == lines
    ranges = [tuple(int(v) for v in unpack(src.read_idx(k))[0].label) for k in range(9403, 9403 + 400)]
    assert FaceDataset(tmp_path / "out").identity_ranges() == ranges
