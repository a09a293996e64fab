"""Exact PWR loss and gradient in O(M log M) (``diff``, integer ``power``, ``exp``) and an exact tiled O(M^2)
path with bounded memory (every inversion, ``ranknet`` and non-integer p included).

Notation (see ``pwr.py`` and ``shared/spec/HEADS.md``): M relations with teacher values t and student values s; the
loss is sum over ordered pairs (p, q) with t_p > t_q of l(x_pq), x_pq = m_pq - (s_p - s_q), divided by the exact
count C = #{(p, q): t_p > t_q} = (M^2 - sum over tie groups of size g of g^2) / 2.

Decomposition (the fast path). With the KEY a_q = s_q - lambda t_q + m and the QUERY b_p = s_p - lambda t_p
(lambda = 1, m = 0 for the ``teacher_diff`` margin; lambda = 0 and m the constant or the teacher std otherwise),
x_pq = a_q - b_p. Every decomposable l vanishes for x <= 0, so only the pairs with t_q < t_p AND a_q > b_p count,
and on that region
- relu(x)^k = sum_c binom(k, c) a^c (-b)^(k-c)                       (``diff`` is k = 1, ``power`` integer p = k);
- exp(beta x) - 1 = exp(beta a) exp(-beta b) - 1;
so a query needs only a count and k + 1 (or one) sums over the keys that dominate it, and the gradient
dL/ds_r = (sum over queries p dominated by key r of l'(a_r - b_p) - sum over keys q dominating query r of
l'(a_q - b_r)) / C needs the same kind of sums from both sides.

The dominance sums come from one top-down pass over a binary tree on the t order (log2(n) levels, n = 2M rounded
up to a power of two; items are the M keys and M queries, in t order with queries BEFORE keys at equal t, so ties in
t are excluded exactly). At each level the items are arranged group by group (a group = a block of 2^level
consecutive t positions), each group in value order (keys BEFORE queries at equal value, so a_q = b_p is excluded,
as relu'(0) = 0 in the dense reference). For every group, its right half's queries receive the suffix sums of its
left half's keys (a segmented cumsum on a (groups, width) view), its left half's keys the prefix sums of its right
half's queries; then a stable partition by the next t bit (one cumsum and a scatter) gives the next level's arrangement. Every
pair (q, p) with t-position(q) < t-position(p) meets at exactly one level: the one where they split. All of it is
vectorised (sort, searchsorted, cumsum, scatter): no Python loop over elements, works on any device.

Numerics: everything in float64. ``exp`` uses one global shift c = max(a, b): key features exp(beta (a - c)) <= 1,
query features exp(beta (c - b)) <= exp(beta R) with R = max - min of the values; for normalised embeddings both
relations lie in [0, 2], so a, b lie in [-2, 2 + |m|] (teacher_diff: [-2, 2]) and R <= 4 + |m|. The fast path
refuses beta R > 700 (float64 exp would overflow; use ``tiled``). ``power`` centres the values at the middle of their
range (|a - c|, |b - c| <= R / 2) before the binomial expansion, which loses about binom(k, k/2) (R/2)^k ulps per
term: fast ``power`` is limited to integer p <= ``MAX_FAST_POWER``. Every partial sum is a float64 cumsum of at
most 2M bounded terms (float32 would lose about 2M * 6e-8, i.e. percents, at N = 1024). The count C is exact (int64).

Cost: O(M log M) time (sorting, then log2(2M) levels of O(M) vectorised work), O(M) memory (about 20 float64
vectors of 2M entries: ~170 MB at N = 1024). On a CPU the levels below 2^16 items are finished chunk by chunk
(cache-sized working set). The gradient is computed in the same pass and stored: the backward is O(M).
CPU speed notes (torch 2.x, one thread): every temporary of the pass is allocated once and reused by the chunks
(fresh multi-MB tensors cost page faults); gathers and scatters use index_select / scatter_ (x[idx] and
x[idx] = y are several times slower); the exp loss sum is read off the keys' gradient sums at the end (one
count of dominated pairs per level instead of a sum of terms); the code vector is int32.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F

from .base import zero_loss

__all__ = ["pwr_loss", "pair_count", "is_decomposable", "resolve_method", "pwr_sum_and_grad_fast",
           "pwr_sum_and_grad_tiled", "margin_constant", "MAX_FAST_POWER", "METHODS"]

MAX_FAST_POWER = 8
_QUERY, _KEY = 1, 2
_EXP_RANGE = 700.0
_CHUNK_LEVELS = 16  # CPU: finish groups of 2^16 items one at a time (cache-sized working set)


def pair_count(t: torch.Tensor) -> int:
    """#{(p, q): t_p > t_q} exactly (ties excluded), from the run lengths of the sorted t: (M^2 - sum g^2) / 2."""
    m = t.numel()
    if m < 2:
        return 0
    runs = torch.unique_consecutive(torch.sort(t.reshape(-1)).values, return_counts=True)[1].to(torch.int64)
    return (m * m - int((runs * runs).sum())) // 2


