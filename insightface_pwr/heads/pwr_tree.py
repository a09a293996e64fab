"""The top-down tree pass of ``pwr_fast.py`` (its docstring explains the decomposition and the items): one level's
work (``_level``), run over whole groups (``_tree_pass``) or, for groups wider than a cache-sized chunk on a CPU,
chunk by chunk (``_wide_pass``), and the whole pass (``run_tree``).

A level, on items arranged group by group (a group = 2^level consecutive t positions, each group in value order):
the right half's queries get the suffix sums of the left half's key features, the left half's keys the prefix
sums of the right half's query features (row-wise cumsums on a (groups, width) view), then a stable partition
by the next t bit (one cumsum, three scatters) gives the next level's arrangement. Exp with one item per relation
(PWR-Exp, teacher-diff) takes 19 operations a level: the split bit (2), the two features (2), the two cumsums and
what they add to the gradients and the sum (6: the suffix sums as the prefix minus the group's total, exactly 0
where nothing follows), the count (cumsum, one addmv_), the targets (4: left j - cr, right half - 1 + cr as one
addcmul_ over a kept j + half - 1, the int64 copy) and three scatters; the scratch's shaped views are made once per
shape (``_Work.shaped``).

On a CPU every operation of a level streams its vectors through memory, so the work is cut into chunks of
2^``CHUNK_LEVELS`` items (cache-sized working set, every temporary allocated once):
- levels whose groups fit a chunk run chunk by chunk on whole groups (each chunk an independent sub-tree);
- wider levels run chunk by chunk within each group: the prefix sums continue from the previous chunk's last value
  (0-d tensors: no host read); a suffix sum needs its group's total of the left half's key features, and the left
  half is a range of t positions, so the total is a difference of prefix sums over t positions made once before
  the first wide level (one vector per feature: exp one, power k + 1); the partition targets are group-relative,
  scattered into full-size second copies. Each wide level streams the arrays once instead of once per operation,
  and the scratch is chunk-sized (at N = 4096: 79 bytes per relation in all instead of 108).
On other devices the pass runs over the whole arrays (fewest launches).
"""
from __future__ import annotations

from typing import Optional

import torch

from . import pwr_small
from .pwr_math import binom_row

__all__ = ["CHUNK_LEVELS", "run_tree"]

CHUNK_LEVELS = 15  # CPU: chunks of 2^15 items (cache-sized working set; 2^16: 2-4 % slower, 2^14: 4 % slower)
_KEEP_POSITIONS = 1 << 16  # in-group positions kept up to this width; wider (unchunked) levels write them in scratch
_F64 = torch.float64


class _Work:
    """A level's temporaries, allocated once: float64 scratch (A, B, C, D, r, then mk, mq for pair items or power,
    then vq, gq, gk and k + 1 powers for power), the int64 partition targets (``dest``), an int32 scratch
    (``bits``), the in-group positions once made (``kb``); ``views(n)``: all of them cut to n entries (cached)."""

    def __init__(self, n: int, k: int, single: bool, dev: torch.device) -> None:
        nf = 5 if (single and not k) else (7 if not k else 10 + k + 1)
        self.f = [torch.empty(n, dtype=_F64, device=dev) for _ in range(nf)]
        self.dest = torch.empty(n, dtype=torch.int64, device=dev)
        self.bits = torch.empty(n, dtype=torch.int32, device=dev)
        self.kb: Optional[torch.Tensor] = None
        self._right: dict = {}
        self._views: dict = {}

    def views(self, n: int) -> tuple:
        v = self._views.get(n)
        if v is None:
            v = self._views[n] = ([x[:n] for x in self.f], self.dest[:n], self.bits[:n])
        return v

    def ones(self, n: int) -> torch.Tensor:
        """A (1, n) row of ones (float64, made once): a sum as one ``addmv_`` into an accumulator."""
        row = self._views.get(("ones", n))
        if row is None:
            row = self._views[("ones", n)] = torch.ones(1, n, dtype=_F64, device=self.dest.device)
        return row

    def shaped(self, n: int, rows: int, width: int) -> dict:
        """The (rows, width) views of ``views(n)``'s float64 scratch by the id of its flat view, plus the dest
        view ("dest"), the first one as a row ("row0"), the third's last column ("last2") and, with pair masks,
        the sixth as a row ("row5") (cached: a view costs a microsecond or two, a level needs a dozen)."""
        key = (n, rows, width)
        d = self._views.get(key)
        if d is None:
            fb, dest, _ = self.views(n)
            d = self._views[key] = {id(x): x.view(rows, width) for x in fb}
            d["dest"], d["row0"], d["last2"] = dest.view(rows, width), fb[0].view(1, n), d[id(fb[2])][:, -1:]
            if len(fb) > 5:
                d["row5"] = fb[5].view(1, n)
        return d

    def positions(self, width: int, scratch: torch.Tensor) -> torch.Tensor:
        """0 .. width - 1 (float64): kept up to ``_KEEP_POSITIONS``, else written into ``scratch``."""
        if width > _KEEP_POSITIONS:
            return torch.arange(width, dtype=_F64, device=scratch.device, out=scratch[:width])
        if self.kb is None or self.kb.numel() < width:
            self.kb = torch.arange(width, dtype=_F64, device=scratch.device)
        return self.kb[:width]

    def right_targets(self, width: int, half: int, positions: torch.Tensor) -> torch.Tensor:
        """j + half - 1 for the positions j = ``positions`` (0 .. width - 1, float64): kept up to
        ``_KEEP_POSITIONS``, else written over ``positions`` (then in scratch)."""
        if width > _KEEP_POSITIONS:
            return positions.add_(half - 1.0)
        q = self._right.get((width, half))
        if q is None:
            q = self._right[(width, half)] = positions + (half - 1.0)
        return q


