"""CoupleFace (provisional): feature consistency plus distillation of teacher-mined pair relations.

Liu, Qin, Wu, Guo, Liang, Xu, "CoupleFace: Relation Matters for Face Recognition Distillation", ECCV 2022
(arXiv 2204.05502). PROVISIONAL: only the paper's abstract could be read; no code of the authors is public.
What the abstract fixes: the objective adds Mutual Relation Distillation (MRD) to Feature Consistency
Distillation (FCD, "e.g. L2 distance" between each sample's teacher and student embeddings), and MRD first mines
"informative mutual relations", then transfers them with a Relation-Aware Distillation (RAD) loss. Everything
below that goes further is OUR CHOICE, not the paper's, which is why the head is registered only as
``coupleface_provisional``:

- loss = lambda_fcd L_FCD + lambda_rad L_RAD (both 1 by default).
- L_FCD = mean over the batch of |s_i - t_i|^2 of the L2-normalised rows (the ``feature`` head's l2 form; rows
  normalised as x / sqrt(|x|^2 + 1e-10), the convention of this package's heads). Needs D_s = D_t.
- A relation is the cosine similarity of a pair i < j: x_p = s_i . s_j for the student, y_p = t_i . t_j for the
  teacher (as in the ``ekd`` head).
- Mining is done by the TEACHER: every positive pair (same label), and for every sample i its ``num_negatives``
  negatives of largest teacher similarity (ties broken by the lower index); a pair chosen from both of its ends
  counts once. A row with fewer negatives than ``num_negatives`` takes all of them.
- L_RAD = the mean over the mined pairs of (x_p - y_p)^2; no mined pair (N < 2) gives an attached zero.

Not known (see the report of this head): the paper's FCD form and weight, whether relations are similarities or
distances, what is mined (positives/negatives, by teacher or student, in the batch or from a feature bank, with
which k or thresholds), the RAD formula and what makes it relation-aware, the loss weights, the training setup
and the reported figures.

Conventions of this package kept here: no host synchronisation (masks, sorts and gathers; the count of mined
pairs stays a tensor); half-precision inputs are computed in float32; the teacher gets no gradient.

Recipe use (beside the margin loss; the weights are placeholders until the paper is read)::

    config.distill.heads = [edict(name="coupleface_provisional", weight=1.0, params=edict(num_negatives=10))]
"""
from __future__ import annotations


import torch

from .registry import register_head
from .base import EmbeddingHead
from .common import at_least_float32, check_int, check_nonnegative, l2_normalize_mx

__all__ = ["CoupleFaceProvisionalLoss", "coupleface_mined_pairs"]


def coupleface_mined_pairs(t_sim: torch.Tensor, labels: torch.Tensor, num_negatives: int) -> torch.Tensor:
    """N x N boolean mask (strict upper triangle) of the mined pairs: all positives, plus each row's
    ``num_negatives`` negatives of largest teacher similarity ``t_sim``, symmetrised."""
    n = t_sim.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=t_sim.device)
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    neg = ~same
    pos = same & ~eye
    k = min(num_negatives, n - 1)
    chosen = torch.zeros_like(neg)
    if k > 0:
        key = torch.where(neg, t_sim, torch.full_like(t_sim, float("-inf")))
        order = torch.sort(key, dim=1, descending=True, stable=True).indices[:, :k]
        chosen = chosen.scatter(1, order, neg.gather(1, order))  # a row with fewer negatives keeps only those
    mined = pos | chosen | chosen.t()
    return torch.triu(mined, diagonal=1)


@register_head("coupleface_provisional")
class CoupleFaceProvisionalLoss(EmbeddingHead):
    """CoupleFace, provisional (abstract only): feature L2 + squared error of teacher-mined pair similarities."""

    paper = "Liu et al., CoupleFace: Relation Matters for Face Recognition Distillation, ECCV 2022"
    uses_labels = True
    same_dim = True
    relational = True

    def __init__(self, num_negatives: int = 10, lambda_fcd: float = 1.0, lambda_rad: float = 1.0) -> None:
        super().__init__()
        self.num_negatives = check_int("coupleface_provisional", "num_negatives", num_negatives, 0)
        self.lambda_fcd = check_nonnegative("coupleface_provisional", "lambda_fcd", lambda_fcd)
        self.lambda_rad = check_nonnegative("coupleface_provisional", "lambda_rad", lambda_rad)
        self._param_names = ("num_negatives", "lambda_fcd", "lambda_rad")

    def compute_loss(self, student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        s = l2_normalize_mx(at_least_float32(student))
        t = l2_normalize_mx(at_least_float32(teacher.detach()))
        l_fcd = ((s - t) ** 2).sum(dim=1).mean()
        x = s @ s.t()
        with torch.no_grad():
            y = t @ t.t()
            mined = coupleface_mined_pairs(y, labels.to(s.device), self.num_negatives)
            count = mined.sum().clamp(min=1).to(s.dtype)
        d2 = (x - y) ** 2
        l_rad = torch.where(mined, d2, torch.zeros_like(d2)).sum() / count
        return self.lambda_fcd * l_fcd + self.lambda_rad * l_rad
