"""InsightFace verification ``.bin`` files, loaded without running code and within the file's size.

A ``.bin`` is a pickle of ``(bins, issame)``: ``bins`` holds ``2 * len(issame)`` encoded images (``bytes``, or in
older files uint8 numpy arrays of the encoded bytes), pair ``i`` being images ``2i`` and ``2i + 1``; ``issame[i]``
says whether the pair shows one person (a list of bools, or an integer/bool array).

The loader never hands attacker-chosen arguments to numpy or to any other real callable:

1. The opcodes are scanned first (``pickletools.genops``, which reads only the bytes present): every declared
   length must fit in the file (the C unpickler would allocate a declared ``BINBYTES8`` length before reading it),
   memo indices must follow the objects memoised so far (a crafted index makes it allocate a table of that many
   slots), and only the opcodes of plain data plus ``GLOBAL``/``REDUCE``/``BUILD`` are allowed (no extension
   codes, persistent ids, buffers or class instantiation).
2. The only globals are the ones real files name, each resolved to a stand-in that checks its arguments against
   the exact pattern numpy and protocol 2 write: ``numpy.core.multiarray._reconstruct(ndarray, (0,), b'b')`` (also
   ``numpy._core``), ``numpy.dtype(spec, False, True)`` for ``spec`` in :data:`ALLOWED_DTYPES` (uint8, plain
   integers, bool), a BUILD on that dtype with numpy's plain state ``(3, order, None, None, None, -1, -1, 0)``,
   a BUILD on the array with ``(1, shape, dtype, is_fortran, data)`` where ``data`` holds exactly the declared
   shape's bytes, and ``_codecs.encode(text, 'latin1')``. ``numpy.ndarray`` is only a marker for ``_reconstruct``.
   Anything else (``os.system``, an object or datetime dtype, another state) raises :class:`DataFileError`.
3. Every decoded buffer (each array, each ``_codecs.encode`` result, each ``bytearray`` turned into ``bytes``) is
   counted before it is made, also when memo references repeat one source; their total may not exceed
   the file's size + 1 MiB (each decoded byte of a real file is backed by a byte of it). Arrays are made with
   ``numpy.frombuffer`` only after the whole pickle is read.

So a load holds at most a few times the file's bytes: the data itself, the decoded buffers (bounded above) and the
unpickler's containers (at most one pointer per opcode byte).
"""
from __future__ import annotations

import io
import os
import pickle
import pickletools
from dataclasses import dataclass
from typing import List, Union

import numpy as np
import torch

from .errors import DataFileError
from .images import decode_image, hflip

__all__ = ["VerificationBin", "load_bin", "decode_bin_images", "ALLOWED_DTYPES"]

PathLike = Union[str, "os.PathLike[str]"]

#: The dtypes a ``.bin`` really holds: uint8 (encoded images) and plain integers and bools (``issame``).
ALLOWED_DTYPES = ("u1", "b1", "i1", "i2", "i4", "i8", "u2", "u4", "u8")

_OPCODES = frozenset("""PROTO FRAME STOP MARK POP POP_MARK DUP NONE NEWTRUE NEWFALSE INT BININT BININT1 BININT2
    LONG LONG1 LONG4 STRING BINSTRING SHORT_BINSTRING BINBYTES SHORT_BINBYTES BINBYTES8 BYTEARRAY8 UNICODE BINUNICODE
    SHORT_BINUNICODE BINUNICODE8 FLOAT BINFLOAT EMPTY_LIST APPEND APPENDS LIST EMPTY_TUPLE TUPLE TUPLE1 TUPLE2
    TUPLE3 EMPTY_DICT DICT SETITEM SETITEMS GLOBAL STACK_GLOBAL REDUCE BUILD PUT BINPUT LONG_BINPUT MEMOIZE GET
    BINGET LONG_BINGET""".split())
_PUTS = frozenset(("PUT", "BINPUT", "LONG_BINPUT"))