def is_decomposable(inversion: str, p: float) -> bool:
    """Whether the fast O(M log M) path covers this inversion (``diff``, ``exp``, ``power`` with integer
    1 <= p <= MAX_FAST_POWER)."""
    if inversion in ("diff", "exp"):
        return True
    return inversion == "power" and float(p).is_integer() and 1 <= p <= MAX_FAST_POWER


def margin_constant(margin: Union[float, str], t: torch.Tensor) -> float:
    """The constant margin m (``teacher_diff`` -> 0, its lambda = 1 carries it; ``teacher_std`` -> population std)."""
    if margin == "teacher_diff":
        return 0.0
    if margin == "teacher_std":
        return float(t.std(unbiased=False)) if t.numel() > 1 else 0.0
    if isinstance(margin, str):
        raise ValueError(f"margin must be a number, 'teacher_std' or 'teacher_diff', got {margin!r}")
    return float(margin)


def _runs(x_sorted: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """For each element of a sorted vector: the rank where its run of equal values starts, and the run's length."""
    _, inverse, counts = torch.unique_consecutive(x_sorted, return_inverse=True, return_counts=True)
    if counts.numel() == x_sorted.numel():  # all distinct
        return torch.arange(x_sorted.numel(), device=x_sorted.device), torch.ones_like(counts)
    start = torch.cumsum(counts, 0) - counts
    return start.index_select(0, inverse), counts.index_select(0, inverse)


def _binom_row(k: int) -> list:
    return [math.comb(k, c) for c in range(k + 1)]


def pwr_sum_and_grad_fast(s: torch.Tensor, t: torch.Tensor, inversion: str, margin: Union[float, str],
                          p: float = 1.0, beta: float = 1.0) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """The SUM of l(x_pq) over the pairs t_p > t_q (float64 scalar), its gradient d sum / d s (float64, length M)
    and the count C of those pairs (``pair_count``), in O(M log M) time and O(M) memory. ``s`` and ``t`` are
    vectors of the same length (no grad needed)."""
    if not is_decomposable(inversion, p):
        raise ValueError(f"pwr fast path: inversion {inversion!r} with p={p!r} is not decomposable; the fast path "
                         f"covers 'diff', 'exp' and 'power' with integer 1 <= p <= {MAX_FAST_POWER}; "
                         f"use method='tiled' (exact, O(M^2) time) instead")
    dev = s.device
    s = s.detach().to(torch.float64).reshape(-1)
    t = t.detach().to(torch.float64).reshape(-1)
    m_rel = s.numel()
    zero = torch.zeros((), dtype=torch.float64, device=dev)
    if m_rel < 2:
        return zero, torch.zeros_like(s), 0
    lam = 1.0 if margin == "teacher_diff" else 0.0
    mconst = margin_constant(margin, t)
    key_val = s - lam * t + mconst
    qry_val = s - lam * t
    k = 1 if inversion == "diff" else (int(p) if inversion == "power" else 0)
    is_exp = inversion == "exp"
    hi = float(torch.maximum(key_val.max(), qry_val.max()))
    lo = float(torch.minimum(key_val.min(), qry_val.min()))
    if is_exp:
        # one global shift: exp(beta (a - c)) <= 1 and exp(beta (c - b)) <= exp(beta (hi - lo)) never over/underflow
        if beta * (hi - lo) > _EXP_RANGE:
            raise ValueError(f"pwr fast path (exp): beta * (value range) = {beta} * {hi - lo:.4g} exceeds "
                             f"{_EXP_RANGE} (float64 exp would overflow); use method='tiled'")
        center = hi
    else:
        center = 0.5 * (hi + lo)  # |a - c|, |b - c| <= (hi - lo) / 2 keeps the binomial expansion well conditioned

    # items: M queries, M keys, pads up to n = 2^levels (inert: queries after everything with feature 0)
    n_real = 2 * m_rel
    levels = max(1, (n_real - 1).bit_length())
    n = 1 << levels
    f64 = dict(dtype=torch.float64, device=dev)
    i64 = dict(dtype=torch.int64, device=dev)
    # t positions: a run of g equal t starting at sorted rank r0 puts its g queries at 2 r0 .. 2 r0 + g - 1 and
    # its g keys right after them, so a key precedes a query exactly when its t is strictly smaller
    t_sorted, t_perm = torch.sort(t)
    r0, g = _runs(t_sorted)
    count = (m_rel * m_rel - int(g.sum())) // 2  # the sum over runs of g^2 is the sum over elements of g
    qpos_sorted = torch.arange(m_rel, **i64) + r0  # t position of the query of the relation of t-rank r
    # per relation: query t position, key t position (index_select / scatter_: much faster than x[idx] on a CPU)
    tq = torch.empty(m_rel, **i64).scatter_(0, t_perm, qpos_sorted)
    tk = torch.empty(m_rel, **i64).scatter_(0, t_perm, qpos_sorted + g)
    # value order: queries sorted by b; the same permutation sorts the keys (a = b + m, or a = b for
    # teacher_diff); merged with keys BEFORE queries at equal value (searchsorted left / right)
    b_sorted, v_perm = torch.sort(qry_val)
    a_sorted = key_val.index_select(0, v_perm)
    ranks = torch.arange(m_rel, **i64)
    if lam == 1.0:  # a = b: a run of g equal values starting at rank r0 puts its keys first, then its queries
        vr0, vg = _runs(b_sorted)
        kpos = ranks + vr0
        qpos = kpos + vg
        distinct_v = bool((vg == 1).all())  # then key r sits at 2 r, its query at 2 r + 1
    else:
        kpos = ranks + torch.searchsorted(b_sorted, a_sorted, right=False)  # queries with b < a come first
        qpos = ranks + torch.searchsorted(a_sorted, b_sorted, right=True)  # keys with a <= b come first
        distinct_v = False
    if is_exp:
        fa, fb = torch.exp(beta * (a_sorted - center)), torch.exp(-beta * (b_sorted - center))
    else:
        fa, fb = a_sorted - center, b_sorted - center
    code_k = (tk.index_select(0, v_perm) * 2 + 1).to(torch.int32)
    code_q = (tq.index_select(0, v_perm) * 2).to(torch.int32)
    # carried in arranged order from here on: code = 2 * t position + (1 for a key) (int32: n <= 2^30), feature;
    # pads keep t positions 2M..n-1 at the end of the value order
    code = torch.arange(0, 2 * n, 2, dtype=torch.int32, device=dev)
    f = torch.zeros(n, **f64)
    if distinct_v:  # strided copies instead of scatters
        code2, f2 = code[:n_real].view(m_rel, 2), f[:n_real].view(m_rel, 2)
        code2[:, 0], code2[:, 1], f2[:, 0], f2[:, 1] = code_k, code_q, fa, fb
        del code2, f2
    else:
        code.scatter_(0, kpos, code_k).scatter_(0, qpos, code_q)
        f.scatter_(0, kpos, fa).scatter_(0, qpos, fb)
    del tq, tk, code_k, code_q, fa, fb, kpos, qpos, a_sorted, b_sorted, v_perm, ranks, key_val, qry_val, t_sorted, s, t
    acc = torch.zeros(n, **f64)  # keys: + sum l'; queries: - sum l'
    total = zero.clone()
    counts = torch.zeros((), **f64)  # exp: the number of dominated pairs (the "- 1" of exp(beta x) - 1)
    work = _Work(n, k, dev)  # every temporary, allocated once (fresh multi-MB tensors cost page faults)
    if dev.type == "cpu" and levels > _CHUNK_LEVELS:
        # the top levels over the whole arrays; below, every group of 2^_CHUNK_LEVELS items is independent:
        # finishing it chunk by chunk keeps its working set in cache (memory traffic dominates on a CPU)
        orig = (code, f, acc)
        code, f, acc = _tree_pass(code, f, acc, levels, k, beta, total, counts, work, stop=_CHUNK_LEVELS)
        if code.data_ptr() != orig[0].data_ptr():  # the results lie in the work's second copies: swap them out
            work.bufs["i"][1], work.bufs["f"][4], work.bufs["f"][5] = orig
        size = 1 << _CHUNK_LEVELS
        cwork = work.head(size)
        for c0 in range(0, n, size):
            sl = slice(c0, c0 + size)
            res = _tree_pass(code[sl], f[sl], acc[sl], _CHUNK_LEVELS, k, beta, total, counts, cwork)[2]
            if res.data_ptr() != acc[sl].data_ptr():
                acc[sl].copy_(res)
    else:
        acc = _tree_pass(code, f, acc, levels, k, beta, total, counts, work)[2]
    del work
    # the final arrangement is the t order: the relation of t-rank r has its query at r + r0, its key at + g
    distinct_t = bool((g == 1).all())  # then the query of t-rank r sits at 2 r, its key at 2 r + 1
    acc_k = acc[:n_real].view(m_rel, 2)[:, 1] if distinct_t else acc.index_select(0, qpos_sorted + g)
    if k == 0:
        # every key item holds beta * sum of exp(beta (a_q - b_p)) over the queries it dominates: their total
        # over beta is the sum of the exp terms; the loss sum subtracts one per dominated pair
        if beta != 0.0:
            total = acc_k.sum() / beta - counts
        else:
            total = zero.clone()  # exp(0 x) - 1 = 0 on every pair
    grad_t = acc[:n_real].view(m_rel, 2).sum(1) if distinct_t else acc.index_select(0, qpos_sorted) + acc_k
    grad = torch.empty(m_rel, **f64).scatter_(0, t_perm, grad_t)
    return total, grad, count


class _Work:
    """The temporaries of ``_tree_pass`` (float64 and int64 vectors of n entries, and the second copies
    of code / f / acc for the ping-pong scatter), allocated once; ``head(size)`` gives views of their first
    ``size`` entries (the chunks reuse them)."""

    def __init__(self, n: int, k: int, dev: torch.device, bufs: Optional[dict] = None) -> None:
        if bufs is not None:
            self.bufs = bufs
            return
        f64 = dict(dtype=torch.float64, device=dev)
        i64 = dict(dtype=torch.int64, device=dev)
        nf = 9 if k == 0 else 9 + 3 + k + 1
        self.bufs = dict(f=[torch.empty(n, **f64) for _ in range(nf)],
                         i=[torch.empty(n, **i64)] + [torch.empty(n, dtype=torch.int32, device=dev) for _ in range(2)],
                         pos=torch.arange(n + 1, **f64))

    def head(self, size: int) -> "_Work":
        return _Work(0, 0, torch.device("cpu"), {key: ([b[:size] for b in v] if isinstance(v, list) else v[:size + 1])
                                                 for key, v in self.bufs.items()})


def _tree_pass(code: torch.Tensor, f: torch.Tensor, acc: torch.Tensor, levels: int, k: int,
               beta: float, total: torch.Tensor, counts: torch.Tensor, work: _Work,
               stop: int = 0) -> Tuple[torch.Tensor, ...]:
    """The top-down pass (module docstring). In arranged order: ``code`` = 2 * t position + (1 for a key)
    (int32), ``f`` features (exp: exp(beta (a - c)) for keys, exp(beta (c - b)) for queries; power: a - c, b - c).
    Runs the levels ``levels`` .. ``stop`` + 1 (groups of 2^level items); ``power`` adds the loss sum into
    ``total`` (in place), ``exp`` adds the number of dominated pairs into ``counts`` (the caller gets the exp sum
    from the keys' gradient sums); returns (code, f, acc) in the arrangement reached, ``acc`` plus each item's
    gradient sum (after the last level, stop = 0, the arrangement is the t order). The inputs' storage is
    reused as scratch. Every temporary is a buffer of ``work`` (out= / in-place ops)."""
    n = code.numel()
    fb, ibuf = work.bufs["f"], work.bufs["i"]
    pos = work.bufs["pos"]
    a_, b_, c_, d_ = fb[0], fb[1], fb[2], fb[3]
    f2, acc2 = fb[4], fb[5]
    ib, code2, i32 = ibuf
    mk, mq, r = fb[6], fb[7], fb[8]
    jr = pos[1:]
    if k:
        binom_k, binom_k1 = _binom_row(k), _binom_row(k - 1)
        vq, gq, gk = fb[9], fb[10], fb[11]
        pw = fb[12:12 + k + 1]
    for lev in range(levels, stop, -1):
        width = 1 << lev
        shape = (n >> lev, width)
        A, B, C, D = a_.view(shape), b_.view(shape), c_.view(shape), d_.view(shape)
        torch.bitwise_and(code, 1, out=i32)
        mk.copy_(i32)  # 1.0 for a key (kf)
        torch.bitwise_right_shift(code, lev, out=i32)
        i32.bitwise_and_(1)
        r.copy_(i32)  # 1.0 in the right half of the group (t position bit lev - 1)
        torch.mul(mk, r, out=mq)
        mk.sub_(mq)  # keys of the left half: kf (1 - r)
        torch.sub(r, mq, out=mq)  # queries of the right half: r (1 - kf)
        if k == 0:  # exp
            torch.mul(f, mk, out=a_)
            torch.mul(f, mq, out=b_)
            torch.cumsum(A, 1, out=C)
            torch.cumsum(B, 1, out=D)  # sum of exp(beta (c - b_i)) over right queries before (value < a_j)
            torch.sub(C[:, -1:].clone(), C, out=C)  # sum of exp(beta (a_j - c)) over left keys after (value > b_i)
            b_.mul_(c_)  # T_i = sum_j exp(beta (a_j - b_i)) over the dominating keys
            acc.addcmul_(a_, d_, value=beta).sub_(b_, alpha=beta)
            torch.cumsum(mq.view(shape), 1, out=C)  # right queries before each left key: the pair count
            counts.add_(torch.dot(mk, c_))
        else:  # (a' - b')^k by the binomial expansion; keys' sums after each query, queries' sums before each key
            torch.add(mk, mq, out=pw[0])
            for e in range(1, k + 1):
                torch.mul(pw[e - 1], f, out=pw[e])
            vq.zero_()
            gq.zero_()
            gk.zero_()
            for e in range(k + 1):
                torch.mul(pw[e], mk, out=a_)
                torch.cumsum(A, 1, out=C)
                torch.sub(C[:, -1:].clone(), C, out=C)  # S_e = sum of a'^e over the left keys dominating
                vq.add_(torch.mul(c_, pw[k - e], out=a_), alpha=binom_k[e] * (-1.0) ** (k - e))
                if e <= k - 1:
                    sign = binom_k1[e] * (-1.0) ** (k - 1 - e)
                    gq.add_(torch.mul(c_, pw[k - 1 - e], out=a_), alpha=sign)
                    # key side: sum_i (a' - b'_i)^(k-1) = sum_e C(k-1,e) a'^e (-1)^(k-1-e) R_(k-1-e)
                    torch.mul(pw[k - 1 - e], mq, out=a_)
                    torch.cumsum(A, 1, out=D)
                    gk.add_(d_.mul_(pw[e]), alpha=sign)
            total.add_(torch.dot(vq, mq))
            gk.mul_(mk).sub_(gq.mul_(mq))
            acc.add_(gk, alpha=float(k))
        # stable partition of every group by the split bit: left half first, each half still in value order;
        # a left item moves back by the number of right items before it, a right one forward by the lefts after
        # with cr = cumsum(r) (inclusive), n_left = width - cr_last and j = 1..width:
        # dest = pos - cr + r (n_left - j + 2 cr)
        torch.cumsum(r.view(shape), 1, out=C)
        torch.sub(width - C[:, -1:], jr[:width], out=A)
        a_.add_(c_, alpha=2.0)
        torch.sub(pos[:n], c_, out=d_).addcmul_(r, a_)
        ib.copy_(d_)
        code2.scatter_(0, ib, code)
        f2.scatter_(0, ib, f)
        acc2.scatter_(0, ib, acc)
        code, code2, f, f2, acc, acc2 = code2, code, f2, f, acc2, acc
    return code, f, acc


def _inversion_and_grad(x: torch.Tensor, inversion: str, p: float, beta: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """l(x) and l'(x) elementwise (not ranknet); both 0 where x <= 0, as in the dense reference."""
    pos = x > 0
    if inversion == "diff":
        return torch.where(pos, x, torch.zeros_like(x)), pos.to(x.dtype)
    if inversion == "power":
        xc = x.clamp(min=torch.finfo(x.dtype).tiny)
        return (torch.where(pos, xc ** p, torch.zeros_like(x)),
                torch.where(pos, p * xc ** (p - 1.0), torch.zeros_like(x)))
    if inversion == "exp":
        e = torch.exp(beta * x)
        return torch.where(pos, e - 1.0, torch.zeros_like(x)), torch.where(pos, beta * e, torch.zeros_like(x))
    raise ValueError(f"unknown inversion {inversion!r}")


def pwr_sum_and_grad_tiled(s: torch.Tensor, t: torch.Tensor, inversion: str, margin: Union[float, str],
                           p: float = 1.0, beta: float = 1.0, tile: int = 4096) -> Tuple[torch.Tensor, torch.Tensor]:
    """Exact SUM of l(x_pq) over t_p > t_q and d sum / d s for EVERY inversion (ranknet and non-integer p
    included), block by block: O(M^2) time, O(M + tile^2) memory (blocks of tile x tile pairs, float64)."""
    if not isinstance(tile, int) or tile < 1:
        raise ValueError(f"pwr tiled path: tile must be a positive int, got {tile!r}")
    s = s.detach().to(torch.float64).reshape(-1)
    t = t.detach().to(torch.float64).reshape(-1)
    m_rel = s.numel()
    lam = 1.0 if margin == "teacher_diff" else 0.0
    mconst = margin_constant(margin, t) if inversion != "ranknet" else 0.0
    total = torch.zeros((), dtype=torch.float64, device=s.device)
    grad = torch.zeros_like(s)
    for p0 in range(0, m_rel, tile):
        sp, tp = s[p0:p0 + tile, None], t[p0:p0 + tile, None]
        for q0 in range(0, m_rel, tile):
            sq, tq = s[None, q0:q0 + tile], t[None, q0:q0 + tile]
            mask = tp > tq
            if not bool(mask.any()):
                continue
            ds = sp - sq
            if inversion == "ranknet":
                val = F.softplus(-beta * ds)
                der = beta * torch.sigmoid(-beta * ds)  # d l / d s_q ( = - d l / d s_p)
            else:
                x = (mconst + lam * (tp - tq)) - ds
                val, der = _inversion_and_grad(x, inversion, p, beta)
            val = torch.where(mask, val, torch.zeros_like(val))
            der = torch.where(mask, der, torch.zeros_like(der))
            total = total + val.sum()
            grad[p0:p0 + tile] -= der.sum(1)
            grad[q0:q0 + tile] += der.sum(0)
    return total, grad


METHODS = ("auto", "fast", "tiled", "dense")


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


class _PWRSumFunction(torch.autograd.Function):
    """mean = sum / C with a gradient computed in the forward by the sub-quadratic (or tiled) pass and stored:
    the backward is O(M) (grad_output times the stored vector). Not twice differentiable."""

    @staticmethod
    def forward(ctx, s: torch.Tensor, total: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(grad)
        return total.to(s.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return (grad * grad_out.to(grad.dtype)), None, None


def pwr_loss(s: torch.Tensor, t: torch.Tensor, inversion: str = "exp", margin: Union[float, str] = "teacher_diff",
             p: float = 1.0, beta: float = 1.0, method: str = "auto", tile: int = 4096) -> torch.Tensor:
    """The PWR loss (the mean of l over the ordered pairs t_p > t_q) of relation vectors ``s`` (student, with
    grad) and ``t`` (teacher, detached), by ``method`` (see ``resolve_method``); ``dense`` is ``pwr_loss_dense``.
    Sums run in float64; the loss comes back in ``s.dtype``, its gradient (d loss / d s) in ``s.dtype``."""
    from .pwr import pwr_loss_dense  # the O(M^2)-memory reference

    if s.shape != t.shape or s.dim() != 1:
        raise ValueError(f"s and t must be vectors of the same length, got {tuple(s.shape)} and {tuple(t.shape)}")
    method = resolve_method(method, inversion, p)
    if method == "dense":
        return pwr_loss_dense(s, t, inversion, margin, p, beta)
    t = t.detach()
    if method == "fast":
        total, grad, count = pwr_sum_and_grad_fast(s, t, inversion, margin, p, beta)
    else:
        count = pair_count(t)
        if count:
            total, grad = pwr_sum_and_grad_tiled(s, t, inversion, margin, p, beta, tile)
    if count == 0:
        return zero_loss(s)
    mean = total / count
    grad = (grad / count).to(s.dtype)
    return _PWRSumFunction.apply(s, mean, grad)
