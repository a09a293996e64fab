"""DarkRank: distil the teacher's ranking of each anchor's nearest neighbours (listwise).

Chen, Wang, Zhang, "DarkRank: Accelerating Deep Metric Learning via Cross Sample Similarities Transfer",
AAAI 2018; used as a baseline (DarkRank, weight 1) in Nikitin et al., "Pairwise Ranking Distillation for Deep Face
Recognition", GraphiCon 2020. The definition below is complete.

Scores are SIMILARITIES made from distances: sc_ij = -alpha * d_ij ** beta (``relation`` distance of the
L2-normalised rows, MXNet normalisation x / sqrt(|x|^2 + 1e-10); ``convention="rkd"``: raw rows, euclidean only).
For each anchor i the teacher's scores, sorted descending, pick its K = min(list_length, N) - 1 nearest OTHER
samples; z_1..z_K are the student's scores of those samples in the teacher's order.

- hard (ListMLE, default): loss_i = -sum_k log(exp(z_k) / sum_{l >= k} exp(z_l)) = -log P_PL(teacher order | z).
- soft (ListNet, ``soft=True``): KL(P_t || P_s) of the Plackett-Luce distributions over all K! orderings of the
  K samples, P_t from the teacher's scores of them and P_s from the student's.
The loss is the MEAN over the N anchors. N <= 2 (a list of at most one sample) gives a zero attached to the graph.

Details and deviations from the reference codes (mnikitin/KD-PWR ``darkrank.py``, lenscloth/RKD ``HardDarkRank``):
- the anchor is excluded explicitly (the references drop rank 0 of the sorted row, which is the anchor unless a
  duplicate of it ties at distance 1e-6); ties between other samples keep index order (stable sort).
- K = min(list_length, N) - 1 as the MXNet code (the RKD code's ``permute_len`` is K; set list_length =
  permute_len + 1 with ``convention="rkd"``).
- distances are clamped at 1e-12 before the power (cosine distances of duplicates can be 0 or slightly negative;
  a non-integer beta would then give NaN); the euclidean distance is already >= 1e-6.
- soft follows the spec (a proper KL over the orderings); the MXNet soft code sums unnormalised terms.
- half-precision inputs (float16 / bfloat16) are computed in float32.
- list_length is capped at 8 for ``soft`` (7! = 5040 orderings per anchor).

Recipe use (the paper's DarkRank row: weight 1 beside CosFace)::

    config.distill.heads = [edict(name="darkrank", weight=1.0, params=edict(alpha=3.0, beta=3.0, list_length=4))]
"""
from __future__ import annotations

import itertools
from typing import Literal

import torch

from .registry import register_head
from .base import EmbeddingHead, zero_loss
from .common import at_least_float32, check_choice, check_int, check_positive, l2_normalize_mx
from .relations import RELATIONS, distance_matrix
from .rkd_d import CONVENTIONS

__all__ = ["DarkRankLoss", "darkrank_loss", "plackett_luce_log_prob", "MAX_SOFT_LIST_LENGTH", "DIST_FLOOR"]

MAX_SOFT_LIST_LENGTH = 8
DIST_FLOOR = 1e-12


def _scores(x: torch.Tensor, relation: str, alpha: float, beta: float, convention: str) -> torch.Tensor:
    if convention == "pwr":
        x = l2_normalize_mx(x)
    return -alpha * distance_matrix(x, relation).clamp(min=DIST_FLOOR) ** beta


def plackett_luce_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log P(order 1..K | scores z) of the Plackett-Luce model, over the last axis: sum_k z_k - logsumexp(z_k..K)."""
    tail_lse = torch.logcumsumexp(z.flip(-1), dim=-1).flip(-1)
    return (z - tail_lse).sum(dim=-1)


def darkrank_loss(student: torch.Tensor, teacher: torch.Tensor, alpha: float = 3.0, beta: float = 3.0,
                  list_length: int = 4, relation: str = "euclidean", soft: bool = False,
                  convention: str = "pwr") -> torch.Tensor:
    """The DarkRank loss of N x D_s student and N x D_t teacher embeddings (see the module docstring)."""
    n = student.shape[0]
    k = min(list_length, n) - 1
    if k < 2:
        return zero_loss(student)
    student, teacher = at_least_float32(student), at_least_float32(teacher.detach())
    with torch.no_grad():
        sc_t = _scores(teacher, relation, alpha, beta, convention)
        eye = torch.eye(n, dtype=torch.bool, device=sc_t.device)
        order = torch.sort(sc_t.masked_fill(eye, float("-inf")), dim=1, descending=True, stable=True).indices[:, :k]
    z = _scores(student, relation, alpha, beta, convention).gather(1, order)  # N x K, teacher's order
    if not soft:
        return -plackett_luce_log_prob(z).mean()
    perms = torch.tensor(list(itertools.permutations(range(k))), device=z.device)  # K! x K
    log_ps = plackett_luce_log_prob(z[:, perms])  # N x K!
    with torch.no_grad():
        log_pt = plackett_luce_log_prob(sc_t.gather(1, order)[:, perms])
    return (log_pt.exp() * (log_pt - log_ps)).sum(dim=1).mean()


@register_head("darkrank")
class DarkRankLoss(EmbeddingHead):
    """DarkRank: the student's scores must rank each anchor's neighbours in the teacher's order (ListMLE/ListNet)."""

    paper = ("Chen et al., DarkRank: Accelerating Deep Metric Learning via Cross Sample Similarities Transfer, "
             "AAAI 2018")

    def __init__(self, alpha: float = 3.0, beta: float = 3.0, list_length: int = 4,
                 relation: Literal["euclidean", "cosine"] = "euclidean", soft: bool = False,
                 convention: Literal["pwr", "rkd"] = "pwr") -> None:
        super().__init__()
        self.alpha = check_positive("darkrank", "alpha", alpha)
        self.beta = check_positive("darkrank", "beta", beta)
        check_choice("darkrank", "relation", relation, RELATIONS)
        check_choice("darkrank", "convention", convention, CONVENTIONS)
        if not isinstance(soft, bool):
            raise ValueError(f"darkrank: soft must be True or False, got {soft!r}")
        self.list_length = check_int("darkrank", "list_length", list_length, 2,
                                     MAX_SOFT_LIST_LENGTH if soft else None)
        if convention == "rkd" and relation != "euclidean":
            raise ValueError(f"darkrank: convention='rkd' (the original RKD code) uses euclidean distances of raw "
                             f"embeddings; got relation={relation!r}. Use convention='pwr' for cosine.")
        self.relation, self.soft, self.convention = relation, soft, convention
        self._param_names = ("alpha", "beta", "list_length", "relation", "soft", "convention")

    def compute_loss(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return darkrank_loss(student, teacher, self.alpha, self.beta, self.list_length, self.relation, self.soft,
                             self.convention)