def _scan(path: str, data: bytes) -> None:
    """Check the opcode stream before the C unpickler sees it (step 1 of the module docstring)."""
    memoised = 0
    try:
        for op, arg, pos in pickletools.genops(data):
            if op.name not in _OPCODES:
                raise DataFileError(path, f"opcode {op.name} at byte {pos} is not used by a verification .bin (it "
                                          f"holds only lists, tuples, bools, bytes and numpy arrays)")
            if op.name in _PUTS:
                if arg > memoised:
                    raise DataFileError(path, f"memo index {arg} at byte {pos}, but only {memoised} objects are "
                                              f"memoised so far (a pickler numbers them in order)")
                memoised += arg == memoised
            elif op.name == "MEMOIZE":
                memoised += 1
    except DataFileError:
        raise
    except Exception as e:  # ValueError from genops: a length past the end, an unknown opcode, no STOP
        raise DataFileError(path, f"not a readable pickle ({e})") from None


def _text(v: object) -> object:
    """A Python 2 ``str`` read with ``encoding='bytes'`` arrives as bytes: compare it as ASCII text."""
    return v.decode("ascii", "replace") if isinstance(v, bytes) else v


class _Refused(pickle.UnpicklingError):
    """A stand-in refused its arguments or state (reported as a :class:`DataFileError` by :func:`load_bin`)."""


class _Stub:
    """Base of the stand-ins: no BUILD state, and no call unless a subclass defines one."""

    __slots__ = ()

    def __setstate__(self, state):
        raise _Refused(f"a BUILD on {self!r} (only numpy dtypes and arrays take a state)")

    def __call__(self, *args):
        raise _Refused(f"{self!r} is not callable")


class _NDArray(_Stub):
    __slots__ = ()

    def __repr__(self) -> str:
        return "numpy.ndarray"

    def __call__(self, *args):
        raise _Refused("numpy.ndarray is only allowed as the first argument of _reconstruct (the way "
                       "numpy pickles an array); calling it would allocate any declared shape")


_NDARRAY = _NDArray()


class _DType(_Stub):
    """``numpy.dtype(spec, False, True)`` of an allowed spec; its BUILD state must be numpy's plain one."""

    __slots__ = ("dtype", "built")

    def __init__(self, spec: str):
        self.dtype, self.built = np.dtype(spec), False

    def __repr__(self) -> str:
        return f"numpy dtype {self.dtype.str!r}"

    def __setstate__(self, state):
        plain = isinstance(state, tuple) and len(state) == 8 and state == (3, state[1], None, None, None, -1, -1, 0)
        order = _text(state[1]) if plain else None
        one = self.dtype.itemsize == 1
        if order not in (("|", "<", ">", "=") if one else ("<", ">", "=")):
            raise _Refused(f"dtype state {state!r:.200} for {self.dtype.str[1:]!r} is not numpy's plain "
                           f"state (3, '{'|' if one else '<'}', None, None, None, -1, -1, 0)")
        self.dtype = self.dtype.newbyteorder(order if order in "<>" else "=")
        self.built = True