def _level(code, f, acc, lev: int, k: int, beta: float, single: bool, tot, cnt, work: _Work, rows: int,
           width: int, pos0: int = 0, carry: Optional[dict] = None, totals=None) -> Optional[dict]:
    """Level ``lev`` on a contiguous run of arranged items (slices ``code``, ``f``, ``acc``): ``rows`` whole groups
    of ``width`` items, or (``totals`` given, ``rows`` = 1) ``width`` items starting ``pos0`` items into a wider
    group, ``carry`` the prefix sums reached by its earlier chunks (None at the group's start), ``totals`` the
    group's sums of its left half's key features (exp: (1,), power: (k + 1,)). Adds into ``acc``, ``tot``,
    ``cnt`` (single exp: the right items before each item, without the constant the caller subtracts); leaves the
    group-relative targets of the stable partition in ``work.dest``. Returns the carry for the next chunk of the
    same group (None for whole groups)."""
    n = code.numel()
    fb, dest, bits = work.views(n)
    sh = work.shaped(n, rows, width)
    A, B, C, D, r = fb[:5]
    half, wide = 1 << (lev - 1), totals is not None
    new: dict = {}

    def scan(x: torch.Tensor, out: torch.Tensor, key) -> torch.Tensor:  # row-wise inclusive prefix sums
        torch.cumsum(sh[id(x)], 1, out=sh[id(out)])
        if wide:
            if carry is not None:
                out.add_(carry[key])
            new[key] = out[-1:].clone()
        return out

    def suffix(prefix: torch.Tensor, e: int) -> None:  # in place: the group's (left keys') total minus the prefix
        if wide:  # (the prefix continues from the group's earlier chunks)
            torch.sub(totals[e], prefix, out=prefix)
        else:
            pv = sh[id(prefix)]
            torch.sub(pv[:, -1:].clone(), pv, out=pv)

    torch.bitwise_and(code, 1 << (lev - 1 if single else lev), out=bits)  # the split bit: right half
    torch.ne(bits, 0, out=r)
    if not single or k:
        mk, mq = fb[5], fb[6]
    if not single:  # masks: left keys, right queries
        torch.bitwise_and(code, 1, out=bits)
        mk.copy_(bits)
        torch.mul(mk, r, out=mq)
        mk.sub_(mq)
        torch.sub(r, mq, out=mq)
    elif k:
        torch.sub(1.0, r, out=mk)
        mq.copy_(r)
    if k == 0:  # exp: A = left keys' features, B = right queries' features
        if single:
            torch.addcmul(f, f, r, value=-1.0, out=A)
            torch.div(r, f, out=B)
        else:
            torch.mul(f, mk, out=A)
            torch.mul(f, mq, out=B)
        scan(A, C, 0)
        scan(B, D, "b")  # right queries' features before each left key (value < a)
        acc.addcmul_(A, D, value=beta)
        tot.addmv_(sh["row0"], D)  # (a dot product into tot: one operation)
        # left keys' features after each right query (value > b): the group's total minus the prefix C, into D
        # (free now; no copy of the totals); exactly 0 where no key follows
        if wide:
            torch.sub(C, totals[0], out=D)
        else:
            torch.sub(sh[id(C)], sh["last2"], out=sh[id(D)])
        acc.addcmul_(B, D, value=beta)
        if not single:
            cnt.addmv_(sh["row5"], scan(mq, C, "q"))
    else:  # (a' - b')^k by the binomial expansion; keys' sums after each query, queries' sums before each key
        binom_k, binom_k1 = binom_row(k), binom_row(k - 1)
        vq, gq, gk = fb[7:10]
        pw = fb[10:11 + k]
        torch.add(mk, mq, out=pw[0])
        for e in range(1, k + 1):
            torch.mul(pw[e - 1], f, out=pw[e])
        vq.zero_()
        gq.zero_()
        gk.zero_()
        for e in range(k + 1):
            torch.mul(pw[e], mk, out=A)
            suffix(scan(A, C, e), e)  # S_e = sum of a'^e over the left keys dominating
            vq.add_(torch.mul(C, pw[k - e], out=A), alpha=binom_k[e] * (-1.0) ** (k - e))
            if e <= k - 1:
                sign = binom_k1[e] * (-1.0) ** (k - 1 - e)
                gq.add_(torch.mul(C, pw[k - 1 - e], out=A), alpha=sign)
                torch.mul(pw[k - 1 - e], mq, out=A)
                gk.add_(scan(A, D, ("b", e)).mul_(pw[e]), alpha=sign)
        tot.addmv_(vq.view(1, -1), mq)
        gk.mul_(mk).sub_(gq.mul_(mq))
        acc.add_(gk, alpha=float(k))
    # stable partition of every group by the split bit (each half has `half` items, still in value order): with
    # cr = inclusive count of right items and j = index in the group, a left item moves to j - cr and a right one
    # to half - 1 + cr = (j - cr) + (half - 1 + cr - (j - cr)) (float64: exact)
    scan(r, C, "r")
    if single and k == 0:  # the right items before each left one: its dominated pairs (plus the rights')
        cnt.addmv_(work.ones(n), C)  # (their sum: one operation)
    # = (j - cr) + r (q - 2 (j - cr)) with q = j + half - 1 (kept per width), j from the group's (chunk's) start
    j = work.positions(width, B)
    torch.sub(j, sh[id(C)], out=sh[id(A)])
    if pos0:
        A.add_(float(pos0))
    torch.sub(work.right_targets(width, half, j), sh[id(A)], alpha=2.0, out=sh[id(D)])
    if pos0:
        D.add_(float(pos0))
    A.addcmul_(r, D)
    dest.copy_(A)
    return new if wide else None


