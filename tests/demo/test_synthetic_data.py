"""The demo's synthetic faces and their InsightFace files, read back through the data layer's readers."""
import pickle

import numpy as np
import pytest

from insightface_pwr.data.dataset import FaceDataset, read_property
from insightface_pwr.data.images import decode_image
from insightface_pwr.data.recordio import MXIndexedRecordIO, unpack
from insightface_pwr.data.verification_bin import decode_bin_images, load_bin
from insightface_pwr.demo.dataset import identity_images, write_identity_recordio, write_verification_bin
from insightface_pwr.demo.faces import make_identity, render_face


def test_identities_are_deterministic_and_distinct():
    assert make_identity(0, 3) == make_identity(0, 3)
    assert make_identity(0, 3) != make_identity(0, 4) and make_identity(0, 3) != make_identity(1, 3)
    a = identity_images(0, 3, 2, 32)
    b = identity_images(0, 3, 2, 32)
    assert a[0].shape == (32, 32, 3) and a[0].dtype == np.uint8
    assert all(np.array_equal(x, y) for x, y in zip(a, b))      # same seed, same pixels
    assert not np.array_equal(a[0], a[1])                        # per-image nuisance


def test_identity_is_learnable_but_not_trivial():
    """Nearest-class-mean on raw pixels (a hand-written classifier): far above chance, far from perfect."""
    ids, train, test = range(12), 10, 10
    means = np.stack([np.mean([im.astype(np.float64) for im in identity_images(0, i, train, 32)], axis=0)
                      for i in ids])
    correct = 0
    for i in ids:
        rng = np.random.default_rng((7, i))
        for _ in range(test):
            x = render_face(make_identity(0, i), rng, 32).astype(np.float64)
            correct += int(np.argmin(((means - x) ** 2).sum(axis=(1, 2, 3))) == i)
    accuracy = correct / (len(ids) * test)
    assert 2 / len(ids) < accuracy < 0.95, accuracy


def test_recordio_in_insightface_layout(tmp_path):
    c, n = write_identity_recordio(tmp_path, [5, 9, 2], 4, 32, seed=0, progress=False)
    assert (c, n) == (3, 12)
    assert read_property(tmp_path / "property") == (3, 32, 32)
    with MXIndexedRecordIO(str(tmp_path / "train.idx"), str(tmp_path / "train.rec"), "r") as rec:
        header, payload = unpack(rec.read_idx(0))
        assert header.flag == 2 and list(header.label) == [13.0, 16.0] and payload == b""
        h5, img = unpack(rec.read_idx(5))  # key 5 = the 1st image of the 2nd identity (keys 1..4 the first)
        assert h5.flag == 0 and h5.label == 1.0
        assert np.abs(decode_image(img).astype(int) - identity_images(0, 9, 4, 32)[0]).mean() < 6  # JPEG q95
        assert [tuple(unpack(rec.read_idx(k))[0].label) for k in (13, 14, 15)] == [(1, 5), (5, 9), (9, 13)]
    ds = FaceDataset(tmp_path)
    assert len(ds) == 12 and ds.identity_ranges() == [(1, 5), (5, 9), (9, 13)]
    assert [ds.label_of(i) for i in range(12)] == [0] * 4 + [1] * 4 + [2] * 4
    image, label = ds[11]
    assert tuple(image.shape) == (3, 32, 32) and int(label) == 2 and -1 <= float(image.min()) <= float(image.max()) <= 1


def test_verification_bin_in_insightface_format(tmp_path):
    path = tmp_path / "v.bin"
    write_verification_bin(path, [100, 101, 102, 103], pairs=10, size=32, seed=0, progress=False)
    with open(path, "rb") as f:  # our own file, written just now: plain pickle to check its raw structure
        bins, issame = pickle.load(f)
    assert isinstance(bins, list) and all(isinstance(b, bytes) for b in bins) and len(bins) == 20
    assert issame == [True, False] * 5
    vbin = load_bin(path)  # the data layer's restricted loader
    assert vbin.pairs == 10 and list(vbin.issame) == issame
    images = decode_bin_images(vbin, 32)
    assert tuple(images.shape) == (20, 3, 32, 32)
    with pytest.raises(ValueError, match="needs >= 2 identities"):
        write_verification_bin(tmp_path / "w.bin", [1], pairs=10, size=32, seed=0, progress=False)
