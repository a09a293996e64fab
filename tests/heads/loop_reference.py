"""Shared pieces of the heads' loop-reference tests: random batches with teacher ties, scalar-at-a-time helpers
(rows, dot, Huber) and the value-and-gradient comparison of a head with its slow reference.

Imported by the test files of this folder as ``from loop_reference import ...`` (pytest puts the folder on sys.path).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch


def random_batch(n: int, ds: int, dt: int, dtype: torch.dtype, seed: int, s_scale: float = 1.0,
                 t_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Student (n, ds) = s_scale * N(0, 1) and teacher (n, dt) = t_scale * N(0, 1), drawn in float64 from one
    generator seeded with ``seed`` (student first), then cast to ``dtype``. For n >= 3 teacher row 2 duplicates
    row 0: zero difference vectors and ties in every teacher relation of the pairs (0, k) and (2, k)."""
    g = torch.Generator().manual_seed(seed)
    s = s_scale * torch.randn(n, ds, generator=g, dtype=torch.float64)
    t = t_scale * torch.randn(n, dt, generator=g, dtype=torch.float64)
    if n >= 3:
        t[2] = t[0]
    return s.to(dtype), t.to(dtype)


# ---- scalar-at-a-time helpers of the loop references ----
def rows(x: torch.Tensor) -> list:
    """The (n, d) tensor as a list of n lists of d 0-dim tensors (autograd flows through each one)."""
    return [[x[i, k] for k in range(x.shape[1])] for i in range(x.shape[0])]


def dot(a: list, b: list):
    return sum(ai * bi for ai, bi in zip(a, b))


def huber(x, delta: float):
    """0.5 x^2 for |x| <= delta, else delta (|x| - 0.5 delta); the branch chosen on the value of x."""
    v = float(x.detach()) if torch.is_tensor(x) else float(x)
    return 0.5 * x * x if abs(v) <= delta else delta * (abs(x) - 0.5 * delta)


def assert_matches_reference(head: Callable[..., torch.Tensor], ref_fn: Callable, s: torch.Tensor, t: torch.Tensor,
                             tol: dict, labels: Optional[torch.Tensor] = None, nan_value_ok: bool = False) -> None:
    """The head's loss on (student s, teacher t[, labels]) and its gradient w.r.t. s equal ``ref_fn(s, t)`` and the
    reference's gradient within ``tol`` (kwargs of torch.testing.assert_close). A reference that does not depend on
    s (no pair to compare) has gradient zero. The head's output must be a 0-dim tensor of s's dtype.
    ``nan_value_ok``: a NaN loss matches a NaN reference (the gradients must still be equal numbers)."""
    s1 = s.clone().requires_grad_(True)
    out = head(student=s1, teacher=t) if labels is None else head(student=s1, teacher=t, labels=labels)
    out.backward()
    s2 = s.clone().requires_grad_(True)
    ref = ref_fn(s2, t)
    if isinstance(ref, torch.Tensor) and ref.requires_grad:
        ref.backward()
        g_ref = s2.grad
    else:
        g_ref = torch.zeros_like(s)
    assert out.dtype == s.dtype and out.dim() == 0
    torch.testing.assert_close(out.detach(), torch.as_tensor(ref, dtype=s.dtype).detach(), equal_nan=nan_value_ok,
                               **tol)
    torch.testing.assert_close(s1.grad, g_ref, **tol)


def assert_attached_zero(head: Callable[..., torch.Tensor], s: torch.Tensor, t: torch.Tensor) -> None:
    """A batch with nothing to compare: the loss is exactly 0, still attached to the graph (requires grad), and
    backward gives the student an exactly-zero gradient."""
    s = s.clone().requires_grad_(True)
    out = head(student=s, teacher=t)
    assert out.item() == 0.0 and out.requires_grad
    out.backward()
    assert torch.equal(s.grad, torch.zeros_like(s))