def _right_pairs(groups: int, half: int) -> int:
    """The pairs of right items that single exp's count includes: half (half + 1) / 2 per group."""
    return groups * half * (half + 1) // 2


def _tree_pass(code, f, acc, levels: int, k: int, beta: float, single: bool, tot, cnt, work: _Work, second,
               stop: int = 0):
    """Levels ``levels`` .. ``stop`` + 1 over whole groups, in arranged order: ``code`` (int32: t position, or
    2 t position + key flag), ``f`` (exp: exp(beta (v - c)) for single items and keys, exp(beta (c - b)) for
    query items; power: value - c), ``acc`` (+= each item's gradient sum); ``second``: vectors of the same sizes
    and dtypes for the scatters. Adds the pair sum of exp(beta x) (exp) or of x^k (power) into ``tot`` and, for
    exp, the dominated pair count into ``cnt``. Returns ((code, f, acc) as reached, the other three)."""
    n = code.numel()
    code2, f2, acc2 = second
    extra = 0
    for lev in range(levels, stop, -1):
        width = 1 << lev
        rows = n >> lev
        _level(code, f, acc, lev, k, beta, single, tot, cnt, work, rows, width)
        if single and k == 0:
            extra += _right_pairs(rows, width >> 1)
        dv = work.shaped(n, rows, width)["dest"]
        code2.view(rows, width).scatter_(1, dv, code.view(rows, width))
        f2.view(rows, width).scatter_(1, dv, f.view(rows, width))
        acc2.view(rows, width).scatter_(1, dv, acc.view(rows, width))
        code, code2, f, f2, acc, acc2 = code2, code, f2, f, acc2, acc
    if extra:
        cnt.sub_(float(extra))
    return (code, f, acc), (code2, f2, acc2)


