"""Relations (the relational function psi of RKD/PWR): distances between the rows of a batch.

Decided once here; the heads do not care which is used. Both are DISTANCES (larger = farther apart):
- ``euclidean``: d_ij = sqrt(max(|a_i|^2 + |a_j|^2 - 2 a_i.a_j, 1e-12))  (the clamp of the reference codes);
- ``cosine``: d_ij = 1 - a_i.a_j  (for L2-normalised rows, the cosine distance).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["RELATIONS", "distance_matrix", "pairwise_relations", "normalize", "upper_indices"]

RELATIONS = ("euclidean", "cosine")
EUCLIDEAN_EPS = 1e-12


def normalize(x: torch.Tensor) -> torch.Tensor:
    """L2-normalise each row (a zero row stays zero)."""
    return F.normalize(x, p=2.0, dim=1, eps=1e-12)


def distance_matrix(x: torch.Tensor, relation: str) -> torch.Tensor:
    """The N x N matrix of ``relation`` distances between the rows of ``x`` (diagonal as the formula gives:
    sqrt(1e-12) = 1e-6 for euclidean, 1 - |a_i|^2 for cosine)."""
    prod = x @ x.t()
    if relation == "cosine":
        return 1.0 - prod
    if relation == "euclidean":
        sq = (x * x).sum(dim=1)
        return (sq[:, None] + sq[None, :] - 2.0 * prod).clamp(min=EUCLIDEAN_EPS).sqrt()
    raise ValueError(f"relation must be one of {RELATIONS}, got {relation!r}")


def upper_indices(n: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column indices of the strict upper triangle i < j, row-major: the M = n(n-1)/2 unordered pairs."""
    iu = torch.triu_indices(n, n, offset=1, device=device)
    return iu[0], iu[1]


def pairwise_relations(x: torch.Tensor, relation: str) -> torch.Tensor:
    """The M = N(N-1)/2 relation values of the pairs i < j (row-major), as a vector."""
    i, j = upper_indices(x.shape[0], x.device)
    return distance_matrix(x, relation)[i, j]
