"""The exact PWR path's sorts and tree pass on a CPU, as compiled C (``_pwr_cpu.c``, loaded through ctypes).

The same orders, pass and results (up to float64 rounding) as the vectorised path (``pwr_math.t_order``,
``pwr_fast``'s setup, ``pwr_tree.run_tree``), done as sequential loops instead of library calls: a stable radix
sort (``sort``), the tree pass (``run_tree_cpu``: two loops per level instead of about twenty calls) and, for
float32 relations, the whole sum in two calls (``single_sum``: one item per relation, the head's usual case;
``pair_sum``: a query and a key item per relation), or for the head's cosine relations everything from its Gram
matrices to its loss and the matrix of the loss's gradient with respect to the relations in two calls
(``cosine_mean``). At N = 1024 (M = 523,776 relations) the sum takes ~60 ms instead of ~300 (benchmarks/RESULTS.md,
parts 6 and 7). The C file uses neither the Python nor the torch API, so one build serves every Python and torch
version; ``setup.py`` builds it as an optional extension (a machine without a C compiler installs without it).
Where the library is missing, or ``INSIGHTFACE_PWR_CPU_KERNEL=0`` is set, or the tensors are not on the CPU, the
fast path runs the vectorised path (the one every GPU runs; it stays a reference the compiled one is tested
against, with the dense reference).
"""
from __future__ import annotations

import ctypes
import importlib.machinery
import os
from pathlib import Path
from typing import Optional, Tuple, Union

import torch

__all__ = ["ENV", "ABI", "MAX_ITEMS", "MAX_ROWS", "MAX_PAIR_ROWS", "available", "enabled", "library_path",
           "run_tree_cpu", "single_sum", "pair_sum", "cosine_mean", "SINGLE", "CONSTANT", "TEACHER_STD", "sort",
           "call_count"]

ENV = "INSIGHTFACE_PWR_CPU_KERNEL"  # "0" (or "off", "false", "no"): never use the compiled pass
_NAME = "_pwr_cpu"
_LIB: Optional[ctypes.CDLL] = None
_LOADED = False
_CALLS = [0]  # compiled calls made (benchmarks/pwr_scaling.py counts each as one operation)


def library_path() -> Optional[Path]:
    """The built library beside this module (``_pwr_cpu`` with this interpreter's extension suffix, or any
    ``_pwr_cpu*.so``: the library needs no particular Python), or None."""
    here = Path(__file__).resolve().parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        p = here / (_NAME + suffix)
        if p.is_file():
            return p
    found = sorted(here.glob(_NAME + "*.so")) + sorted(here.glob(_NAME + "*.pyd"))
    return found[0] if found else None


ABI = 4  # _pwr_cpu.c's pwr_cpu_abi(): a library built from another version of the C file is not used
MAX_ITEMS = 1 << 30  # the C code's limit (int32 positions); larger inputs take the vectorised path
MAX_ROWS = 46341  # the most rows whose pairs (M = n (n - 1) / 2) stay within MAX_ITEMS (``cosine_mean``)
MAX_PAIR_ROWS = 32768  # the same for a query and a key item per relation (2 M <= MAX_ITEMS)
_SIGNATURES = {  # function: argument types (every one returns int64)
    "pwr_cpu_abi": [],
    "pwr_tree_cpu": [ctypes.c_int64, ctypes.c_int32, ctypes.c_int32, ctypes.c_double] + [ctypes.c_void_p] * 7,
    "pwr_sort_i64": [ctypes.c_int64] + [ctypes.c_void_p] * 5,
    "pwr_single_setup_f32": [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32,
                             ctypes.c_double] + [ctypes.c_void_p] * 4,
    "pwr_single_finish": [ctypes.c_int64, ctypes.c_int32, ctypes.c_double] + [ctypes.c_void_p] * 5,
    "pwr_cosine_setup_f32": [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32,
                             ctypes.c_double, ctypes.c_int32, ctypes.c_double, ctypes.c_void_p, ctypes.c_void_p],
    "pwr_cosine_finish": [ctypes.c_int64, ctypes.c_int32, ctypes.c_int32, ctypes.c_double] + [ctypes.c_void_p] * 4,
    "pwr_pair_setup_f32": [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32,
                           ctypes.c_double, ctypes.c_void_p, ctypes.c_void_p],
    "pwr_pair_finish": [ctypes.c_int64, ctypes.c_int32, ctypes.c_double, ctypes.c_void_p, ctypes.c_void_p,
                        ctypes.c_void_p],
}