def _left_key_prefix(code, f, k: int, single: bool, size: int) -> torch.Tensor:
    """(E, n + 1) exclusive prefix sums over t positions of the key features (exp: f; power: f^0 .. f^k), so
    that a group's left-half total is a difference of two columns."""
    n, dev = code.numel(), code.device
    E = 1 if k == 0 else k + 1
    pre = torch.zeros(E, n + 1, dtype=_F64, device=dev)
    for c0 in range(0, n, size):
        cd, fc = code[c0:c0 + size], f[c0:c0 + size]
        pos = (cd if single else cd >> 1).to(torch.int64)
        vals = fc.unsqueeze(0) if k == 0 else fc.unsqueeze(0) ** torch.arange(E, dtype=_F64, device=dev)[:, None]
        if not single:
            vals = vals * (cd & 1).to(_F64)
        pre[:, 1:].scatter_(1, pos.expand(E, -1), vals)
    return pre.cumsum_(1)


def _wide_pass(code, f, acc, levels: int, stop: int, k: int, beta: float, single: bool, tot, cnt, work: _Work,
               second):
    """Levels ``levels`` .. ``stop`` + 1, whose groups are wider than the chunk of 2^``stop`` items of ``work``,
    chunk by chunk within each group (the module docstring). As ``_tree_pass``."""
    n, size = code.numel(), 1 << stop
    pre = _left_key_prefix(code, f, k, single, size)
    code2, f2, acc2 = second
    extra = 0
    for lev in range(levels, stop, -1):
        width, half = 1 << lev, 1 << (lev - 1)
        for g0 in range(0, n, width):
            totals = pre[:, g0 + half] - pre[:, g0]
            carry = None
            for c0 in range(g0, g0 + width, size):
                sl = slice(c0, c0 + size)
                carry = _level(code[sl], f[sl], acc[sl], lev, k, beta, single, tot, cnt, work, 1, size,
                               pos0=c0 - g0, carry=carry, totals=totals)
                dest = work.dest
                dest.add_(g0)
                code2.scatter_(0, dest, code[sl])
                f2.scatter_(0, dest, f[sl])
                acc2.scatter_(0, dest, acc[sl])
        if single and k == 0:
            extra += _right_pairs(n // width, half)
        code, code2, f, f2, acc, acc2 = code2, code, f2, f, acc2, acc
    if extra:
        cnt.sub_(float(extra))
    return (code, f, acc), (code2, f2, acc2)


def run_tree(code, f, levels: int, k: int, beta: float, single: bool):
    """The whole pass (chunked on a CPU), its lowest ``pwr_small.DENSE_LEVELS`` levels done densely group by group
    (``pwr_small.dense_groups``). Returns (acc in t order, tot, cnt)."""
    n, dev = code.numel(), code.device
    acc = torch.zeros(n, dtype=_F64, device=dev)
    tot = torch.zeros(1, dtype=_F64, device=dev)  # (1,): dot products accumulate by addmv_
    cnt = torch.zeros(1, dtype=_F64, device=dev)  # exact: integers below 2^53
    chunk = CHUNK_LEVELS
    dense = min(pwr_small.DENSE_LEVELS, levels, chunk)
    second = (torch.empty_like(code), torch.empty_like(f), torch.empty_like(acc))
    if dev.type == "cpu" and levels > chunk:
        size = 1 << chunk
        work = _Work(size, k, single, dev)
        (code, f, acc), free = _wide_pass(code, f, acc, levels, chunk, k, beta, single, tot, cnt, work, second)
        out = torch.empty(size, dtype=_F64, device=dev) if dense else None  # a chunk's acc in t order
        for c0 in range(0, n, size):
            sl = slice(c0, c0 + size)
            chunk_second = (free[0][c0:c0 + size], free[1][c0:c0 + size], free[2][c0:c0 + size])
            res, _ = _tree_pass(code[sl], f[sl], acc[sl], chunk, k, beta, single, tot, cnt, work, chunk_second,
                                stop=dense)
            if dense:
                pwr_small.dense_groups(*res, dense, k, beta, single, tot, out, base=c0)
                acc[sl].copy_(out)
            elif res[2].data_ptr() != acc[sl].data_ptr():
                acc[sl].copy_(res[2])
        return acc, tot.view(()), cnt.view(())
    work = _Work(n, k, single, dev)
    res, free = _tree_pass(code, f, acc, levels, k, beta, single, tot, cnt, work, second, stop=dense)
    if not dense:
        return res[2], tot.view(()), cnt.view(())
    out = free[2]  # (free now)
    pwr_small.dense_groups(*res, dense, k, beta, single, tot, out)
    return out, tot.view(()), cnt.view(())
