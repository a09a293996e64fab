"""Exact PWR loss and gradient in O(M log M) time and O(M) memory (``diff``, integer ``power``, ``exp``), and the
dispatch ``pwr_loss`` over the methods (the tiled and dense paths live in ``pwr_math.py``).

Notation (``pwr_math.py``): M relations with teacher values t and student values s; the loss is the sum over
ordered pairs (p, q) with t_p > t_q of l(x_pq), x_pq = m_pq - (s_p - s_q), divided by the exact count
C = #{(p, q): t_p > t_q}.

Decomposition. With the KEY a_q = s_q - lam t_q + const and the QUERY b_p = s_p - lam t_p (``resolve_margin``:
lam = 1, const = 0 for ``teacher_diff``), x_pq = a_q - b_p. Every decomposable l vanishes for x <= 0, so only the
pairs with t_q < t_p AND a_q > b_p count, and on that region
- relu(x)^k = sum_c binom(k, c) a^c (-b)^(k-c)                       (``diff`` is k = 1, ``power`` integer p = k);
- exp(beta x) - 1 = exp(beta a) exp(-beta b) - 1;
so a query needs only k + 1 (or one) sums over the keys that dominate it, and the gradient
dL/ds_r = (sum over queries p dominated by key r of l'(a_r - b_p) - sum over keys q dominating query r of
l'(a_q - b_r)) / C needs the same kind of sums from both sides.

The dominance sums come from one top-down pass over a binary tree on the t order (``pwr_tree.py``; log2(n) levels, n
the item count rounded up to a power of two). At each level the items are arranged group by group (a group = 2^level
consecutive t positions), each group in value order. In every group the right half's queries receive the suffix sums
of the left half's keys (a segmented cumsum on a (groups, width) view) and the left half's keys the prefix sums of
the right half's queries; a stable partition by the next t bit (one cumsum, one scatter per carried vector) gives
the next level's arrangement, and after the last level the t order. Every pair (q, p) with t-position(q) <
t-position(p) meets at exactly one level: the one where they split.

Items. When a = b (``teacher_diff``, or a zero constant margin) ONE item per relation is both key and query: the t
order breaks teacher ties by ascending value and the value order breaks value ties by t position, so a tied pair
(in t or in value) is never counted. Otherwise a relation has a query item and a key item (queries before keys at
equal t, keys before queries at equal value). Orders come from int64 sorts of order-preserving integer keys of the
float64 values (radix sorts on a CPU: about 3x faster than a float64 sort).

Numerics: everything in float64. ``exp`` shifts by the middle c of the value range R (a tensor: no host read): key
features exp(beta (a - c)) and query features exp(beta (c - b)) lie in [exp(-beta R / 2), exp(beta R / 2)], normal
float64 numbers for beta R <= 1400 (``EXP_RANGE``); the products of a counted pair are exp(beta (a - b)) >= 1, finite
wherever the dense reference is. For relations of normalised embeddings (in [0, 2]) R <= 4 + |const|; the head
refuses (``fast``) or avoids (``auto``) a beta beyond that bound, and this function checks the actual range only
with debug checks on (``insightface_pwr.heads.base.debug_checks``): a per-call check would be a host read.
``power`` centres the values at the middle of their range before the binomial expansion (about
binom(k, k/2) (R/2)^k ulps per term): fast ``power`` is limited to integer p <= ``MAX_FAST_POWER``. The pair count
C is exact (int64). No host read anywhere in the forward or the backward.

Two shortcuts (``pwr_small.py``, the same items, orders, features and tie rules): up to ``pwr_small.SMALL_M`` items
the whole sum comes from a square-root block decomposition (t-blocks, value-blocks, two dense masked products and
a 2-D prefix-sum grid: a fixed number of operations, no per-level loop); above, the tree can stop
``pwr_small.DENSE_LEVELS`` levels early and finish every group of 2^DENSE_LEVELS items with the same blocks, all
groups of a cache-sized chunk at once (``dense_groups``: the rank in the group serves as the value). Off by
default: on a CPU it does not beat the tree's own levels.

On a CPU, where the compiled pass is built (``pwr_cpu.py``, ``_pwr_cpu.c``; the default), the sorts and the pass run
as C loops instead: the same items, orders and features, no padding, no block shortcut; the vectorised pass below
is what a GPU runs (and a CPU with ``INSIGHTFACE_PWR_CPU_KERNEL=0`` or without the library).

Cost: two int64 sorts of M keys (float32 relations, one item per relation; three for float64, three plus searches
for pair items), then log2(n) levels of about 20 vectorised O(n) operations (``pwr_tree.py``; on a CPU in
cache-sized chunks: three vectors of n entries and their second copies at the peak, 79 bytes per relation at
N = 4096 for exp with teacher-diff, head included). The gradient is computed in the forward and stored: the
backward is one multiplication.
"""
from __future__ import annotations