class _Array(_Stub):
    """An array announced by ``_reconstruct``; its BUILD state gives shape, dtype and exactly that many bytes."""

    __slots__ = ("loader", "shape", "dtype", "order", "data", "array")

    def __init__(self, loader: "_Loader"):
        self.loader, self.data, self.array = loader, None, None

    def __repr__(self) -> str:
        return "numpy array" if self.data is None else f"numpy array {self.shape} {self.dtype.str!r}"

    def __setstate__(self, state):
        if self.data is not None:
            raise _Refused("a second BUILD on one numpy array")
        if not isinstance(state, tuple) or len(state) not in (4, 5) or len(state) == 5 and state[0] != 1:
            raise _Refused(f"array state {state!r:.200} is not numpy's (1, shape, dtype, is_fortran, "
                           f"data)")
        shape, dtype, fortran, data = state[-4:]
        if not (isinstance(shape, tuple) and len(shape) <= 32 and all(type(s) is int and s >= 0 for s in shape)):
            raise _Refused(f"array shape {shape!r:.200} is not a tuple of non-negative ints")
        if not (isinstance(dtype, _DType) and dtype.built):
            raise _Refused(f"array dtype {dtype!r:.100} is not an allowed numpy dtype with its state")
        if fortran not in (True, False):
            raise _Refused(f"array is_fortran {fortran!r:.100} is not a bool")
        if isinstance(data, str):  # a Python 2 str read as text: numpy reads it as latin-1 bytes
            self.loader.charge(len(data), "an array's text data as bytes")
            data = data.encode("latin1")
        if not isinstance(data, (bytes, bytearray)):
            raise _Refused(f"array data is {type(data).__name__}, expected bytes")
        nbytes = dtype.dtype.itemsize
        for s in shape:
            nbytes *= s
        if nbytes != len(data):
            raise _Refused(f"array of shape {shape} and dtype {dtype.dtype.str!r} needs {nbytes} bytes, "
                           f"its state holds {len(data)}")
        self.loader.charge(nbytes, f"an array of shape {shape}")
        self.shape, self.dtype, self.order, self.data = shape, dtype.dtype, "F" if fortran else "C", data

    def materialise(self) -> np.ndarray:
        if self.array is None:
            flat = np.frombuffer(self.data, dtype=self.dtype)
            self.array = flat.reshape(self.shape, order=self.order).copy(order="A")
            self.data = b""
        return self.array


class _Loader:
    """One unpickling attempt: the path, the decoded-bytes budget and the stand-ins bound to them."""

    def __init__(self, path: str, size: int):
        self.path, self.budget, self.used = path, size + (1 << 20), 0

    def charge(self, n: int, what: str) -> None:
        self.used += n
        if self.used > self.budget:
            raise DataFileError(self.path, f"decoded data exceed {self.budget} bytes (the file's size + 1 MiB) at "
                                           f"{what} of {n} bytes: memo references repeat a big object, or a declared "
                                           f"size is not backed by the file")

    def find_class(self, module: str, name: str) -> object:
        if (module, name) == ("_codecs", "encode"):
            return _Callable(self._encode)
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "_reconstruct":
            return _Callable(self._reconstruct)
        if (module, name) == ("numpy", "ndarray"):
            return _NDARRAY
        if (module, name) == ("numpy", "dtype"):
            return _Callable(self._dtype)
        raise DataFileError(self.path, f"the pickle names the global '{module}.{name}'; a verification .bin may hold "
                                       f"only lists, tuples, bools, bytes and numpy arrays (refusing to load it: it "
                                       f"could run code)")

    def _encode(self, text=None, encoding="latin1", *rest) -> bytes:  # how protocol-2 pickles spell bytes
        if rest or not isinstance(text, str) or _text(encoding) not in ("latin1", "latin-1"):
            raise _Refused(f"_codecs.encode called with {type(text).__name__}, {encoding!r:.40}; "
                           f"expected (text, 'latin1')")
        self.charge(len(text), "a _codecs.encode result")
        return text.encode("latin1")

    def _reconstruct(self, *args) -> _Array:
        if len(args) != 3 or args[0] is not _NDARRAY or args[1] != (0,) or _text(args[2]) != "b":
            shown = ", ".join(f"{a!r:.60}" for a in args)
            raise DataFileError(self.path, f"_reconstruct({shown}) is not how numpy pickles an array (it writes "
                                           f"_reconstruct(ndarray, (0,), b'b') and sets shape and data by BUILD)")
        return _Array(self)

    def _dtype(self, *args) -> _DType:
        spec = _text(args[0]) if args else None
        if spec not in ALLOWED_DTYPES:
            raise DataFileError(self.path, f"dtype {spec!r:.60} is not allowed: a verification .bin holds only "
                                           f"{', '.join(ALLOWED_DTYPES)} arrays (encoded images and pair flags)")
        if len(args) != 3 or args[1] not in (False, 0) or args[2] not in (True, False, 0, 1):
            raise DataFileError(self.path, f"numpy.dtype{args!r:.100} is not how numpy pickles a dtype "
                                           f"(dtype(spec, False, True))")
        return _DType(spec)