def _bind(lib) -> bool:
    """Declare the functions' types on ``lib``; False if one is missing or the ABI is not ``ABI``."""
    try:
        for name, args in _SIGNATURES.items():
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = ctypes.c_int64, args
        return lib.pwr_cpu_abi() == ABI
    except AttributeError:
        return False


def _load() -> Optional[ctypes.CDLL]:
    global _LIB, _LOADED
    if not _LOADED:
        _LOADED = True
        path = library_path()
        if path is not None:
            try:
                lib = ctypes.CDLL(str(path))
            except OSError:
                lib = None
            _LIB = lib if lib is not None and _bind(lib) else None
    return _LIB


def available() -> bool:
    """Whether the compiled pass is built and loads."""
    return _load() is not None


def enabled(device: torch.device) -> bool:
    """Whether the fast path uses the compiled pass for tensors on ``device``: a CPU, the library available and
    not switched off by ``INSIGHTFACE_PWR_CPU_KERNEL``."""
    if device.type != "cpu":
        return False
    if os.environ.get(ENV, "1").strip().lower() in ("0", "off", "false", "no"):
        return False
    return available()


def call_count() -> int:
    """How many compiled calls (sorts, passes, sums) this process has made."""
    return _CALLS[0]


def run_tree_cpu(code: torch.Tensor, f: torch.Tensor, k: int, beta: float,
                 single: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``pwr_tree.run_tree``'s pass over the items ``code`` (int32, in value order: t position, or 2 t position
    + key flag) with features ``f`` (float64), without padding: the codes must be the positions 0 .. n - 1 (one
    item per relation) or 0 .. n - 1 as 2 position + flag over n = 2 M items. ``code`` and ``f`` are overwritten.
    Returns (acc in t order (float64, n), tot, cnt (float64 0-d))."""
    lib = _load()
    if lib is None:
        raise RuntimeError(f"pwr: the compiled CPU pass ({_NAME}) is not built; reinstall the package with a C "
                           f"compiler, or set {ENV}=0")
    n = code.numel()
    if code.dtype != torch.int32 or f.dtype != torch.float64 or f.numel() != n or code.device.type != "cpu" \
            or f.device.type != "cpu" or not (code.is_contiguous() and f.is_contiguous()):
        raise ValueError(f"pwr CPU pass: expected contiguous CPU int32 codes and float64 features of one length, "
                         f"got {code.dtype} {tuple(code.shape)} and {f.dtype} {tuple(f.shape)} on {code.device}")
    acc = torch.zeros(n, dtype=torch.float64)
    code1, f1, acc1 = torch.empty_like(code), torch.empty_like(f), torch.empty_like(acc)
    res = torch.zeros(2, dtype=torch.float64)
    _CALLS[0] += 1
    rc = lib.pwr_tree_cpu(n, 0 if single else 1, k, float(beta), code.data_ptr(), f.data_ptr(), acc.data_ptr(),
                          code1.data_ptr(), f1.data_ptr(), acc1.data_ptr(), res.data_ptr())
    if rc != 0:
        raise ValueError(f"pwr CPU pass: bad arguments (n={n}, k={k})" if rc == -1 else
                         "pwr CPU pass: the item codes are not the positions 0 .. n - 1 (an internal error)")
    return acc, res[0], res[1]


def sort(keys: torch.Tensor, stable: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """``torch.sort(keys, stable=stable)`` of a 1-D int64 tensor: (sorted keys, positions (int64)); by the
    compiled radix sort (always stable) where ``enabled``: at 4,186 keys ~0.08 ms against ~0.19 for torch's."""
    if keys.dtype != torch.int64 or keys.dim() != 1 or not enabled(keys.device):
        return torch.sort(keys, stable=stable)
    keys = keys.contiguous()
    n = keys.numel()
    out, perm = torch.empty_like(keys), torch.empty_like(keys)
    tmp, tmp_perm = torch.empty_like(keys), torch.empty_like(keys)
    _CALLS[0] += 1
    if _LIB.pwr_sort_i64(n, keys.data_ptr(), out.data_ptr(), perm.data_ptr(), tmp.data_ptr(),
                         tmp_perm.data_ptr()) != 0:
        raise MemoryError(f"pwr CPU sort: could not sort {n} keys (no memory for its counts)")
    return out, perm