from typing import Callable, Tuple, Union

import torch

from . import pwr_cpu, pwr_small
from .pwr_tree import run_tree
from .base import debug_checks_enabled
from .pwr_math import (BITS32, MAX_FAST_POWER, METHODS, is_decomposable, pair_count, pwr_loss_dense,
                       pwr_sum_and_grad_tiled, resolve_margin, resolve_method, key_values, order_key, t_order,
                       tie_runs)

__all__ = ["pwr_loss", "pwr_sum_grad_count", "with_grad", "pair_count", "is_decomposable", "resolve_method",
           "pwr_sum_and_grad_fast", "exp_fits", "check_exp_range", "pwr_sum_and_grad_tiled", "MAX_FAST_POWER",
           "METHODS", "EXP_RANGE"]

EXP_RANGE = 1400.0  # beta * (value range) beyond which the shifted exp features leave float64's normal range


def exp_fits(beta: float, margin: Union[float, str]) -> bool:
    """Whether ``exp`` with this beta and margin stays in the fast path's range for relations in [0, 2] (cosine
    or euclidean distances of normalised rows): value range R <= 4 + |const| (teacher_std <= 1)."""
    const = 0.0 if margin == "teacher_diff" else (1.0 if margin == "teacher_std" else abs(float(margin)))
    return beta * (4.0 + const) <= EXP_RANGE


def check_exp_range(beta: float, span: Callable[[], torch.Tensor]) -> None:
    """With debug checks on (then ``span()``, the range of the values fed to ``exp``'s features, is computed and
    read on the host), ValueError if beta * span leaves the fast path's range ``EXP_RANGE``; else nothing (no
    operation)."""
    if debug_checks_enabled():
        value = float(span())
        if beta * value > EXP_RANGE:
            raise ValueError(f"pwr fast path (exp): beta * (value range) = {beta} * {value:.4g} exceeds "
                             f"{EXP_RANGE} (float64 exp would leave its normal range); use method='tiled'")


def _flat(x: torch.Tensor) -> torch.Tensor:
    """``x`` detached and flat, with no call where it already is (each call is a dispatch at small N)."""
    x = x.detach() if x.requires_grad else x
    return x if x.dim() == 1 else x.reshape(-1)


def _setup_single(v: torch.Tensor, s: torch.Tensor, t: torch.Tensor, n: int) -> Tuple[torch.Tensor, ...]:
    """One item per relation (key value = query value = v, monotone in s at equal t). Returns (code = t position
    of each item in value order (int32, pads M..n-1 last), v in value order (float64, M), t order (relation of
    each t position), C)."""
    m, dev = v.numel(), v.device
    t_perm, count = t_order(v, s, t)
    v_keys, vo = pwr_cpu.sort(order_key(v.index_select(0, t_perm)))
    if n == m:
        return vo.to(torch.int32), key_values(v_keys), t_perm, count
    code = torch.arange(n, dtype=torch.int32, device=dev)
    code[:m] = vo
    return code, key_values(v_keys), t_perm, count


