"""Hostile verification .bin files that name only the globals a real .bin uses (numpy's ``_reconstruct``,
``ndarray``, ``dtype``, ``_codecs.encode``): none may crash the interpreter, run code or allocate more than a small
multiple of the file's size. Each file is loaded in a forked child under tracemalloc, so a segfault fails the test
instead of killing pytest, and the child's allocation peak is measured alone.

The pickles are written opcode by opcode (``pickle``'s own opcode constants), so they are exactly the bytes an
attacker would write; the reference for "safe" is the file size (every allocation must be backed by bytes in it).
"""
import json
import os
import pickle as P
import signal
import struct
import traceback
import tracemalloc

import numpy as np
import pytest

from insightface_pwr.data import DataFileError
from insightface_pwr.data.verification_bin import load_bin

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork to isolate crashing loads")

MB = 1 << 20


# -- opcode writers ---------------------------------------------------------------------------------------------
def proto(n):
    return P.PROTO + bytes([n])


def glob(module, name):
    return P.GLOBAL + f"{module}\n{name}\n".encode()


def text(s):
    b = s.encode("utf-8")
    return P.BINUNICODE + struct.pack("<I", len(b)) + b


def raw(b, protocol):
    """Bytes as each protocol spells them (protocol 2: ``_codecs.encode(text, 'latin1')``)."""
    if protocol == 2:
        return glob("_codecs", "encode") + text(b.decode("latin1")) + text("latin1") + P.TUPLE2 + P.REDUCE
    return P.BINBYTES + struct.pack("<I", len(b)) + b


def integer(v):
    return P.BININT + struct.pack("<i", v) if -2 ** 31 <= v < 2 ** 31 else P.LONG1 + bytes([8]) + struct.pack("<q", v)


def put(i):
    return P.LONG_BINPUT + struct.pack("<I", i)


def get(i):
    return P.LONG_BINGET + struct.pack("<I", i)


def dtype(spec):
    return glob("numpy", "dtype") + text(spec) + P.NEWFALSE + P.NEWTRUE + P.TUPLE3 + P.REDUCE


def built_dtype(spec, order="|"):
    return dtype(spec) + P.MARK + integer(3) + text(order) + P.NONE * 3 + integer(-1) * 2 + integer(0) + P.TUPLE \
        + P.BUILD


def reconstruct(shape=(0,), protocol=3):
    shp = P.MARK + b"".join(integer(s) for s in shape) + P.TUPLE
    return glob("numpy.core.multiarray", "_reconstruct") + glob("numpy", "ndarray") + shp + raw(b"b", protocol) \
        + P.TUPLE3 + P.REDUCE


