"""Exact PWR sum and gradient for small M by square-root decomposition: a fixed number of tensor operations
(no per-level loop), O(M^1.5) time and memory. ``pwr_fast.pwr_sum_and_grad_fast`` takes it for M <= ``SMALL_M``.

Notation as in ``pwr_fast.py``: keys a_q = s_q - lam t_q + const, queries b_p = s_p - lam t_p, and the sum runs
over the pairs (q, p) with t_q < t_p and a_q > b_p of l(a_q - b_p) = sum_e u_e(a_q) w_e(b_p) (on that region;
exp: exp(beta a) exp(-beta b) - 1, power k: the binomial expansion of (a - b)^k around the middle of the range).

Items and orders. As in the tree, one item per relation when a = b (ordered by t, teacher ties by ascending value),
else a query item and a key item per relation (queries before keys at equal t); a pair (key q, query p) counts iff
pos(q) < pos(p) (t order) and a_q > b_p. The VALUE order sorts the items stably by value in t order (one item per
relation: value ties by t position; pair items: keys before queries at equal value), so for two items
rank(q) > rank(p) with pos(q) < pos(p) implies a_q > b_p.

Blocks. The n = B L items (padded: pads are neither key nor query) are cut into B t-blocks of L consecutive t
positions and, independently, into B value-blocks of L consecutive value ranks. A counted pair (q, p) is either
- in one t-block: a dense (B, L, L) mask pos(q) < pos(p) and a_q > b_p, two batched matmuls with the features;
- in different t-blocks (tblk(q) < tblk(p)) but one value-block: the same in value order, mask
  tblk(q) < tblk(p) and a_q > b_p;
- in different t-blocks and value-blocks: then vblk(q) > vblk(p) (vblk(q) < vblk(p) would mean a_q <= b_p), and
  the sums come from a B x B grid of the features summed by (t-block, value-block), its 2-D prefix sums and one
  gather per item.
Every sum is exact (no approximation); no host read; about 40 tensor operations whatever M (the scratch, values
and features included, is kept per block shape with its views: ``_Space``, ``_workspace``). ``block_sums`` also
takes a batch of independent problems (``groups``): with ``DENSE_LEVELS`` > 0 the tree of ``pwr_fast.py`` hands it
its groups of 2^DENSE_LEVELS items (``dense_groups``) instead of running its lowest levels (off by default).
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn.functional as F

from .common import kept
from .pwr_math import binom_row, pair_count, t_order

__all__ = ["SMALL_M", "DENSE_LEVELS", "block_shape", "block_sums", "dense_groups",
           "pwr_sum_and_grad_blocks"]

SMALL_M = 7000  # up to this many items the blocks beat the tree on a CPU (N <= 118 at one item per relation)
_F64 = torch.float64
DENSE_LEVELS = 0  # > 0: the tree's lowest levels by blocks, in groups of 2^DENSE_LEVELS items (pwr_fast._run_tree);
# off: on a CPU no setting (4 .. 12) beat the tree's own levels (benchmarks/RESULTS.md); a knob for devices where
# the per-level launches dominate (not measured)
_DENSE_CHUNK = 8192  # items per dense step on a CPU (both masks: 2 x 8192 x 32 float64, 4 MB)
_DENSE_CHUNK_GPU = 1 << 18  # elsewhere (fewer launches; 32 MB of masks)
_SPACES: dict = {}  # (B, L, m, E, k, device) -> the small path's ``_Space`` for that shape (its masks, grid, products,
# values and features), kept: fresh buffers cost their page faults on every call (~0.15 ms at N = 92 for the mask
# and the grid); up to 8 shapes (a few batch sizes at once without reallocating). Kept per device: one step at a
# time per device uses them (as a training loop does; DataParallel's threads run on different devices)
_CONSTS: dict = {}  # (B, L, groups, device) -> the constant tensors of that block shape (a few kB each); also the
# exp feature scales per beta


def block_shape(n_items: int) -> Tuple[int, int]:
    """(B, L): B blocks of L items, B L >= n_items, L a power of two. The dense parts cost about n L, the grid
    B^2: L ~ sqrt(n) / 2 (a dense element costs less than a grid cell)."""
    L = 1 << max(2, round(math.log2(max(n_items, 4) / 4) / 2))
    return -(-n_items // L), L


def _consts(B: int, L: int, groups: int, dev: torch.device):
    """[strict upper; strict lower] triangles (2, 1, L, L) float64; per value rank, the constant part of its U
    cell (the reversed value-block in its group plus the group's offset: ``block_sums``) and of its W cell (the
    constant of the W cells minus the former). Cached per shape."""
    def make():
        up = torch.ones(L, L, dtype=_F64, device=dev).triu_(1)
        bg, P = B // groups, B // groups + 1
        vbr = torch.arange(B * L - 1, -1, -1, device=dev) >> (L.bit_length() - 1)  # (B - 1) - value-block
        cw = (bg - 1) * (bg + 2)
        if groups > 1:
            grp = torch.arange(B * L, device=dev) // (bg * L)
            vbr = vbr - (groups - 1 - grp) * bg + grp * (P * P - bg * P)  # local reversed block + group offset
            cw = cw + 2 * grp * P * P
        return torch.stack((up, up.t())).unsqueeze(1), vbr, cw - vbr

    return kept(_CONSTS, (B, L, groups, str(dev)), make, 16)


class _Space:
    """What ``block_sums`` writes for one block shape (B blocks of L items, ``groups``) and E features (``eu`` of
    them key features), with the views it uses, made once: ``Y`` (2, n) float64, the values in t order | scratch;
    ``FF`` (E, 2, n) float64, the features in t order | in value order; the (2 B, L, L) masks, the products, the
    cells, the grid and the gathered grid sums. The small path keeps one per shape (``_workspace``: a view costs a
    microsecond or two, the path needs some thirty); ``dense_groups`` makes one per sub-chunk."""

    def __init__(self, Y: torch.Tensor, FF: torch.Tensor, eu: int, B: int, L: int, groups: int = 1,
                 mask: torch.Tensor = None) -> None:
        n, E, dev = B * L, FF.shape[0], Y.device
        ew = E - eu
        P = B // groups + 1
        self.n, self.E, self.eu, self.P, self.shift = n, E, eu, P, L.bit_length() - 1
        self.tris, vbr, wbr = _consts(B, L, groups, dev)
        self.y0, self.y1 = Y[0], Y[1]
        yb = Y.view(2 * B, L)
        self.ycol, self.yrow = yb.unsqueeze(2), yb.unsqueeze(1)
        self.f0, self.fv = FF[:, 0], FF[:, 1]
        # [U, U by value] and [W, W by value] as (2 B, E, L) blocks: T^T = U^T M, R^T = W^T M^T (E x L @ L x L)
        self.xu = FF[:eu].view(eu, 2 * B, L).transpose(0, 1)
        self.xw = FF[eu:].view(ew, 2 * B, L).transpose(0, 1)
        self.mask = torch.empty(2 * B, L, L, dtype=_F64, device=dev) if mask is None else mask
        self.mask4, self.mask_t = self.mask.view(2, B, L, L), self.mask.transpose(1, 2)
        self.out_t = torch.empty(2 * B, eu, L, dtype=_F64, device=dev)
        self.out_r = torch.empty(2 * B, ew, L, dtype=_F64, device=dev)
        self.t_blocks = self.out_t.view(2, B, eu, L).transpose(1, 2)  # -> (2, eu, n): a view when eu = 1
        self.r_blocks = self.out_r.view(2, B, ew, L).transpose(1, 2)
        self.T = self.t_blocks.reshape(2, eu, n) if eu == 1 else None
        self.t01 = (self.T[0], self.T[1]) if eu == 1 else None
        self.cells = torch.empty(E, n, dtype=torch.int64, device=dev)
        self.cells_u, self.cells_w = self.cells[:eu], self.cells[eu:]
        self.vbr, self.wbr = vbr.expand(eu, n), wbr.expand(ew, n)
        self.grid = torch.empty(E, groups * P * P, dtype=_F64, device=dev)
        self.grid_tail, self.grid4 = self.grid[:, P + 1:], self.grid.view(E, groups, P, P)
        self.g = torch.empty(E, n, dtype=_F64, device=dev)
        self.g_u, self.g_w = self.g[:eu], self.g[eu:]


def block_sums(ws: _Space, vperm: torch.Tensor, fv_ready: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """The dominance sums of the n = B L items of ``ws`` (``_Space``: values ``ws.y0`` and features ``ws.f0`` in t
    order, rows :eu the key features U, rows eu: the query features W, zero for an item that is not a key, resp.
    not a query, and for pads; the features in value order ``ws.fv`` are written here unless ``fv_ready``);
    ``vperm`` the value order (t position of each value rank). Returns T (eu, n): for each item the sum of U over
    the items dominating it, and R (E - eu, n): the sum of W over the items it dominates (q dominates p: earlier in
    t order and v_q > v_p; the value order must list q after p then, and p after q when v_q = v_p). With groups > 1
    the items form that many independent problems of n / groups consecutive t positions (the value order listing
    them group by group): only pairs within a group count."""
    tb = vperm >> ws.shift  # t-block of each value rank
    torch.mul(tb, -1.0, out=ws.y1)  # minus it, float64: row 1 of Y then compares as row 0 does
    if not fv_ready:
        torch.gather(ws.f0, 1, vperm.expand(ws.E, ws.n), out=ws.fv)
    # the dense masks M[i, j] (item i dominates item j), float straight from one comparison: the first B blocks in
    # one t-block (position i < j and v_i > v_j), the next B in one value-block (value order: rank i > j, so
    # v_i > v_j, and t-block tb_i < tb_j)
    torch.gt(ws.ycol, ws.yrow, out=ws.mask)
    ws.mask4.mul_(ws.tris)
    torch.bmm(ws.xu, ws.mask, out=ws.out_t)
    torch.bmm(ws.xw, ws.mask_t, out=ws.out_r)
    T = ws.T if ws.T is not None else ws.t_blocks.reshape(2, ws.eu, ws.n)  # [t-blocks, value-blocks (value order)]
    R = ws.r_blocks.reshape(2, ws.E - ws.eu, ws.n)
    # the grid: features summed by (t-block i, value-block k). A query reads the cells i < tb, k > vb; a key the
    # cells i > tb, k < vb. U's cell (i, B-1-k) and W's (B-1-i, k), written one row and one column further: both
    # sums are then inclusive 2-D prefix sums read at the item's own cell
    # (with groups: one grid per group, the cells of group g offset by g P^2)
    torch.add(ws.vbr, tb, alpha=ws.P, out=ws.cells_u)  # U's cell
    torch.sub(ws.wbr, tb, alpha=ws.P, out=ws.cells_w)  # W's cell
    ws.grid.zero_()
    ws.grid_tail.scatter_add_(1, ws.cells, ws.fv)
    ws.grid4.cumsum_(2).cumsum_(3)
    torch.gather(ws.grid, 1, ws.cells, out=ws.g)
    t0, t1 = ws.t01 if ws.T is not None else (T[0], T[1])
    r0, r1 = R[0], R[1]
    t1.add_(ws.g_u)
    r1.add_(ws.g_w)
    return t0.index_add_(1, vperm, t1), r0.index_add_(1, vperm, r1)


def dense_groups(code: torch.Tensor, f: torch.Tensor, acc: torch.Tensor, S: int, k: int, beta: float,
                 single: bool, tot: torch.Tensor, out: torch.Tensor, base: int = 0) -> None:
    """The tree's levels S .. 1 at once (``pwr_fast._tree_pass`` stopped at level S) by the blocks of
    ``block_sums``, group by group: the items are arranged in groups of G = 2^S consecutive t positions, each group
    in value order, ``code`` the t position (``single``) or 2 t position + key flag, ``f`` the features (exp:
    exp(beta (v - c)) of single items and keys, exp(beta (c - b)) of queries; power: v - c). Within a group item
    q dominates item p iff pos(q) < pos(p) and rank q > rank p (the value order breaks ties as the tree does):
    the rank in the group serves as the value. Adds the pairs' sum of l into ``tot`` (exp: minus their count, so
    the tree's separate count is not touched), and writes acc + each item's gradient into ``out`` at its t
    position (code, or code >> 1 for pair items) minus ``base``."""
    n, G = code.numel(), 1 << S
    dev = code.device
    L = min(G, 32)
    step = min(n, max(G, _DENSE_CHUNK if dev.type == "cpu" else _DENSE_CHUNK_GPU))
    mask = torch.empty(2 * (step // L), L, L, dtype=_F64, device=dev)  # reused by every sub-chunk (page faults)
    for c0 in range(0, n, step):
        sl = slice(c0, min(n, c0 + step))
        cd, fc = code[sl], f[sl]
        m = cd.numel()
        rel = (cd if single else cd >> 1).to(torch.int64) - (c0 + base)  # t position in the sub-chunk
        if k == 0:  # rows: U = exp(beta (a - c)); W = (exp(beta (c - b)), -1)
            if single:
                Fm, eu = torch.stack((fc, torch.reciprocal(fc), torch.full_like(fc, -1.0))), 1
            else:
                kf = (cd & 1).to(_F64)
                qf = 1.0 - kf
                Fm, eu = torch.stack((fc * kf, fc * qf, -qf, kf)), 1
        else:
            Fm, eu = torch.empty(2 * (k + 1), m, dtype=_F64, device=dev), k + 1
            _power_features(Fm, fc, k)
            if not single:
                kf = (cd & 1).to(_F64)
                Fm[:eu] *= kf
                Fm[eu:] *= 1.0 - kf
        # to t order (within the sub-chunk), the rank in the group as the value
        Y = torch.empty(2, m, dtype=_F64, device=dev)
        Y[0].scatter_(0, rel, torch.arange(m, dtype=_F64, device=dev))
        Ft = torch.empty_like(Fm).scatter_(1, rel.expand(Fm.shape[0], m), Fm)
        kmask = None
        if k == 0 and not single:
            Ft, kmask, Fm = Ft[:3], Ft[3], Fm[:3]
        FF = torch.stack((Ft, Fm), 1)  # [t order, value order (the arrangement)]
        T, R = block_sums(_Space(Y, FF, eu, m // L, L, m // G, mask), rel, fv_ready=True)
        total, gi = _total_and_grad(T, R, FF[:, 0], eu, k, beta, kmask)
        tot.add_(total)
        seg = out[c0:c0 + m]
        seg.scatter_(0, rel, acc[sl])
        seg.add_(gi)


def _exp_scales(beta: float, dev: torch.device) -> torch.Tensor:
    """[[beta], [-beta]] (float64, kept per beta and device: a tensor built per call is one more operation)."""
    return kept(_CONSTS, ("exp", beta, str(dev)), lambda: torch.tensor([[beta], [-beta]], dtype=_F64, device=dev), 16)


def _workspace(B: int, L: int, m: int, E: int, eu: int, k: int, dev: torch.device) -> _Space:
    """The ``_Space`` of the small path for m items in B blocks of L, kept per shape: Y and FF zero past the m
    items (pads: value 0, no features); for exp (k = 0) FF's last row in t order holds the constant query feature
    -1 of the m items. Also the views of the m items: ``y0m`` (values), ``f0m`` (features in t order)."""
    def make() -> _Space:
        Y = torch.zeros(2, B * L, dtype=_F64, device=dev)
        FF = torch.zeros(E, 2, B * L, dtype=_F64, device=dev)
        if k == 0:
            FF[E - 1, 0, :m] = -1.0
        ws = _Space(Y, FF, eu, B, L)
        ws.y0m, ws.f0m = Y[0, :m], FF[:, 0, :m]
        return ws

    return kept(_SPACES, (B, L, m, E, k, str(dev)), make, 8)


def _features(out: torch.Tensor, val: torch.Tensor, k: int, beta: float, twice_c) -> None:
    """Writes into ``out`` (E, m) the key features U (rows :eu, eu = 1 for exp, else k + 1) and the query features W
    (rows eu:) of the values ``val``. Summed over e, U_e(a) W_e(b) is l(a - b) for a > b. exp: U = exp(beta (a - c)),
    W = (exp(beta (c - b)), -1) (the key's own factor of the -1 is 1; that row is the workspace's constant and not
    written here); power k: U_e = a'^e, W_e = binom(k, e) (-b')^(k - e) (a' = a - c, b' = b - c)."""
    dev = val.device
    z = torch.sub(val, twice_c, alpha=0.5)  # (c = twice_c / 2)
    if k == 0:
        torch.exp(z * _exp_scales(beta, dev), out=out[:2])
        return
    _power_features(out, z, k)


def _power_features(out: torch.Tensor, z: torch.Tensor, k: int) -> None:
    """Power k's features of the centred values ``z`` into ``out`` (2 (k + 1), m): U_e = z^e, W_e = binom(k, e)
    (-z)^(k - e)."""
    pw = torch.arange(k + 1, dtype=_F64, device=z.device).unsqueeze(1)
    binom = torch.tensor(binom_row(k), dtype=_F64, device=z.device).unsqueeze(1)
    torch.pow(z, pw, out=out[:k + 1])
    torch.mul((-z) ** pw.flip(0), binom, out=out[k + 1:])


def _total_and_grad(T: torch.Tensor, R: torch.Tensor, Fm: torch.Tensor, eu: int, k: int, beta: float,
                    kmask: torch.Tensor = None):
    """The pair sum and each item's gradient (key part + query part) from the sums T, R and the features
    (``kmask``: which items are keys, for pair items)."""
    if k == 0:  # sum f_q g_p - 1; d/da = beta f_q g_p, d/db = -beta f_q g_p
        fr = Fm[0] * R[0]
        total = (fr + (R[1] if kmask is None else R[1] * kmask)).sum()
        return total, torch.addcmul(fr, Fm[1], T[0], value=-1.0).mul_(beta)
    # d/da U_e = e U_{e-1}, d/db W_e = -(e + 1) W_{e+1} (the binomials of W absorb the factors)
    U, W = Fm[:eu], Fm[eu:]
    c = torch.arange(1, k + 1, dtype=_F64, device=R.device)
    return (U * R).sum(), torch.matmul(c, U[:k] * R[1:] - W[1:] * T[:k])


def pwr_sum_and_grad_blocks(qry: torch.Tensor, key: torch.Tensor, s: torch.Tensor, t: torch.Tensor,
                            single: bool, k: int, beta: float,
                            twice_c) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sum, d sum / d s, C) as ``pwr_fast.pwr_sum_and_grad_fast``, from the float64 query and key values
    (``single``: they are equal, monotone in s at equal t), the student values ``s`` and the teacher values
    ``t``; ``k`` = 0 for exp, else the power (diff: 1); ``twice_c``: twice the middle c of the value range (0-d)."""
    m, dev = qry.numel(), qry.device
    E, eu = (3, 1) if k == 0 else (2 * (k + 1), k + 1)
    if single:
        perm, count = t_order(qry, s, t)  # the t order, teacher ties by ascending value (= by s)
        B, L = block_shape(m)
        ws = _workspace(B, L, m, E, eu, k, dev)  # (pads: value 0, no features)
        val = torch.index_select(qry, 0, perm, out=ws.y0m)
        vperm = torch.sort(ws.y0, stable=True)[1]  # value ties by t position
        _features(ws.f0m, val, k, beta, twice_c)
        total, gi = _total_and_grad(*block_sums(ws, vperm), ws.f0, eu, k, beta)
        gi = gi[:m]
        return total, torch.scatter(gi, 0, perm, gi), count  # (every position written: perm is a permutation)
    # a query item and a key item per relation: queries first at equal t (a stable sort of [queries, keys])
    count = pair_count(t)
    perm = torch.sort(t.to(_F64).repeat(2), stable=True)[1]
    kmask = (perm >= m).to(_F64)
    B, L = block_shape(2 * m)
    n = B * L
    ws = _workspace(B, L, 2 * m, E, eu, -1, dev)
    vals = torch.index_select(torch.cat((qry, key)), 0, perm, out=ws.y0m)
    # value order: keys before queries at equal value (a stable sort by value of the items ordered keys first)
    kf = torch.sort(1.0 - kmask, stable=True)[1]
    vperm = kf[torch.sort(vals[kf], stable=True)[1]]
    vperm = torch.cat((vperm, torch.arange(2 * m, n, device=dev)))
    Fm = ws.f0m
    _features(Fm, vals, k, beta, twice_c)
    if k == 0:
        Fm[2] = -1.0
    Fm[:eu] *= kmask  # keys' features on key items only, queries' on query items
    Fm[eu:] *= 1.0 - kmask
    total, gi = _total_and_grad(*block_sums(ws, vperm), ws.f0, eu, k, beta,
                                F.pad(kmask, (0, n - 2 * m)))
    grad = torch.zeros(m, dtype=_F64, device=dev).index_add_(0, perm.remainder(m), gi[:2 * m])
    return total, grad, count