def single_sum(s: torch.Tensor, t: torch.Tensor, lam: int, k: int,
               beta: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fast path's sum for one item per relation (margin ``teacher_diff``: ``lam`` 1, or a zero constant:
    ``lam`` 0) and float32 relations ``s``, ``t`` (M >= 2, on the CPU) in two compiled calls (orders, pair count
    and features; the pass and the gradient) around torch's exp of the features: the same orders, count, features
    and pass as ``pwr_fast`` composes them, 56 bytes of scratch per relation. Returns (the sum (float64 0-d),
    d sum / d s (float64, M), the pair count C (int64 0-d), the range of v = s - lam t (float64 0-d, for the debug
    check of ``exp``))."""
    lib = _load()
    m = s.numel()
    if lib is None or s.dtype != torch.float32 or t.dtype != torch.float32 or t.numel() != m or m < 2 \
            or s.device.type != "cpu" or t.device.type != "cpu":
        raise ValueError(f"pwr CPU sum: expected two float32 CPU vectors of one length >= 2 and the library built, "
                         f"got {s.dtype} {tuple(s.shape)} on {s.device} and {t.dtype} {tuple(t.shape)} on {t.device}")
    s, t = s.contiguous(), t.contiguous()
    i64 = torch.empty(4 * m, dtype=torch.int64)
    f64 = torch.empty(2 * m, dtype=torch.float64)
    i32 = torch.empty(2 * m, dtype=torch.int32)
    grad = torch.empty(m, dtype=torch.float64)
    res = torch.empty(3, dtype=torch.float64)
    _CALLS[0] += 2
    rc = lib.pwr_single_setup_f32(m, s.data_ptr(), t.data_ptr(), int(lam), k, float(beta), i64.data_ptr(),
                                  f64.data_ptr(), i32.data_ptr(), res.data_ptr())
    if rc == 0:
        if k == 0:
            f64[:m].exp_()
        rc = lib.pwr_single_finish(m, k, float(beta), i64.data_ptr(), f64.data_ptr(), i32.data_ptr(),
                                   grad.data_ptr(), res.data_ptr())
    if rc != 0:
        _fail(rc, f"{m} relations (k={k}, beta={beta})")
    return res[0], grad, res[1].to(torch.int64), res[2]


def pair_sum(s: torch.Tensor, t: torch.Tensor, const: Union[float, torch.Tensor], k: int,
             beta: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fast path's sum for a query and a key item per relation (a constant margin ``const`` other than 0, or
    teacher_std: ``const`` a float64 0-d tensor, read by the C code, not on the host) and float32 relations ``s``,
    ``t`` (2 <= M <= MAX_ITEMS / 2, on the CPU) in two compiled calls around torch's exp of the features: the same
    items, orders, count, features and pass as ``pwr_fast`` composes them, 88 bytes of scratch per relation.
    Returns as ``single_sum``."""
    lib = _load()
    m = s.numel()
    if lib is None or s.dtype != torch.float32 or t.dtype != torch.float32 or t.numel() != m \
            or not 2 <= m <= MAX_ITEMS // 2 or s.device.type != "cpu" or t.device.type != "cpu":
        raise ValueError(f"pwr CPU pair sum: expected two float32 CPU vectors of one length, 2 to {MAX_ITEMS // 2}, "
                         f"and the library built, got {s.dtype} {tuple(s.shape)} on {s.device} and {t.dtype} "
                         f"{tuple(t.shape)} on {t.device}")
    if isinstance(const, torch.Tensor):
        if const.dtype != torch.float64 or const.numel() != 1 or const.device.type != "cpu":
            raise ValueError(f"pwr CPU pair sum: the margin must be a float or a float64 CPU tensor of one value, "
                             f"got {const.dtype} {tuple(const.shape)} on {const.device}")
        keep = const.contiguous()
        const_ptr = keep.data_ptr()
    else:
        keep = ctypes.c_double(float(const))
        const_ptr = ctypes.addressof(keep)
    s, t = s.contiguous(), t.contiguous()
    scratch = torch.empty(11 * m, dtype=torch.float64)
    grad = torch.empty(m, dtype=torch.float64)
    res = torch.empty(3, dtype=torch.float64)
    _CALLS[0] += 2
    rc = lib.pwr_pair_setup_f32(m, s.data_ptr(), t.data_ptr(), const_ptr, k, float(beta), scratch.data_ptr(),
                                res.data_ptr())
    del keep  # (the margin was read)
    if rc == 0:
        if k == 0:
            scratch[m:3 * m].exp_()
        rc = lib.pwr_pair_finish(m, k, float(beta), scratch.data_ptr(), grad.data_ptr(), res.data_ptr())
    if rc != 0:
        _fail(rc, f"{m} relations with pair items (k={k}, beta={beta})")
    return res[0], grad, res[1].to(torch.int64), res[2]


