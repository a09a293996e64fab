"""PWR: pairwise ranking distillation.

Nikitin, Konushin, Konushin, "Pairwise Ranking Distillation for Deep Face Recognition", GraphiCon 2020
(eq. 3-11); defaults follow the authors' MXNet code (github mnikitin/KD-PWR, ``utils/loss/pwr.py``).

Conventions: the rows of both embedding matrices are L2-normalised as the authors' MXNet code does
(x / sqrt(|x|^2 + 1e-10)); the relations are the M = N(N-1)/2 values of the pairs i < j (row-major), cosine
distance 1 - x_i.x_j or euclidean distance, so they lie in [0, 2].

Over the M pairs of the batch, t_p and s_p are the teacher's and student's relation values (DISTANCES,
see ``relations.py``: ranking by cosine distance is ranking by similarity in reverse; the losses are the same).
For every ordered pair of pairs (p, q) with t_p > t_q (ties excluded), x_pq = m_pq - (s_p - s_q) and the loss is
the MEAN of l(x_pq) over those pairs of pairs:

- ``inversion="diff"``: relu(x); ``"power"``: relu(x) ** p; ``"exp"``: relu(exp(beta * x) - 1);
  ``"ranknet"``: log(1 + exp(-beta * (s_p - s_q))) (no margin).
- ``margin``: a constant (float), ``"teacher_std"`` (population std of the M teacher values) or
  ``"teacher_diff"`` (t_p - t_q).

A batch with no strictly ordered pair (N < 3 or all teacher relations equal) gives a zero attached to the graph.

Computation (``method``): ``"fast"`` is exact in O(M log M) time and O(M) memory for ``diff``, ``exp`` and
``power`` with integer 1 <= p <= 8 (``pwr_fast.py`` explains the decomposition); ``"tiled"`` is exact for every
inversion (``ranknet``, non-integer p) in O(M^2) time and O(M + tile^2) memory; ``"dense"`` is the O(M^2)-memory
reference ``pwr_loss_dense``; ``"auto"`` (default) takes ``fast`` where it applies (for ``exp``: where beta keeps the
shifted exponentials in float64's normal range for relations in [0, 2]), else ``tiled``. No method approximates.
Sums run in float64 (the loss and its gradient come back in the input dtype). ``fast`` and ``tiled`` read no tensor
value on the host (no device synchronisation per step).

The head is local tensor math: it ranks the pairs of the batch it is given. Ranking the pairs of a global batch
over several processes is the business of a wrapper outside the heads (the head is ``relational``).

Recipe use (the paper's best, PWR-Exp (teacher-diff), alone, weight 100)::

    config.distill.heads = [edict(name="pwr", weight=100.0,
                                  params=edict(inversion="exp", margin="teacher_diff", relation="cosine"))]
"""
from __future__ import annotations

from typing import Literal, Union

import torch

from .registry import register_head
from .base import EmbeddingHead, zero_loss
from .common import kept, l2_normalize_mx, l2_normalize_mx_backward, l2_normalize_mx_scale
from . import pwr_cpu
from .pwr_fast import EXP_RANGE, check_exp_range, exp_fits, pwr_sum_grad_count, with_grad
from .pwr_math import INVERSIONS, MARGINS, METHODS, pwr_loss_dense, resolve_method
from .relations import (RELATIONS, gram, pair_index, pairwise_relations, relation_matrix_backward, relation_vector,
                        relation_vector_backward)

__all__ = ["PairwiseRankingLoss", "pwr_loss_dense", "INVERSIONS", "MARGINS"]


_CAST: dict = {}  # (M, dtype, device) -> the buffer the pair gradients are divided into (consumed by the backward)