class _Callable(_Stub):
    __slots__ = ("fn",)

    def __init__(self, fn):
        self.fn = fn

    def __repr__(self) -> str:
        return self.fn.__name__.lstrip("_")

    def __call__(self, *args):
        return self.fn(*args)


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, loader: _Loader, encoding: str):
        super().__init__(file, encoding=encoding)
        self._loader = loader

    def find_class(self, module: str, name: str):
        return self._loader.find_class(module, name)

    def persistent_load(self, pid):
        raise DataFileError(self._loader.path, "the pickle uses persistent ids; not a verification .bin")


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
    _scan(path, data)
    for encoding in ("ASCII", "bytes"):  # Python 2 pickles hold str images: retry as bytes, like InsightFace
        loader = _Loader(path, len(data))
        try:
            obj = _RestrictedUnpickler(io.BytesIO(data), loader, encoding).load()
        except DataFileError:
            raise
        except _Refused as e:
            raise DataFileError(path, f"refusing the pickle: {e}") from None
        except UnicodeDecodeError:
            continue
        except Exception as e:  # UnpicklingError, EOFError, ValueError, TypeError, ... from a malformed pickle
            raise DataFileError(path, f"not a readable pickle ({type(e).__name__}: {e})") from None
        return _check(path, obj, loader)
    raise DataFileError(path, "the pickle's strings decode neither as ASCII nor as bytes")


def _what(v: object) -> str:
    if isinstance(v, np.ndarray):
        return f"array of dtype {v.dtype}"
    if isinstance(v, _Array):
        return "numpy array without its data (no BUILD)" if v.data is None else f"array of dtype {v.dtype}"
    return repr(v) if isinstance(v, _Stub) else type(v).__name__


def _check(path: str, obj: object, loader: _Loader) -> VerificationBin:
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise DataFileError(path, f"expected a pickled (bins, issame) pair, got {_what(obj)}"
                                  f"{' of length %d' % len(obj) if isinstance(obj, (tuple, list)) else ''}")
    bins, issame = obj
    if not isinstance(bins, (list, tuple)):
        raise DataFileError(path, f"bins must be a list of encoded images, got {_what(bins)}")
    if isinstance(issame, _Array) and issame.data is not None:
        if issame.dtype.kind not in "bui" or len(issame.shape) != 1:
            raise DataFileError(path, f"issame must be a 1-D bool array, got dtype {issame.dtype} shape "
                                      f"{issame.shape}")
        issame_arr = issame.materialise().astype(bool)
    elif isinstance(issame, (list, tuple)) and all(type(v) in (bool, int) for v in issame):
        issame_arr = np.asarray(issame, dtype=bool)
    else:
        raise DataFileError(path, f"issame must be a list of bools, got {_what(issame)}")
    if len(bins) != 2 * len(issame_arr):
        raise DataFileError(path, f"{len(bins)} images for {len(issame_arr)} pairs (expected {2 * len(issame_arr)})")
    images: List[Union[bytes, np.ndarray]] = []
    for i, b in enumerate(bins):
        if type(b) is bytes:
            images.append(b)
        elif isinstance(b, bytearray):
            loader.charge(len(b), f"image {i} (a bytearray) as bytes")
            images.append(bytes(b))
        elif isinstance(b, _Array) and b.data is not None and b.dtype == np.uint8:
            images.append(b.materialise())
        else:
            raise DataFileError(path, f"an image must be encoded bytes or a uint8 array, got {_what(b)}", f"image {i}")
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