def _fail(rc: int, what: str) -> None:
    if rc == -3:
        raise MemoryError(f"pwr CPU sum: no memory for the radix sort's counts ({what})")
    raise ValueError(f"pwr CPU sum: failed ({rc}) on {what}")


SINGLE, CONSTANT, TEACHER_STD = 0, 1, 2  # ``cosine_mean``'s items: one per relation, or a query and a key


def cosine_mean(gs: torch.Tensor, gt: torch.Tensor, kind: int, lam: int, const: float, k: int, beta: float,
                need_grad: bool) -> Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
    """The PWR head's loss for the cosine relation, from the n x n float32 Gram matrices ``gs`` (student) and ``gt``
    (teacher) of the normalised rows (3 <= n <= ``MAX_ROWS``, on the CPU), in two compiled calls around torch's exp:
    the relations 1 - g of the pairs i < j as ``relations.relation_vector`` computes them, then the orders, features
    and pass of ``single_sum`` (``kind`` SINGLE, ``lam`` 1 for teacher_diff, 0 for a zero margin) or ``pair_sum``
    (CONSTANT: the margin ``const``; TEACHER_STD: the population std of the teacher relations, computed by the C
    code), and the mean and its gradient as ``pwr.py`` computes them from the sum. Returns (the loss (float32 0-d),
    ``need_grad``: the n x n float32 matrix K of d loss / d relation at (i, j) and (j, i) for each pair, zero
    diagonal, as ``relations.relation_vector_backward`` builds it (else None), (sum, C, value range) (float64, 3))."""
    lib = _load()
    n = gs.shape[0] if gs.dim() == 2 else -1
    limit = MAX_ROWS if kind == SINGLE else MAX_PAIR_ROWS
    if lib is None or gs.dtype != torch.float32 or gt.dtype != torch.float32 or gs.shape != (n, n) \
            or gt.shape != (n, n) or not 3 <= n <= limit or gs.device.type != "cpu" or gt.device.type != "cpu":
        raise ValueError(f"pwr CPU mean: expected two float32 CPU Gram matrices of one shape (n, n), 3 <= n <= "
                         f"{limit}, and the library built, got {gs.dtype} {tuple(gs.shape)} on {gs.device} and "
                         f"{gt.dtype} {tuple(gt.shape)} on {gt.device}")
    gs, gt = gs.contiguous(), gt.contiguous()
    m = n * (n - 1) // 2
    scratch = torch.empty((7 if kind == SINGLE else 11) * m, dtype=torch.float64)  # (one allocation)
    res = torch.empty(3, dtype=torch.float64)
    loss = torch.empty((), dtype=torch.float32)
    kmat = torch.empty((n, n), dtype=torch.float32) if need_grad else None
    _CALLS[0] += 2
    rc = lib.pwr_cosine_setup_f32(n, gs.data_ptr(), gt.data_ptr(), int(kind), int(lam), float(const), k,
                                  float(beta), scratch.data_ptr(), res.data_ptr())
    if rc == 0:
        if k == 0:  # the features: f64 (single) or buffer a's (pairs)
            (scratch[4 * m:5 * m] if kind == SINGLE else scratch[m:3 * m]).exp_()
        rc = lib.pwr_cosine_finish(n, int(kind), k, float(beta), scratch.data_ptr(),
                                   None if kmat is None else kmat.data_ptr(), loss.data_ptr(), res.data_ptr())
    if rc != 0:
        _fail(rc, f"{n} rows (kind={kind}, k={k}, beta={beta})")
    return loss, kmat, res
