"""PWR: pairwise ranking distillation.

Nikitin, Konushin, Konushin, "Pairwise Ranking Distillation for Deep Face Recognition", GraphiCon 2020
(eq. 3-11); defaults follow the authors' MXNet code (github mnikitin/KD-PWR, ``utils/loss/pwr.py``).

Over the M = N(N-1)/2 pairs of the batch, t_p and s_p are the teacher's and student's relation values (DISTANCES,
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
reference ``pwr_loss_dense``; ``"auto"`` (default) takes ``fast`` where it applies, else ``tiled``. No method
approximates. Sums run in float64 (the loss and its gradient come back in the input dtype).

Scope (``scope``): ``"local"`` ranks the pairs of this rank's batch; ``"global"`` all-gathers the student
embeddings (with gradient) and the teacher embeddings over the process group and ranks the pairs of the whole
global batch (``insightface_pwr/distributed.py``): every rank returns the same global loss, and after DDP's
gradient averaging the parameters receive exactly the gradient of that global loss. Without a process group
(or with one rank) ``"global"`` is ``"local"``.

Recipe use (the paper's best, PWR-Exp (teacher-diff), alone, weight 100)::

    config.distill.heads = [edict(name="pwr", weight=100.0,
                                  params=edict(inversion="exp", margin="teacher_diff", relation="cosine"))]
"""
from __future__ import annotations

from typing import Literal, Union

import torch
import torch.nn.functional as F

from ..distill.collectives import all_gather_no_grad, all_gather_with_grad, share_of_replicated_loss
from .registry import register_head
from .base import EmbeddingHead, zero_loss
from .pwr_fast import METHODS, pwr_loss
from .common import l2_normalize_mx
from .relations import RELATIONS, pairwise_relations

__all__ = ["PairwiseRankingLoss", "pwr_loss_dense", "INVERSIONS", "MARGINS", "SCOPES"]

INVERSIONS = ("diff", "power", "exp", "ranknet")
MARGINS = ("teacher_std", "teacher_diff")
SCOPES = ("local", "global")


def _margin_value(margin: Union[float, str], t: torch.Tensor) -> Union[float, torch.Tensor]:
    if margin == "teacher_std":
        return t.std(unbiased=False) if t.numel() > 1 else t.new_zeros(())
    if isinstance(margin, str):
        raise ValueError(f"margin must be a number, 'teacher_std' or 'teacher_diff', got {margin!r}")
    return float(margin)


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


def pwr_loss_dense(s: torch.Tensor, t: torch.Tensor, inversion: str = "exp",
                   margin: Union[float, str] = "teacher_diff", p: float = 1.0, beta: float = 1.0) -> torch.Tensor:
    """The PWR loss over relation vectors ``s`` (student, with grad) and ``t`` (teacher), both of length M,
    computed densely over the M x M pairs of pairs (O(M^2) time and memory): the reference of the fast paths."""
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
        m = dt if margin == "teacher_diff" else _margin_value(margin, t)
        terms = inversion_loss(m - ds, inversion, p, beta)
    return torch.where(mask, terms, torch.zeros_like(terms)).sum() / count


@register_head("pwr")
class PairwiseRankingLoss(EmbeddingHead):
    """Pairwise ranking distillation (PWR): the student keeps the teacher's ORDER of in-batch pair distances."""

    paper = "Nikitin et al., Pairwise Ranking Distillation for Deep Face Recognition, GraphiCon 2020"

    def __init__(self, relation: Literal["cosine", "euclidean"] = "cosine",
                 inversion: Literal["diff", "power", "exp", "ranknet"] = "exp",
                 margin: Union[float, Literal["teacher_std", "teacher_diff"]] = "teacher_diff",
                 p: float = 1.0, beta: float = 1.0,
                 method: Literal["auto", "fast", "tiled", "dense"] = "auto",
                 scope: Literal["local", "global"] = "local", tile: int = 4096) -> None:
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
        if scope not in SCOPES:
            raise ValueError(f"pwr: scope must be one of {SCOPES}, got {scope!r}")
        if isinstance(tile, bool) or not isinstance(tile, int) or tile < 1:
            raise ValueError(f"pwr: tile must be a positive int (pairs per block side), got {tile!r}")
        if method == "fast":  # fail at construction, not at the first batch
            from .pwr_fast import resolve_method
            resolve_method(method, inversion, float(p))
        self.relation, self.inversion, self.margin, self.p, self.beta = relation, inversion, margin, float(p), float(beta)
        self.method, self.scope, self.tile = method, scope, tile
        self._param_names = ("relation", "inversion", "margin", "p", "beta", "method", "scope", "tile")

    def relations(self, student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The pair relation vectors (s, t) of the embeddings normalised as the PWR authors' MXNet code does
        (``L2Normalization``: x / sqrt(|x|^2 + 1e-10)). The 1e-10 matters for identical rows: their cosine distance
        is then ~1e-10 / |x|^2, the reference's value, instead of a +-1e-16 left to BLAS rounding (which decides
        whether two such pairs tie)."""
        return (pairwise_relations(l2_normalize_mx(student), self.relation),
                pairwise_relations(l2_normalize_mx(teacher), self.relation))

    def compute_loss(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if self.scope == "global":
            student = all_gather_with_grad(student, "pwr student embeddings")
            teacher = all_gather_no_grad(teacher, "pwr teacher embeddings")
        s, t = self.relations(student, teacher)
        if s.numel() == 0:
            loss = zero_loss(student)
        else:
            loss = pwr_loss(s, t, self.inversion, self.margin, self.p, self.beta, self.method, self.tile)
        return share_of_replicated_loss(loss) if self.scope == "global" else loss
