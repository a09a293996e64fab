"""Verification .bin loading: both formats match a trusted pickle.load of the shared files; unsafe or malformed
files raise DataFileError naming the file (and the image)."""
import io
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from insightface_pwr.data import DataFileError
from insightface_pwr.data.verification_bin import decode_bin_images, load_bin


def trusted_load(path):
    with open(path, "rb") as f:  # the shared kit's own files: trusted, only to build the reference
        return pickle.load(f)


def test_bytes_bin_matches_pickle(shared):
    path = shared / "data" / "lfw" / "lfw_dev.bin"
    b = load_bin(path)
    bins, issame = trusted_load(path)
    assert b.pairs == 2830 == len(issame) and int(b.issame.sum()) == 1415
    assert b.images == bins and b.issame.tolist() == issame and b.name == "lfw_dev"


def test_ndarray_bin_matches_pickle(shared):
    path = shared / "data" / "insightface_small_lfw.bin"
    b = load_bin(path)
    bins, issame = trusted_load(path)
    assert b.pairs == 10 and b.issame.all()
    for got, want in zip(b.images, bins):
        np.testing.assert_array_equal(got, want)
    imgs = decode_bin_images(b)
    ref = np.asarray(Image.open(io.BytesIO(bins[3].tobytes())).convert("RGB"))
    assert imgs.shape == (20, 3, 112, 112)
    np.testing.assert_array_equal(imgs[3].numpy().transpose(1, 2, 0), ref)
    np.testing.assert_array_equal(decode_bin_images(b, flip=True)[3].numpy(), imgs[3].numpy()[:, :, ::-1])


class Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_code_running_pickle_is_refused(tmp_path):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(([Evil(target)], [True])))
    with pytest.raises(DataFileError, match=r"evil.bin: the pickle names the global '(posix|os)\.system'"):
        load_bin(path)
    assert not target.exists()


@pytest.mark.parametrize("obj, message", [
    ({"bins": []}, "expected a pickled \\(bins, issame\\) pair"),
    (([b"a"], [True]), "1 images for 1 pairs"),
    (([b"a", 3], [True]), "record image 1: an image must be encoded bytes"),
    (([np.array([b"a"], dtype=object), b"b"], [True]), "dtype 'O8' is not allowed"),
    (([np.array([1, 2], dtype=np.int16), b"b"], [True]), "record image 0: an image must be encoded bytes or a uint8 "
                                                          "array, got array of dtype int16"),
    (([b"a", b"b"], ["yes"]), "issame must be a list of bools"),
])
def test_malformed_structure(tmp_path, obj, message):
    path = tmp_path / "bad.bin"
    path.write_bytes(pickle.dumps(obj, protocol=2))
    with pytest.raises(DataFileError, match=message):
        load_bin(path)


def test_truncated_and_missing(tmp_path):
    path = tmp_path / "cut.bin"
    path.write_bytes(pickle.dumps(([b"a", b"b"], [True]))[:-3])
    with pytest.raises(DataFileError, match="cut.bin: not a readable pickle"):
        load_bin(path)
    with pytest.raises(DataFileError, match="nope.bin: verification .bin not found"):
        load_bin(tmp_path / "nope.bin")


def test_image_that_does_not_decode(tmp_path):
    good = io.BytesIO()
    Image.new("RGB", (112, 112), (10, 20, 30)).save(good, format="PNG")
    path = tmp_path / "img.bin"
    path.write_bytes(pickle.dumps(([good.getvalue(), b"\xff\xd8 not a jpeg"], [False])))
    b = load_bin(path)
    with pytest.raises(DataFileError, match=r"img.bin, record image 1: image does not decode"):
        decode_bin_images(b)
    small = io.BytesIO()
    Image.new("L", (50, 60)).save(small, format="PNG")
    b.images[1] = small.getvalue()
    with pytest.raises(DataFileError, match=r"record image 1: image is 60x50, expected 112x112"):
        decode_bin_images(b)