def _setup_pairs(qry: torch.Tensor, key: torch.Tensor, t: torch.Tensor, n: int):
    """A query item and a key item per relation. Returns (code = 2 * t position + 1 for a key, in value order
    (int32, pads: queries at the end), key / query values in value order and their positions there, t order
    bookkeeping (t_perm, query t position of each t rank, run lengths), C)."""
    m = qry.numel()
    dev = qry.device
    t_sorted, t_perm = pwr_cpu.sort(order_key(t.to(torch.float64)), stable=False)
    r0, g = tie_runs(t_sorted)
    count = r0.sum()  # C = the sum of the run starts (pwr_math.pair_count)
    del t_sorted
    # a run of g equal t starting at sorted rank r0 puts its g queries at 2 r0 .. 2 r0 + g - 1, its keys after
    qpos_sorted = torch.arange(m, device=dev) + r0
    tq = torch.empty(m, dtype=torch.int64, device=dev).scatter_(0, t_perm, qpos_sorted)
    tk = torch.empty_like(tq).scatter_(0, t_perm, qpos_sorted + g)
    v_perm = pwr_cpu.sort(order_key(qry), stable=False)[1]  # key = query + const: the same order
    b_sorted, a_sorted = qry.index_select(0, v_perm), key.index_select(0, v_perm)
    ranks = torch.arange(m, device=dev)
    kpos = ranks + torch.searchsorted(b_sorted, a_sorted, right=False)  # queries with b < a come first
    qpos = ranks + torch.searchsorted(a_sorted, b_sorted, right=True)  # keys with a <= b come first
    code = torch.arange(0, 2 * n, 2, dtype=torch.int32, device=dev)
    code.scatter_(0, kpos, (tk.index_select(0, v_perm) * 2 + 1).to(torch.int32))
    code.scatter_(0, qpos, (tq.index_select(0, v_perm) * 2).to(torch.int32))
    return code, a_sorted, b_sorted, kpos, qpos, t_perm, qpos_sorted, g, count


def pwr_sum_and_grad_fast(s: torch.Tensor, t: torch.Tensor, inversion: str, margin: Union[float, str],
                          p: float = 1.0, beta: float = 1.0) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The SUM of l(x_pq) over the pairs t_p > t_q (float64 0-d tensor), its gradient d sum / d s (float64,
    length M) and the count C of those pairs (int64 0-d tensor), in O(M log M) time and O(M) memory, with no
    host read (except the range check of ``exp`` when debug checks are on)."""
    if not is_decomposable(inversion, p):
        raise ValueError(f"pwr fast path: inversion {inversion!r} with p={p!r} is not decomposable; the fast path "
                         f"covers 'diff', 'exp' and 'power' with integer 1 <= p <= {MAX_FAST_POWER}; "
                         f"use method='tiled' (exact, O(M^2) time) instead")
    dev = s.device
    s, t = _flat(s), _flat(t)
    m = s.numel()
    if m < 2:
        return (torch.zeros((), dtype=torch.float64, device=dev), torch.zeros(m, dtype=torch.float64, device=dev),
                torch.zeros((), dtype=torch.int64, device=dev))
    lam, const = resolve_margin(margin, t.to(torch.float64) if margin == "teacher_std" else t)
    single = lam == 1.0 or (isinstance(const, float) and const == 0.0)
    k = 1 if inversion == "diff" else (int(p) if inversion == "power" else 0)
    compiled = 2 * m <= pwr_cpu.MAX_ITEMS and t.device == dev and pwr_cpu.enabled(dev)  # no padding, no blocks
    if compiled and s.dtype in BITS32 and t.dtype in BITS32:  # the sum in two compiled calls
        total, grad, count, span = (pwr_cpu.single_sum(s.float(), t.float(), int(lam), k, beta) if single else
                                    pwr_cpu.pair_sum(s.float(), t.float(), const, k, beta))  # (pairs: lam = 0)
        if k == 0:
            check_exp_range(beta, lambda: span)
        return total, grad, count
    s64 = s.to(torch.float64)
    qry = s64 - t if lam else s64  # (float64: t is promoted)
    key = qry if single else qry + const
    if single:
        lo, hi = torch.aminmax(qry)
    else:
        lo, hi = torch.minimum(qry.min(), key.min()), torch.maximum(qry.max(), key.max())
    if k == 0:
        check_exp_range(beta, lambda: hi - lo)
    twice_c = hi + lo  # (the middle c of the range, doubled: x - c is one subtraction with alpha 0.5)
    del s64  # (s, qry and key hold what is needed)
    n_items = m if single else 2 * m
    if not compiled and n_items <= pwr_small.SMALL_M:  # a fixed number of operations (pwr_small.py)
        return pwr_small.pwr_sum_and_grad_blocks(qry, key, s, t, single, k, beta, twice_c)
    levels = max(1, (n_items - 1).bit_length())
    n = n_items if compiled else 1 << levels
    if single:
        code, v_val, t_perm, count = _setup_single(qry, s, t, n)
        t_perm = t_perm.to(torch.int32)  # half the memory while the pass runs
        z = torch.sub(v_val, twice_c, alpha=0.5)
        if n == m:
            f = torch.exp(z.mul_(beta)) if k == 0 else z
        else:  # pads: 1 (exp) or 0 (power)
            f = torch.full((n,), 1.0 if k == 0 else 0.0, dtype=torch.float64, device=dev)
            f[:m] = torch.exp(z.mul_(beta)) if k == 0 else z
        del v_val, qry, key, z  # (none of them is needed by the pass: 8 bytes per relation each)
        acc, tot, cnt = (pwr_cpu.run_tree_cpu(code, f, k, beta, True) if compiled else
                         run_tree(code, f, levels, k, beta, True))
        grad_t = acc[:m]
    else:
        code, a_sorted, b_sorted, kpos, qpos, t_perm, qpos_sorted, g, count = _setup_pairs(qry, key, t, n)
        f = torch.zeros(n, dtype=torch.float64, device=dev)
        if k == 0:
            f.scatter_(0, kpos, torch.exp(torch.sub(a_sorted, twice_c, alpha=0.5).mul_(beta)))
            f.scatter_(0, qpos, torch.exp(torch.sub(b_sorted, twice_c, alpha=0.5).mul_(-beta)))
        else:
            f.scatter_(0, kpos, torch.sub(a_sorted, twice_c, alpha=0.5))
            f.scatter_(0, qpos, torch.sub(b_sorted, twice_c, alpha=0.5))
        del a_sorted, b_sorted, kpos, qpos, qry, key
        acc, tot, cnt = (pwr_cpu.run_tree_cpu(code, f, k, beta, False) if compiled else
                         run_tree(code, f, levels, k, beta, False))
        grad_t = acc.index_select(0, qpos_sorted) + acc.index_select(0, qpos_sorted + g)
    total = tot - cnt if k == 0 else tot
    grad = torch.empty(m, dtype=torch.float64, device=dev).scatter_(0, t_perm.to(torch.int64), grad_t)
    return total, grad, count


class _PWRSumFunction(torch.autograd.Function):
    """A loss value with its gradient w.r.t. ``s`` computed in the forward and stored: the backward is one
    multiplication. Not twice differentiable (``with_grad``)."""

    @staticmethod
    def forward(ctx, s: torch.Tensor, value: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(grad)
        return value if value.dtype == s.dtype else value.to(s.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return grad * (grad_out if grad_out.dtype == grad.dtype else grad_out.to(grad.dtype)), None, None


def with_grad(x: torch.Tensor, value: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``value`` (cast to x's dtype) as a function of ``x`` whose gradient is ``grad`` (computed already)."""
    return _PWRSumFunction.apply(x, value, grad)