def as_bin(protocol, images_ops, n_images=2):
    """``([images...], [True] * (n_images // 2))`` around the opcodes that push the images."""
    return proto(protocol) + P.EMPTY_LIST + P.MARK + images_ops + P.APPENDS + P.EMPTY_LIST + P.MARK \
        + P.NEWTRUE * (n_images // 2) + P.APPENDS + P.TUPLE2 + P.STOP


# -- the hostile files ------------------------------------------------------------------------------------------
def segv_dtype_build(protocol):
    """BUILD state on a datetime dtype whose sub-array is an object dtype: numpy's dtype.__setstate__ crashes."""
    state = P.MARK + integer(3) + text("<") + dtype("O") + P.MARK + integer(2) + P.TUPLE + P.TUPLE2 + P.NONE * 2 \
        + integer(8) * 2 + integer(0) + P.TUPLE
    return as_bin(protocol, dtype("M8[D]") + state + P.BUILD + P.DUP)


def segv_object_array(protocol):
    """``_reconstruct`` + an object-dtype ndarray state whose list is shorter than its shape: numpy crashes."""
    state = P.MARK + integer(1) + P.MARK + integer(4) + P.TUPLE + dtype("O") + P.NEWFALSE + P.EMPTY_LIST \
        + integer(1) + P.APPEND + P.TUPLE
    return as_bin(protocol, reconstruct(protocol=protocol) + state + P.BUILD + P.DUP)


def declared_shape(protocol, n=3_000_000_000):
    """An array of declared shape (3e9,) from ``_reconstruct`` alone (no data at all)."""
    return as_bin(protocol, reconstruct((n,), protocol) + P.DUP)


def ndarray_called(protocol, n=3_000_000_000):
    """``numpy.ndarray((3e9,), 'u1')`` called by REDUCE: an uninitialised 3 GB uint8 'image'."""
    return as_bin(protocol, glob("numpy", "ndarray") + P.MARK + integer(n) + P.TUPLE + text("u1") + P.TUPLE2
                  + P.REDUCE + P.DUP)


def memo_arrays(protocol, size=MB, copies=64):
    """One ``size``-byte buffer memoised once, then BUILT into ``copies`` big-endian uint16 arrays (numpy byte-swaps,
    so copies, the buffer each time)."""
    head = raw(b"\x01" * size, protocol) + put(0) + built_dtype("u2", ">") + put(1)
    one = reconstruct(protocol=protocol) + P.MARK + integer(1) + P.MARK + integer(size // 2) + P.TUPLE + get(1) \
        + P.NEWFALSE + get(0) + P.TUPLE + P.BUILD
    return as_bin(protocol, head + P.POP + P.POP + one * copies, copies)


def memo_text(protocol, size=MB, copies=64):
    """One ``size``-character text memoised once, then latin-1 encoded to new bytes ``copies`` times."""
    head = text("\x01" * size) + put(0) + P.POP
    one = glob("_codecs", "encode") + get(0) + text("latin1") + P.TUPLE2 + P.REDUCE
    return as_bin(protocol, head + one * copies, copies)


def memo_index(protocol, index=1 << 23):
    """A memo index far past the objects memoised so far: the C unpickler sizes its memo table to 2 x index."""
    return as_bin(protocol, P.NONE + put(index) + P.DUP)


def bytes8_declared(protocol, n=1 << 28):
    """BINBYTES8 declaring 256 MiB with 1 byte present: the C unpickler allocates the declared size first."""
    return as_bin(protocol, P.BINBYTES8 + struct.pack("<Q", n) + b"x" + P.DUP)


# -- running a load in a forked child ---------------------------------------------------------------------------
def load_in_child(path):
    """``load_bin(path)`` in a forked child: ``{'outcome': 'ok' | exception name | 'signal N', 'message', 'peak'}``
    (``peak``: tracemalloc's peak of the load, bytes)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(r)
        result = {"outcome": "ok", "message": "", "peak": None}
        try:
            tracemalloc.start()
            try:
                load_bin(path)
            except DataFileError as e:
                result.update(outcome="DataFileError", message=str(e))
            except BaseException as e:
                result.update(outcome=type(e).__name__, message=traceback.format_exc()[-2000:])
            result["peak"] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            os.write(w, json.dumps(result).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read()
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return {"outcome": f"signal {signal.Signals(os.WTERMSIG(status)).name}", "message": "", "peak": None}
    return json.loads(out)


PROTOCOLS = [2, 3, 4, 5]


def write(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("make, message", [
    (segv_dtype_build, r"dtype 'M8\[D\]' is not allowed"),
    (segv_object_array, r"dtype 'O' is not allowed"),
])
def test_crashing_files_are_refused(tmp_path, make, message, protocol):
    path = write(tmp_path, "crash.bin", make(protocol))
    res = load_in_child(path)
    assert res["outcome"] == "DataFileError", res
    assert res["message"].startswith(f"{path}: ") and __import__("re").search(message, res["message"]), res
    assert res["peak"] < 64 * 1024 + 8 * path.stat().st_size, res


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("make, message", [
    (declared_shape, r"_reconstruct\(numpy.ndarray, \(3000000000,\), .*\) is not how numpy pickles an array"),
    (ndarray_called, r"numpy.ndarray is only allowed as the first argument of _reconstruct"),
    (memo_arrays, r"decoded data exceed .* bytes"),
    (memo_text, r"decoded data exceed .* bytes"),
    (memo_index, r"memo index 8388608 .* only 0 objects"),
    (bytes8_declared, r"not a readable pickle .*268435456 bytes"),
])
def test_amplifying_files_are_refused_within_the_file_size(tmp_path, make, message, protocol):
    """Refused with an error, and the load never held more than 3 x the file's size + 1.25 MiB (the file's bytes,
    the objects parsed from them, and the decoded-data budget of the file's size + 1 MiB)."""
    path = write(tmp_path, "amp.bin", make(protocol))
    size = path.stat().st_size
    res = load_in_child(path)
    assert res["outcome"] == "DataFileError", res
    assert __import__("re").search(message, res["message"]), res
    assert res["peak"] < (5 << 18) + 3 * size, (res["peak"], size)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_hand_written_arrays_load_like_numpy(tmp_path, protocol):
    """The builders above write what numpy writes: a well-formed file of their opcodes loads, and its arrays equal
    a trusted ``pickle.loads`` of the same bytes (the independent reference)."""
    data = b"\x00\x07\xff" * 5
    arr = reconstruct(protocol=protocol) + P.MARK + integer(1) + P.MARK + integer(3) + integer(5) + P.TUPLE \
        + built_dtype("u1") + P.NEWFALSE + raw(data, protocol) + P.TUPLE + P.BUILD
    fortran = reconstruct(protocol=protocol) + P.MARK + integer(1) + P.MARK + integer(5) + integer(3) + P.TUPLE \
        + built_dtype("u1") + P.NEWTRUE + raw(data, protocol) + P.TUPLE + P.BUILD
    blob = as_bin(protocol, arr + fortran)
    path = write(tmp_path, "ok.bin", blob)
    want_bins, want_issame = P.loads(blob)
    got = load_bin(path)
    assert got.issame.tolist() == want_issame == [True]
    for g, w in zip(got.images, want_bins):
        assert g.dtype == w.dtype == np.uint8 and g.shape == w.shape
        np.testing.assert_array_equal(g, w)
    assert got.images[1].flags.f_contiguous and got.images[1][4, 2] == want_bins[1][4, 2]
    # an int64 issame array, big-endian, as numpy writes it
    issame = np.array([1, 0], dtype=">i8")
    blob = P.dumps(([b"a", b"b", b"c", b"d"], issame), protocol=min(protocol, 4))
    assert load_bin(write(tmp_path, "i8.bin", blob)).issame.tolist() == [True, False]


@pytest.mark.parametrize("state, message", [
    ("(3, '|', None, ('a',), {'a': (dtype_u1, 0)}, 1, 1, 0)", "dtype state"),
    ("(3, '|', (dtype_u1, (2,)), None, None, -1, -1, 0)", "dtype state"),
    ("(3, '|', None, None, None, -1, -1, 63)", "dtype state"),
    ("(4, '|', None, None, None, -1, -1, 0, {'x': 1})", "dtype state"),
])
def test_dtype_build_states_outside_plain_ones_are_refused(tmp_path, state, message):
    """A BUILD on an allowed dtype ('u1') with any state but the plain one numpy writes is refused."""
    ops = glob("numpy", "dtype") + text("u1") + P.NEWFALSE + P.NEWTRUE + P.TUPLE3 + P.REDUCE
    stuff = {"dtype_u1": dtype("u1")}
    # the state written with the same opcode writers, parsed from its Python spelling
    import ast
    tree = ast.parse(state, mode="eval").body

    def emit(node):
        if isinstance(node, ast.Tuple):
            return P.MARK + b"".join(emit(e) for e in node.elts) + P.TUPLE
        if isinstance(node, ast.Dict):
            return P.EMPTY_DICT + P.MARK + b"".join(emit(k) + emit(v) for k, v in zip(node.keys, node.values)) \
                + P.SETITEMS
        if isinstance(node, ast.Name):
            return stuff[node.id]
        v = ast.literal_eval(node)
        return P.NONE if v is None else text(v) if isinstance(v, str) else integer(v)
    path = write(tmp_path, "state.bin", as_bin(3, ops + emit(tree) + P.BUILD + P.DUP))
    res = load_in_child(path)
    assert res["outcome"] == "DataFileError" and message in res["message"], res


def py2_str(b):
    return P.SHORT_BINSTRING + bytes([len(b)]) + b if len(b) < 256 else P.BINSTRING + struct.pack("<i", len(b)) + b


def test_python2_numpy_bin_loads(tmp_path):
    """A Python 2 ``.bin`` (str, not bytes: typecode, dtype spec, byte order and data are all py2 strings, the data
    not ASCII, so the loader retries with ``encoding='bytes'``) loads, equal to a trusted ``pickle.loads`` of it with
    that encoding."""
    data = bytes(range(250, 256)) + b"\x00\x80"
    arr = glob("numpy.core.multiarray", "_reconstruct") + glob("numpy", "ndarray") + P.MARK + integer(0) + P.TUPLE \
        + py2_str(b"b") + P.TUPLE3 + P.REDUCE + P.MARK + integer(1) + P.MARK + integer(1) + integer(8) + P.TUPLE \
        + glob("numpy", "dtype") + py2_str(b"u1") + integer(0) + integer(1) + P.TUPLE3 + P.REDUCE + P.MARK \
        + integer(3) + py2_str(b"|") + P.NONE * 3 + integer(-1) * 2 + integer(0) + P.TUPLE + P.BUILD + P.NEWFALSE \
        + py2_str(data) + P.TUPLE + P.BUILD
    blob = as_bin(2, arr + py2_str(b"\xff\xd8jpeg"))
    want_bins, want_issame = P.loads(blob, encoding="bytes")
    got = load_bin(write(tmp_path, "py2.bin", blob))
    assert got.issame.tolist() == want_issame == [True] and got.images[1] == want_bins[1] == b"\xff\xd8jpeg"
    assert got.images[0].dtype == np.uint8 and got.images[0].shape == (1, 8)
    np.testing.assert_array_equal(got.images[0], want_bins[0])


# benchmarks/RESULTS.md's table: PYTHONPATH=. python tests/data/test_verification_bin_hostile.py
if __name__ == "__main__":
    import tempfile
    from pathlib import Path
    full = [("segv_dtype_build", segv_dtype_build(3)), ("segv_object_array", segv_object_array(3)),
            ("declared_shape 3e9", declared_shape(3)), ("ndarray_called 3e9", ndarray_called(3)),
            ("memo_arrays 1 MiB x 1200", memo_arrays(3, MB, 1200)), ("memo_text 1 MiB x 1200", memo_text(3, MB, 1200)),
            ("memo_index 2**23", memo_index(3)), ("bytes8_declared 2**28", bytes8_declared(3))]
    with tempfile.TemporaryDirectory() as d:
        for name, blob in full:
            res = load_in_child(Path(d) / "x.bin") if Path(d, "x.bin").write_bytes(blob) else None
            peak = "-" if res["peak"] is None else f"{res['peak'] / 1e3:,.1f} kB"
            print(f"{name:26s} {len(blob):>9,d} B  {res['outcome']:14s} peak {peak:>12s}  "
                  f"{res['message'].strip().splitlines()[-1][-110:] if res['message'] else ''}")
