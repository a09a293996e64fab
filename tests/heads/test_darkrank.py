"""darkrank against a slow loop over anchors and orderings written from shared/spec/HEADS.md."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from insightface_pwr.heads.darkrank import DarkRankLoss
from insightface_pwr.heads.registry import create_head

from loop_reference import assert_attached_zero, assert_matches_reference, dot, random_batch, rows

TOL = {torch.float64: dict(rtol=1e-9, atol=1e-11), torch.float32: dict(rtol=2e-4, atol=2e-5)}


def make_batch(n: int, ds: int, dt: int, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random embeddings; teacher row 2 duplicates row 0 (tied teacher scores for every other anchor)."""
    return random_batch(n, ds, dt, dtype, seed)


# ---- the loop reference ----
def score(a: list, b: list, relation: str, alpha: float, beta: float):
    """sc = -alpha * d ** beta, the distance clamped at 1e-12 before the power (documented in darkrank.py)."""
    if relation == "cosine":
        d = 1.0 - dot(a, b)
    else:
        d = torch.sqrt(torch.clamp(dot(a, a) + dot(b, b) - 2.0 * dot(a, b), min=1e-12))
    return -alpha * torch.clamp(d, min=1e-12) ** beta


def score_rows(x: torch.Tensor, convention: str) -> list:
    r = rows(x)
    if convention == "pwr":
        r = [[c / torch.sqrt(dot(v, v) + 1e-10) for c in v] for v in r]
    return r


def pl_prob(z: list):
    """Plackett-Luce probability of the order z[0], z[1], ... as an explicit product."""
    p = 1.0
    for k in range(len(z)):
        p = p * torch.exp(z[k]) / sum(torch.exp(z[l]) for l in range(k, len(z)))
    return p


def ref_loss(s: torch.Tensor, t: torch.Tensor, alpha: float = 3.0, beta: float = 3.0, list_length: int = 4,
             relation: str = "euclidean", soft: bool = False, convention: str = "pwr"):
    n = s.shape[0]
    rs, rt = score_rows(s, convention), score_rows(t, convention)
    k = min(list_length, n) - 1
    total = s.sum() * 0.0
    for i in range(n):
        others = [j for j in range(n) if j != i]
        sc_t = {j: float(score(rt[i], rt[j], relation, alpha, beta)) for j in others}
        chosen = sorted(others, key=lambda j: (-sc_t[j], j))[:k]  # ties: lower index first
        z = [score(rs[i], rs[j], relation, alpha, beta) for j in chosen]
        if not soft:
            total = total - sum(z[m] - torch.log(sum(torch.exp(z[l]) for l in range(m, k))) for m in range(k))
        else:
            zt = [torch.tensor(sc_t[j], dtype=torch.float64) for j in chosen]
            for perm in itertools.permutations(range(k)):
                pt = float(pl_prob([zt[m] for m in perm]))
                ps = pl_prob([z[m] for m in perm])
                total = total + pt * (math.log(pt) - torch.log(ps))
    return total / n


def compare(s: torch.Tensor, t: torch.Tensor, **params) -> None:
    assert_matches_reference(create_head("darkrank", **params), lambda a, b: ref_loss(a, b, **params), s, t,
                             TOL[s.dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("relation", ["euclidean", "cosine"])
@pytest.mark.parametrize("soft", [False, True])
def test_matches_loop(dtype, relation, soft):
    for n, seed, list_length in [(6, 0, 4), (5, 1, 3), (4, 2, 8), (3, 3, 4)]:
        s, t = make_batch(n, 3, 4, dtype, seed)
        compare(s, t, relation=relation, soft=soft, list_length=list_length)


@pytest.mark.parametrize("soft", [False, True])
def test_rkd_convention_and_other_alpha_beta(soft):
    s, t = make_batch(6, 4, 3, torch.float64, 4)
    compare(s, t, convention="rkd", soft=soft)
    compare(s, t, alpha=1.5, beta=0.5, soft=soft, list_length=5)
    compare(s, t, alpha=2.0, beta=1.0, relation="cosine", soft=soft)


def test_anchor_excluded_when_a_duplicate_ties_with_it():
    # student rows 0 and 1 identical: each is at distance 1e-6 (the clamp) from the other AND from itself
    s, t = make_batch(5, 3, 3, torch.float64, 5)
    t[1] = t[0]
    compare(s, t)
    s[1] = s[0]
    x = s.clone().requires_grad_(True)
    DarkRankLoss(soft=True, beta=0.5, relation="cosine")(student=x, teacher=t).backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("soft", [False, True])
def test_no_list_gives_attached_zero(n, soft):
    s, t = make_batch(n, 4, 3, torch.float64, 6)
    assert_attached_zero(DarkRankLoss(soft=soft), s, t)


def test_soft_zero_when_student_equals_teacher():
    s, _ = make_batch(6, 4, 4, torch.float64, 7)
    assert DarkRankLoss(soft=True)(student=s, teacher=s.clone()).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("bad, match", [
    (dict(list_length=1), "list_length"), (dict(list_length=3.0), "list_length"),
    (dict(list_length=9, soft=True), "list_length"), (dict(alpha=0.0), "alpha"), (dict(beta=-1.0), "beta"),
    (dict(relation="l2"), "relation"), (dict(convention="rkd", relation="cosine"), "relation"),
    (dict(soft="yes"), "soft"), (dict(convention="x"), "convention")])
def test_bad_parameters(bad, match):
    with pytest.raises(ValueError, match=match):
        DarkRankLoss(**bad)
