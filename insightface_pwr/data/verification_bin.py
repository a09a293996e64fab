"""InsightFace verification ``.bin`` files, loaded without running code.

A ``.bin`` is a pickle of ``(bins, issame)``: ``bins`` holds ``2 * len(issame)`` encoded images (``bytes``, or in
older files uint8 numpy arrays of the encoded bytes), pair ``i`` being images ``2i`` and ``2i + 1``; ``issame[i]``
says whether the pair shows one person. The loader uses a restricted unpickler that resolves only the numpy
globals an array needs (``ndarray``, ``dtype``, ``_reconstruct``) and ``_codecs.encode`` restricted to
latin-1 text (protocol 2 spells ``bytes`` that way); any other global (``os.system``, ``eval``,
a class) raises :class:`DataFileError` before anything is called. The result's structure and array dtypes are
checked too (no object arrays).
"""
from __future__ import annotations

import io
import os
import pickle
from dataclasses import dataclass
from typing import List, Union

import numpy as np
import torch

from .errors import DataFileError
from .images import decode_image, hflip

__all__ = ["VerificationBin", "load_bin", "decode_bin_images"]

PathLike = Union[str, "os.PathLike[str]"]


def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _latin1_bytes():
    def encode(text: str, encoding: str = "latin1") -> bytes:  # how protocol-2 pickles spell bytes
        if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
            raise pickle.UnpicklingError(f"_codecs.encode called with {type(text).__name__}, {encoding!r}")
        return text.encode("latin1")
    return encode


_ALLOWED = {
    ("_codecs", "encode"): _latin1_bytes,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, path: str, encoding: str):
        super().__init__(file, encoding=encoding)
        self._path = path

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]()
        except KeyError:
            raise DataFileError(self._path, f"the pickle names the global '{module}.{name}'; a verification .bin may "
                                            f"hold only lists, tuples, bools, bytes and numpy arrays (refusing to "
                                            f"load it: it could run code)") from None

    def persistent_load(self, pid):
        raise DataFileError(self._path, "the pickle uses persistent ids; not a verification .bin")


@dataclass
class VerificationBin:
    """A loaded ``.bin``: ``images`` (encoded, ``2 * pairs`` of them) and ``issame`` (bool array, one per pair)."""

    path: str
    images: List[Union[bytes, np.ndarray]]
    issame: np.ndarray

    @property
    def name(self) -> str:
        return os.path.splitext(os.path.basename(self.path))[0]

    @property
    def pairs(self) -> int:
        return len(self.issame)


def load_bin(path: PathLike) -> VerificationBin:
    """Load a verification ``.bin`` safely (see the module docstring); errors raise :class:`DataFileError`."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise DataFileError(path, "verification .bin not found") from None
    obj = None
    for encoding in ("ASCII", "bytes"):  # Python 2 pickles hold str images: retry as bytes, like InsightFace
        try:
            obj = _RestrictedUnpickler(io.BytesIO(data), path, encoding).load()
            break
        except DataFileError:
            raise
        except UnicodeDecodeError:
            continue
        except Exception as e:  # UnpicklingError, EOFError, ValueError, TypeError, ... from a malformed pickle
            raise DataFileError(path, f"not a readable pickle ({type(e).__name__}: {e})") from None
    if obj is None:
        raise DataFileError(path, "the pickle's strings decode neither as ASCII nor as bytes")
    return _check(path, obj)


def _check(path: str, obj: object) -> VerificationBin:
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise DataFileError(path, f"expected a pickled (bins, issame) pair, got {type(obj).__name__}"
                                  f"{' of length %d' % len(obj) if isinstance(obj, (tuple, list)) else ''}")
    bins, issame = obj
    if not isinstance(bins, (list, tuple)):
        raise DataFileError(path, f"bins must be a list of encoded images, got {type(bins).__name__}")
    if isinstance(issame, np.ndarray):
        if issame.dtype.kind not in "bui" or issame.ndim != 1:
            raise DataFileError(path, f"issame must be a 1-D bool array, got dtype {issame.dtype} shape {issame.shape}")
        issame_arr = issame.astype(bool)
    elif isinstance(issame, (list, tuple)) and all(isinstance(v, (bool, int, np.bool_)) for v in issame):
        issame_arr = np.asarray(issame, dtype=bool)
    else:
        raise DataFileError(path, f"issame must be a list of bools, got {type(issame).__name__}")
    if len(bins) != 2 * len(issame_arr):
        raise DataFileError(path, f"{len(bins)} images for {len(issame_arr)} pairs (expected {2 * len(issame_arr)})")
    images: List[Union[bytes, np.ndarray]] = []
    for i, b in enumerate(bins):
        if isinstance(b, (bytes, bytearray)):
            images.append(bytes(b))
        elif isinstance(b, np.ndarray) and b.dtype == np.uint8:
            images.append(b)
        else:
            what = f"array of dtype {b.dtype}" if isinstance(b, np.ndarray) else type(b).__name__
            raise DataFileError(path, f"an image must be encoded bytes or a uint8 array, got {what}", f"image {i}")
    return VerificationBin(path=path, images=images, issame=issame_arr)


def decode_bin_images(vbin: VerificationBin, size: int = 112, flip: bool = False) -> torch.Tensor:
    """All images of a ``.bin`` as an ``N x 3 x size x size`` uint8 tensor (RGB), optionally mirrored.

    Images must already be ``size x size`` (aligned faces); another size raises :class:`DataFileError`.
    """
    out = np.empty((len(vbin.images), 3, size, size), dtype=np.uint8)
    for i, data in enumerate(vbin.images):
        img = decode_image(data, source=vbin.path, record=f"image {i}")
        if img.shape[:2] != (size, size):
            raise DataFileError(vbin.path, f"image is {img.shape[0]}x{img.shape[1]}, expected {size}x{size} aligned "
                                           f"faces", f"image {i}")
        if flip:
            img = hflip(img)
        out[i] = img.transpose(2, 0, 1)
    return torch.from_numpy(out)