def pwr_sum_grad_count(s: torch.Tensor, t: torch.Tensor, inversion: str, margin: Union[float, str], p: float,
                       beta: float, method: str, tile: int = 4096) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(the float64 SUM of l over the pairs t_p > t_q, its float64 gradient d sum / d s, the int64 count C) by
    ``method`` ``fast`` or ``tiled`` (no host read)."""
    if method == "fast":
        return pwr_sum_and_grad_fast(s, t, inversion, margin, p, beta)
    total, grad = pwr_sum_and_grad_tiled(s, t, inversion, margin, p, beta, tile)
    return total, grad, pair_count(t)


def pwr_loss(s: torch.Tensor, t: torch.Tensor, inversion: str = "exp", margin: Union[float, str] = "teacher_diff",
             p: float = 1.0, beta: float = 1.0, method: str = "auto", tile: int = 4096) -> torch.Tensor:
    """The PWR loss (the mean of l over the ordered pairs t_p > t_q) of relation vectors ``s`` (student, with
    grad) and ``t`` (teacher, detached), by ``method`` (see ``resolve_method``); ``dense`` is ``pwr_loss_dense``.
    Sums run in float64; the loss and its gradient come back in ``s.dtype``. A batch with no strictly ordered
    pair gives 0 (attached to ``s``). ``fast`` and ``tiled`` read no value on the host."""
    if s.shape != t.shape or s.dim() != 1:
        raise ValueError(f"s and t must be vectors of the same length, got {tuple(s.shape)} and {tuple(t.shape)}")
    method = resolve_method(method, inversion, p)
    if method == "dense":
        return pwr_loss_dense(s, t, inversion, margin, p, beta)
    total, grad, count = pwr_sum_grad_count(s, t.detach(), inversion, margin, p, beta, method, tile)
    denom = count.clamp(min=1).to(torch.float64)  # C = 0: every sum is 0, so is the loss
    return with_grad(s, total / denom, (grad / denom).to(s.dtype))
