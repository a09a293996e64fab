"""The tree's wide levels (groups larger than a cache-sized chunk) for ``exp`` with one item per relation, one
chunk at a time: each level reads and writes the item arrays once, instead of once per vectorised step.

``pwr_fast._tree_pass`` runs a level as about 20 operations over whole (groups, width) views; when a group is
larger than the cache, each of them streams the arrays from main memory (at N = 4096, 2^23 items: 64 MB per
float64 vector, about 70 ns per item and level against about 13 ns in cache). Here a level walks its groups chunk
by chunk (``1 << stop`` items), the same steps on cache-sized scratch vectors, with what crosses chunk
boundaries carried as 0-d tensors (no host read):
- the prefix sums (the right queries' features before each position, the right items' count) continue from the
  previous chunk's last value;
- the suffix sums (the left keys' features after each right query) need the group's total of the left keys'
  features: the left half of a group is a range of t positions, so the total is a difference of one prefix-sum
  vector of the features in t order, computed once before the first wide level;
- the stable partition's targets are group-relative positions, offset by the group's start for the scatter
  into the full-size second copies.
The scratch is chunk-sized: at N = 4096 the pass needs three full-size vectors (code, features, gradient sums)
and their second copies, instead of ten.
"""
from __future__ import annotations

from typing import Tuple

import torch

__all__ = ["wide_levels_exp_single"]


def wide_levels_exp_single(code: torch.Tensor, f: torch.Tensor, acc: torch.Tensor, levels: int, stop: int,
                           beta: float, tot: torch.Tensor, cnt: torch.Tensor,
                           second: Tuple[torch.Tensor, torch.Tensor, torch.Tensor], scratch: dict
                           ) -> Tuple[Tuple[torch.Tensor, ...], Tuple[torch.Tensor, ...]]:
    """Levels ``levels`` .. ``stop`` + 1 of ``pwr_fast._tree_pass`` (``single``, ``k`` = 0) on the arranged
    ``code`` (int32 t positions), ``f`` (exp(beta (v - c))) and ``acc`` (gradient sums), adding into ``tot`` and
    ``cnt`` as it does. ``second``: full-size vectors of the same dtypes for the scatters; ``scratch``: chunk-sized
    buffers as ``pwr_fast._Work.bufs`` (five float64 "f", one int64 "i", one int32 "c"). Returns ((code, f, acc)
    as reached, the other three vectors, free)."""
    n, dev = code.numel(), code.device
    size = 1 << stop
    f64 = torch.float64
    # exclusive prefix sums of the features in t order: a left half's total is fpre[end] - fpre[start]
    fpre = torch.zeros(n + 1, dtype=f64, device=dev)
    for c0 in range(0, n, size):
        fpre[1:].scatter_(0, code[c0:c0 + size].to(torch.int64), f[c0:c0 + size])
    fpre[1:].cumsum_(0)
    A, B, C, D, r = scratch["f"][:5]
    (dest,), (bit,) = scratch["i"], scratch["c"]
    kb = torch.arange(size, dtype=f64, device=dev)
    code2, f2, acc2 = second
    right_right = 0  # sum over groups of half (half + 1) / 2: the pairs of right items the counts include
    for lev in range(levels, stop, -1):
        width, half = 1 << lev, 1 << (lev - 1)
        for g0 in range(0, n, width):
            left_total = fpre[g0 + half] - fpre[g0]
            carry_a = carry_b = carry_r = None
            for c0 in range(g0, g0 + width, size):
                sl = slice(c0, c0 + size)
                fc, ac = f[sl], acc[sl]
                torch.bitwise_right_shift(code[sl], lev - 1, out=bit)
                r.copy_(bit.bitwise_and_(1))  # 1 for the right half (later t)
                torch.addcmul(fc, fc, r, value=-1.0, out=A)  # left keys' features
                torch.div(r, fc, out=B)  # right queries' features
                torch.cumsum(A, 0, out=C)
                torch.cumsum(B, 0, out=D)
                if carry_b is not None:
                    D.add_(carry_b)
                ac.addcmul_(A, D, value=beta)
                tot.add_(torch.dot(A, D))
                seen_a = C[-1].clone() if carry_a is None else carry_a + C[-1]
                # left keys' features after each position: the group's total minus those up to it
                torch.sub(left_total if carry_a is None else left_total - carry_a, C, out=C)
                ac.addcmul_(B, C, value=-beta)
                carry_a, carry_b = seen_a, D[-1].clone()
                torch.cumsum(r, 0, out=C)  # right items up to each position
                if carry_r is not None:
                    C.add_(carry_r)
                cnt.add_(C.sum())
                carry_r = C[-1].clone()
                # stable partition of the group: a left item to k - cr, a right one to half - 1 + cr
                torch.sub(kb, C, out=A).add_(c0 - g0)
                torch.sub(C, A, out=D).add_(half - 1.0)
                A.addcmul_(r, D).add_(g0)
                dest.copy_(A)
                code2.scatter_(0, dest, code[sl])
                f2.scatter_(0, dest, fc)
                acc2.scatter_(0, dest, ac)
        right_right += (n // width) * half * (half + 1) // 2
        code, code2, f, f2, acc, acc2 = code2, code, f2, f, acc2, acc
    cnt.sub_(float(right_right))
    return (code, f, acc), (code2, f2, acc2)
