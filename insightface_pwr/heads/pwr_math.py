"""PWR math on relation vectors: the definitions every path shares, the dense reference and the tiled exact path.

Conventions (the loss of ``pwr.py``): M relations (pair distances) with teacher values t and student values s. For
every ordered pair of relations (p, q) with t_p > t_q (teacher ties excluded), x_pq = m_pq - (s_p - s_q), where the
margin m_pq is a constant, the population std of the M teacher values (``teacher_std``) or t_p - t_q
(``teacher_diff``). The loss is the MEAN of l(x_pq) over those C = #{(p, q): t_p > t_q} pairs, l one of
relu(x) (``diff``), relu(x)^p (``power``), relu(exp(beta x) - 1) (``exp``) or log(1 + exp(-beta (s_p - s_q)))
(``ranknet``, no margin). With no strictly ordered pair (C = 0) the loss is 0.

Every margin is resolved here, once (``resolve_margin``): m_pq = lam (t_p - t_q) + const.

Nothing in this module reads a tensor value on the host except ``pwr_loss_dense`` (the O(M^2)-memory reference,
which keeps its original form): the pair count and the margin stay tensors.
"""
from __future__ import annotations

import math
from typing import Tuple, Union

import torch
import torch.nn.functional as F

from . import pwr_cpu
from .base import zero_loss
from .common import kept

__all__ = ["INVERSIONS", "MARGINS", "METHODS", "MAX_FAST_POWER", "resolve_margin", "inversion_loss",
           "inversion_and_grad", "pwr_loss_dense", "pwr_sum_and_grad_tiled", "pair_count", "run_starts", "tie_runs",
           "is_decomposable", "resolve_method", "BITS32", "ts_order_keys", "teacher_words", "order_key", "key_values",
           "t_order"]

INVERSIONS = ("diff", "power", "exp", "ranknet")
MARGINS = ("teacher_std", "teacher_diff")
METHODS = ("auto", "fast", "tiled", "dense")
MAX_FAST_POWER = 8
BITS32 = (torch.float32, torch.float16, torch.bfloat16)  # dtypes whose values float32 holds exactly


