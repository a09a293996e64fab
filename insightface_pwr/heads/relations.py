"""Relations (the relational function psi of RKD/PWR): distances between the rows of a batch.

Decided once here; the heads do not care which is used. Both are DISTANCES (larger = farther apart):
- ``euclidean``: d_ij = sqrt(max(|a_i|^2 + |a_j|^2 - 2 a_i.a_j, 1e-12))  (the clamp of the reference codes);
- ``cosine``: d_ij = 1 - a_i.a_j  (for L2-normalised rows, the cosine distance).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import kept

__all__ = ["RELATIONS", "distance_matrix", "pairwise_relations", "normalize", "upper_indices", "pair_index", "gram",
           "relation_vector", "relation_vector_backward", "relation_matrix_backward"]

RELATIONS = ("euclidean", "cosine")
EUCLIDEAN_EPS = 1e-12
_PAIR_INDEX: dict = {}  # (n, device, transposed) -> flat positions of the pairs i < j; a few recent sizes


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
        return _clamped_sqrt(_squared_distances(x, prod))
    raise ValueError(f"relation must be one of {RELATIONS}, got {relation!r}")


def _squared_distances(x: torch.Tensor, prod: torch.Tensor) -> torch.Tensor:
    """|a_i|^2 + |a_j|^2 - 2 a_i.a_j from the rows of ``x`` and their products ``prod`` (batched over leading dims)."""
    sq = (x * x).sum(dim=-1)
    return sq.unsqueeze(-1) + sq.unsqueeze(-2) - 2.0 * prod


def _clamped_sqrt(u: torch.Tensor) -> torch.Tensor:
    """The euclidean distance from the squared one: sqrt(max(u, 1e-12)) (the reference codes' clamp)."""
    return u.clamp(min=EUCLIDEAN_EPS).sqrt()


def upper_indices(n: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column indices of the strict upper triangle i < j, row-major: the M = n(n-1)/2 unordered pairs."""
    iu = torch.triu_indices(n, n, offset=1, device=device)
    return iu[0], iu[1]


def pairwise_relations(x: torch.Tensor, relation: str) -> torch.Tensor:
    """The M = N(N-1)/2 relation values of the pairs i < j (row-major), as a vector (differentiable)."""
    return relation_vector(x, relation, pair_index(x.shape[0], x.device))[0]


def pair_index(n: int, device: torch.device, transposed: bool = False) -> torch.Tensor:
    """The flat positions i n + j of the pairs i < j (row-major) in an n x n matrix, or with ``transposed`` their
    mirror positions j n + i (int64; cached for a few recent (n, device): a batch size rarely changes, and
    ``triu_indices`` takes 8 ms at n = 1024, 120 ms at 4096)."""
    def make() -> torch.Tensor:
        i, j = upper_indices(n, device)
        return j * n + i if transposed else i * n + j

    return kept(_PAIR_INDEX, (n, str(device), transposed), make, 8)  # (both kinds for 4 sizes)


SMALL_TRANSPOSE = 256  # up to this n the lower triangle is written through the transposed positions (one call)


def gram(x: torch.Tensor) -> torch.Tensor:
    """The products of the rows of ``x`` (n, d), or of each of b batches (b, n, d): (n, n) or (b, n, n)."""
    return torch.matmul(x, x.transpose(-1, -2))


def relation_vector(x: torch.Tensor, relation: str, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the M pair relations of the rows of ``x`` at ``flat`` (``pair_index``), what the backward needs: for
    euclidean the pairs' unclamped squared distances, else the relations themselves). ``x`` (n, d), or (b, n, d)
    for b batches at once (then (b, M) each)."""
    prod = gram(x)
    if relation == "cosine":
        rel = torch.sub(1.0, prod.flatten(-2).index_select(-1, flat))
        return rel, rel
    if relation == "euclidean":
        u = _squared_distances(x, prod).flatten(-2).index_select(-1, flat)
        return _clamped_sqrt(u), u
    raise ValueError(f"relation must be one of {RELATIONS}, got {relation!r}")


def relation_vector_backward(x: torch.Tensor, relation: str, rel: torch.Tensor, saved: torch.Tensor,
                             grad: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """d loss / d x from d loss / d rel (``grad``, M) for ``rel, saved = relation_vector(x, relation, flat)``: the
    pair gradients fill a symmetric n x n matrix K (the upper triangle, plus its transpose: written through the
    transposed positions up to n = ``SMALL_TRANSPOSE``, one call; above by a blocked copy, 3x faster there), then
    cosine: -K x; euclidean (d = sqrt(max(u, eps)), the clamp passing no gradient below eps): with H = K / d,
    rowsum(H) x - H x."""
    n = x.shape[0]
    if relation == "euclidean":
        grad = torch.where(saved >= EUCLIDEAN_EPS, grad / rel, 0.0)
    k = torch.zeros(n * n, dtype=x.dtype, device=x.device).index_copy_(0, flat, grad)
    if n <= SMALL_TRANSPOSE:  # (one scattered write; above, the blocked copy is faster: 2 ms against 7 at n = 1024)
        k = k.index_copy_(0, pair_index(n, x.device, transposed=True), grad).view(n, n)
    else:
        k = k.view(n, n)
        k.add_(k.t().contiguous())
    return relation_matrix_backward(x, relation, k)


def relation_matrix_backward(x: torch.Tensor, relation: str, k: torch.Tensor) -> torch.Tensor:
    """d loss / d x from the symmetric n x n matrix ``k`` of the pairs' gradients (zero diagonal; for euclidean
    already divided by the distances, the clamped pairs zero): cosine -K x, euclidean rowsum(K) x - K x."""
    if relation == "cosine":
        return torch.addmm(x, k, x, beta=0.0, alpha=-1.0)  # -K x (beta = 0: the first x is not read)
    return torch.addmm(x * k.sum(dim=1, keepdim=True), k, x, alpha=-1.0)