def _cast_buffer(m: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return kept(_CAST, (m, dtype, str(device)), lambda: torch.empty(m, dtype=dtype, device=device), 4)


@register_head("pwr")
class PairwiseRankingLoss(EmbeddingHead):
    """Pairwise ranking distillation (PWR): the student keeps the teacher's ORDER of in-batch pair distances."""

    paper = "Nikitin et al., Pairwise Ranking Distillation for Deep Face Recognition, GraphiCon 2020"

    def __init__(self, relation: Literal["cosine", "euclidean"] = "cosine",
                 inversion: Literal["diff", "power", "exp", "ranknet"] = "exp",
                 margin: Union[float, Literal["teacher_std", "teacher_diff"]] = "teacher_diff",
                 p: float = 1.0, beta: float = 1.0,
                 method: Literal["auto", "fast", "tiled", "dense"] = "auto", tile: int = 4096) -> None:
        super().__init__()
        if relation not in RELATIONS:
            raise ValueError(f"pwr: relation must be one of {RELATIONS}, got {relation!r}")
        if inversion not in INVERSIONS:
            raise ValueError(f"pwr: inversion must be one of {INVERSIONS}, got {inversion!r}")
        if isinstance(margin, str) and margin not in MARGINS:
            raise ValueError(f"pwr: margin must be a number or one of {MARGINS}, got {margin!r}")
        if not p > 0:
            raise ValueError(f"pwr: p must be > 0, got {p!r}")
        if not beta > 0:
            raise ValueError(f"pwr: beta must be > 0, got {beta!r}")
        if method not in METHODS:
            raise ValueError(f"pwr: method must be one of {METHODS}, got {method!r}")
        if isinstance(tile, bool) or not isinstance(tile, int) or tile < 1:
            raise ValueError(f"pwr: tile must be a positive int (pairs per block side), got {tile!r}")
        resolved = resolve_method(method, inversion, float(p))  # fail at construction, not at the first batch
        if resolved == "fast" and inversion == "exp" and not exp_fits(float(beta), margin):
            if method == "fast":
                raise ValueError(f"pwr: method='fast' with inversion='exp' needs beta * (4 + |margin|) <= "
                                 f"{EXP_RANGE} (the value range of relations in [0, 2]), got beta={beta!r}, "
                                 f"margin={margin!r}; use method='tiled' or 'auto'")
            resolved = "tiled"
        self.relation, self.inversion, self.margin, self.p, self.beta = relation, inversion, margin, float(p), float(beta)
        self.method, self.tile, self._method = method, tile, resolved
        # the head's step in two compiled calls (pwr_cpu.cosine_mean) where it applies: cosine, fast; items as
        # pwr_fast's (teacher_diff: one per relation, lam 1; a zero margin: lam 0; else a query and a key), k as its
        # features
        items = ((pwr_cpu.SINGLE, 1, 0.0) if margin == "teacher_diff" else
                 (pwr_cpu.TEACHER_STD, 0, 0.0) if margin == "teacher_std" else
                 (pwr_cpu.SINGLE, 0, 0.0) if margin == 0 else (pwr_cpu.CONSTANT, 0, float(margin)))
        self._compiled = None if relation != "cosine" or resolved != "fast" else (
            *items, 1 if inversion == "diff" else (int(p) if inversion == "power" else 0))
        self._param_names = ("relation", "inversion", "margin", "p", "beta", "method", "tile")

    def relations(self, student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The pair relation vectors (s, t) of the embeddings normalised as the PWR authors' MXNet code does
        (``L2Normalization``: x / sqrt(|x|^2 + 1e-10)). The 1e-10 matters for identical rows: their cosine distance
        is then ~1e-10 / |x|^2, the reference's value, instead of a +-1e-16 left to BLAS rounding (which decides
        whether two such pairs tie). Differentiable (autograd); the head's own step uses ``_step``."""
        return (pairwise_relations(l2_normalize_mx(student), self.relation),
                pairwise_relations(l2_normalize_mx(teacher), self.relation))

    def compute_loss(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if student.shape[0] < 2:  # no pair (a shape, not a value: no host read)
            return zero_loss(student)
        if self._method == "dense":
            return pwr_loss_dense(*self.relations(student, teacher), self.inversion, self.margin, self.p, self.beta)
        need_grad = student.requires_grad and torch.is_grad_enabled()
        value, grad = self._step(student.detach(), teacher, need_grad)  # (by hand: nothing for autograd to record)
        return value if grad is None else with_grad(student, value, grad)

    def _step(self, student: torch.Tensor, teacher: torch.Tensor,
              need_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The loss of the fast or tiled method and, if ``need_grad``, d loss / d student, computed by hand: the
        sum's gradient comes with the sum; the relations' and the normalisation's backward are two matrix products.
        The head's step is then one autograd node whose backward is one multiplication, and no N x N intermediate
        is kept for it (about 40 tensor operations fewer per step than autograd through the same steps)."""
        n = student.shape[0]
        if teacher.shape[1] == student.shape[1]:  # both at once (7 operations fewer)
            xn, r = l2_normalize_mx_scale(torch.cat((student, teacher)))
            both, xt, xn, r = xn.view(2, n, -1), None, xn[:n], r[:n]
        else:
            xn, r = l2_normalize_mx_scale(student)
            both, xt = None, l2_normalize_mx(teacher)
        if self._compiled is not None and 3 <= n <= (pwr_cpu.MAX_ROWS if self._compiled[0] == pwr_cpu.SINGLE
                                                      else pwr_cpu.MAX_PAIR_ROWS) and student.dtype == torch.float32 \
                and teacher.dtype == torch.float32 and teacher.device == student.device \
                and pwr_cpu.enabled(student.device):  # (cosine, fast)
            g = gram(both if xt is None else xn)
            gs, gt = (g[0], g[1]) if xt is None else (g, gram(xt))
            return self._compiled_step(xn, r, gs, gt, need_grad)
        flat = pair_index(n, student.device)
        if xt is None:
            rel, saved = relation_vector(both, self.relation, flat)
            s, t, saved = rel[0], rel[1], saved[0]
        else:
            s, saved = relation_vector(xn, self.relation, flat)
            t = relation_vector(xt, self.relation, flat)[0]
        total, grad, count = pwr_sum_grad_count(s, t, self.inversion, self.margin, self.p, self.beta, self._method,
                                                self.tile)
        denom = count.clamp(min=1)  # C = 0: every sum is 0, so is the loss (float64 / int64: float64)
        dx = None
        if need_grad:  # the mean's gradient in the student's dtype, one division (into a kept buffer when it casts)
            g = grad.div_(denom) if grad.dtype == student.dtype else torch.div(grad, denom, out=_cast_buffer(
                grad.numel(), student.dtype, student.device))
            dx = l2_normalize_mx_backward(xn, r, relation_vector_backward(xn, self.relation, s, saved, g, flat))
        return (total / denom).to(student.dtype), dx

    def _compiled_step(self, xn: torch.Tensor, r: torch.Tensor, gs: torch.Tensor, gt: torch.Tensor,
                       need_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``_step`` from the normalised student rows ``xn`` (their scales ``r``) and the Gram matrices of the
        normalised rows (float32, on a CPU with the compiled pass): the relations, the sum, the mean and the n x n
        matrix of its gradient with respect to the relations in two compiled calls (``pwr_cpu.cosine_mean``: the
        same values as the relation vectors and ``pwr_sum_grad_count``, about ten tensor operations fewer)."""
        kind, lam, const, k = self._compiled
        loss, kmat, res = pwr_cpu.cosine_mean(gs, gt, kind, lam, const, k, self.beta, need_grad)
        if k == 0:
            check_exp_range(self.beta, lambda: res[2])
        dx = None if kmat is None else l2_normalize_mx_backward(xn, r, relation_matrix_backward(xn, "cosine", kmat))
        return loss, dx