def ts_order_keys(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """int64 keys ordering the relations by (t, s), for 32-bit or narrower t and s: each key is two int32 words,
    the high one t's bits and the low one s's, made order-preserving (a negative float's magnitude bits flipped;
    the low word's sign bit flipped too, as it counts unsigned). Equal values (-0.0 and
    +0.0 included) get equal words. The teacher word of a sorted key vector ``k`` is ``k.view(torch.int32)[1::2]``
    (little-endian)."""
    pair = (s, t) if s.dtype == t.dtype == torch.float32 else (s.float(), t.float())
    k = (torch.stack(pair, dim=1) + 0.0).view(torch.int32)  # (M, 2): [s, t] (-0.0 -> +0.0)
    flip = (k >> 31).bitwise_and_(0x7FFFFFFF)
    flip[:, 0].bitwise_xor_(-0x80000000)
    return k.bitwise_xor_(flip).view(torch.int64).view(-1)


def teacher_words(keys: torch.Tensor) -> torch.Tensor:
    """The teacher (high) words of ``ts_order_keys`` keys, as an int32 view."""
    return keys.view(torch.int32)[1::2]


_I64_MAX = 0x7FFFFFFFFFFFFFFF


def order_key(x: torch.Tensor) -> torch.Tensor:
    """int64 keys with the order of the float64 ``x`` (equal values, -0.0 and +0.0 included, get equal keys)."""
    b = (x + 0.0).view(torch.int64)
    return b ^ ((b >> 63) & _I64_MAX)


def key_values(keys: torch.Tensor) -> torch.Tensor:
    """The float64 values of ``order_key`` keys (-0.0 comes back as +0.0): the same bit map, applied again."""
    return (keys ^ ((keys >> 63) & _I64_MAX)).view(torch.float64)


def t_order(v: torch.Tensor, s: torch.Tensor, t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(the t order of the relations, teacher ties by ascending ``v`` (float64, monotone in s at equal t), the
    count C of the pairs t_p > t_q (``pair_count``)): one sort of (t, s) keys when t and s are 32-bit or narrower,
    else two int64 sorts (by v, then stably by t). Full ties (equal t and v) are in no counted pair: any order."""
    if t.dtype in BITS32 and s.dtype in BITS32:
        keys, perm = pwr_cpu.sort(ts_order_keys(t, s), stable=False)
        return perm, pair_count(t, teacher_words(keys))
    v_perm = pwr_cpu.sort(order_key(v), stable=False)[1]
    t_keys, t_perm = pwr_cpu.sort(order_key(t.to(torch.float64)).index_select(0, v_perm))
    return v_perm.index_select(0, t_perm), pair_count(t, t_keys)


def resolve_margin(margin: Union[float, str], t: torch.Tensor) -> Tuple[float, Union[float, torch.Tensor]]:
    """(lam, const) with m_pq = lam (t_p - t_q) + const: ``teacher_diff`` -> (1, 0); ``teacher_std`` -> (0, the
    population std of t as a 0-d tensor, 0 for fewer than two values); a number -> (0, that number)."""
    if margin == "teacher_diff":
        return 1.0, 0.0
    if margin == "teacher_std":
        return 0.0, (t.std(unbiased=False) if t.numel() > 1 else t.new_zeros(()))
    if isinstance(margin, str) or isinstance(margin, bool) or not isinstance(margin, (int, float)):
        raise ValueError(f"margin must be a number, 'teacher_std' or 'teacher_diff', got {margin!r}")
    return 0.0, float(margin)


def inversion_loss(x: torch.Tensor, inversion: str, p: float, beta: float) -> torch.Tensor:
    """l(x) of the margin-shifted differences x (elementwise; not for ranknet)."""
    if inversion == "diff":
        return torch.relu(x)
    if inversion == "power":
        pos = x > 0
        # clamp keeps the unselected branch's gradient finite for p < 1 (d/dx x^p is infinite at 0)
        return torch.where(pos, x.clamp(min=torch.finfo(x.dtype).tiny) ** p, torch.zeros_like(x))
    if inversion == "exp":
        return torch.relu(torch.expm1(beta * x))
    raise ValueError(f"inversion must be one of {INVERSIONS}, got {inversion!r}")


def inversion_and_grad(x: torch.Tensor, inversion: str, p: float, beta: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """l(x) and l'(x) elementwise (not ranknet); both 0 where x <= 0, as in the dense reference."""
    pos = x > 0
    zero = torch.zeros_like(x)
    if inversion == "diff":
        return torch.where(pos, x, zero), pos.to(x.dtype)
    if inversion == "power":
        xc = x.clamp(min=torch.finfo(x.dtype).tiny)
        return torch.where(pos, xc ** p, zero), torch.where(pos, p * xc ** (p - 1.0), zero)
    if inversion == "exp":
        e = torch.exp(beta * x)
        return torch.where(pos, e - 1.0, zero), torch.where(pos, beta * e, zero)
    raise ValueError(f"inversion must be one of {INVERSIONS}, got {inversion!r}")


def pwr_loss_dense(s: torch.Tensor, t: torch.Tensor, inversion: str = "exp",
                   margin: Union[float, str] = "teacher_diff", p: float = 1.0, beta: float = 1.0) -> torch.Tensor:
    """The PWR loss over relation vectors ``s`` (student, with grad) and ``t`` (teacher), both of length M,
    computed densely over the M x M pairs of pairs by autograd (O(M^2) time and memory): the reference of the
    other paths."""
    if s.shape != t.shape or s.dim() != 1:
        raise ValueError(f"s and t must be vectors of the same length, got {tuple(s.shape)} and {tuple(t.shape)}")
    t = t.detach()
    ds = s[:, None] - s[None, :]  # s_p - s_q
    dt = t[:, None] - t[None, :]  # t_p - t_q
    mask = dt > 0
    count = int(mask.sum())
    if count == 0:
        return zero_loss(s)
    if inversion == "ranknet":
        terms = F.softplus(-beta * ds)
    else:
        lam, const = resolve_margin(margin, t)
        terms = inversion_loss((dt + const if lam else const) - ds, inversion, p, beta)
    return torch.where(mask, terms, torch.zeros_like(terms)).sum() / count


_KEEP_RUNS = 1 << 16  # up to this length the run helpers keep their constant-headed buffers (one operation each)
_RUNS: dict = {}


def _small(key: tuple, m: int, make):
    """``make()``, kept per key for vectors of at most ``_KEEP_RUNS`` entries (its contents are rewritten by
    every use except what ``make`` set up: the caller consumes it before the next call)."""
    return kept(_RUNS, key, make, 8) if m <= _KEEP_RUNS else make()


def _run_heads(x_sorted: torch.Tensor) -> torch.Tensor:
    """True where a run of equal values starts in a sorted vector (one comparison with the neighbour)."""
    m, dev = x_sorted.numel(), x_sorted.device
    new = _small(("heads", m, str(dev)), m, lambda: torch.ones(m, dtype=torch.bool, device=dev))
    torch.ne(x_sorted[1:], x_sorted[:-1], out=new[1:])  # (new[0] stays True)
    return new


def _starts(heads: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    m, dev = heads.numel(), heads.device
    idx = _small(("arange", m, dtype, str(dev)), m, lambda: torch.arange(m, dtype=dtype, device=dev))
    return torch.where(heads, idx, 0).cummax(0).values


def run_starts(x_sorted: torch.Tensor, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """For each element of a sorted vector, the rank where its run of equal values starts (= the number of smaller
    values), from one comparison with the neighbour and a running max (no host read)."""
    return _starts(_run_heads(x_sorted), dtype)


def tie_runs(x_sorted: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """For each element of a sorted vector: the rank where its run of equal values starts and the run's length
    (int64), from comparisons with the neighbours (no ``unique_consecutive``: no host read)."""
    m = x_sorted.numel()
    idx = torch.arange(m, device=x_sorted.device)
    if m < 2:
        return idx, torch.ones_like(idx)
    new = _run_heads(x_sorted)
    start = _starts(new, torch.int64)
    last = torch.ones_like(new)
    last[:-1] = new[1:]
    end = torch.where(last, idx, m - 1).flip(0).cummin(0).values.flip(0)
    return start, end - start + 1


def pair_count(t: torch.Tensor, t_sorted: torch.Tensor = None) -> torch.Tensor:
    """#{(p, q): t_p > t_q} exactly (ties excluded), as an int64 0-d tensor (no host read): the sum over the sorted
    t of the run starts (each element's number of smaller values; int32 ranks below 2^31). ``t_sorted``: the
    sorted values (or any order-preserving keys of them), if at hand."""
    m = t.numel()
    if m < 2:
        return torch.zeros((), dtype=torch.int64, device=t.device)
    ts = torch.sort(t.reshape(-1)).values if t_sorted is None else t_sorted
    return run_starts(ts, torch.int32 if m < 2**31 else torch.int64).sum(dtype=torch.int64)


def pwr_sum_and_grad_tiled(s: torch.Tensor, t: torch.Tensor, inversion: str, margin: Union[float, str],
                           p: float = 1.0, beta: float = 1.0, tile: int = 4096) -> Tuple[torch.Tensor, torch.Tensor]:
    """Exact SUM of l(x_pq) over t_p > t_q and d sum / d s for EVERY inversion (ranknet and non-integer p
    included), block by block: O(M^2) time, O(M + tile^2) memory (blocks of tile x tile pairs, float64)."""
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < 1:
        raise ValueError(f"pwr tiled path: tile must be a positive int, got {tile!r}")
    s = s.detach().to(torch.float64).reshape(-1)
    t = t.detach().to(torch.float64).reshape(-1)
    m_rel = s.numel()
    lam, const = resolve_margin(margin, t) if inversion != "ranknet" else (0.0, 0.0)
    total = torch.zeros((), dtype=torch.float64, device=s.device)
    grad = torch.zeros_like(s)
    for p0 in range(0, m_rel, tile):
        sp, tp = s[p0:p0 + tile, None], t[p0:p0 + tile, None]
        for q0 in range(0, m_rel, tile):
            sq, tq = s[None, q0:q0 + tile], t[None, q0:q0 + tile]
            mask = tp > tq  # a block with no ordered pair adds zeros (no host read to skip it)
            ds = sp - sq
            if inversion == "ranknet":
                val = F.softplus(-beta * ds)
                der = beta * torch.sigmoid(-beta * ds)  # d l / d s_q ( = - d l / d s_p)
            else:
                x = (const + lam * (tp - tq)) - ds
                val, der = inversion_and_grad(x, inversion, p, beta)
            zero = torch.zeros_like(val)
            val, der = torch.where(mask, val, zero), torch.where(mask, der, zero)
            total = total + val.sum()
            grad[p0:p0 + tile] -= der.sum(1)
            grad[q0:q0 + tile] += der.sum(0)
    return total, grad


def is_decomposable(inversion: str, p: float) -> bool:
    """Whether the fast O(M log M) path covers this inversion (``diff``, ``exp``, ``power`` with integer
    1 <= p <= MAX_FAST_POWER)."""
    if inversion in ("diff", "exp"):
        return True
    return inversion == "power" and float(p).is_integer() and 1 <= p <= MAX_FAST_POWER


def resolve_method(method: str, inversion: str, p: float) -> str:
    """``auto`` -> ``fast`` where decomposable, else ``tiled`` (exact; never an approximation). An explicit
    ``fast`` on a non-decomposable inversion is an error, not a silent fallback."""
    if method not in METHODS:
        raise ValueError(f"pwr: method must be one of {METHODS}, got {method!r}")
    if method == "auto":
        return "fast" if is_decomposable(inversion, p) else "tiled"
    if method == "fast" and not is_decomposable(inversion, p):
        raise ValueError(f"pwr: method='fast' needs a decomposable inversion ('diff', 'exp', or 'power' with "
                         f"integer 1 <= p <= {MAX_FAST_POWER}), got inversion={inversion!r}, p={p!r}; "
                         f"use method='tiled' (exact, O(M^2) time, O(M + tile^2) memory) or 'auto'")
    return method


def binom_row(k: int) -> list:
    return [math.comb(k, c) for c in range(k + 1)]
