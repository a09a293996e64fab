"""rkd_d against a slow loop over pairs written from shared/spec/HEADS.md (values and gradients)."""
from __future__ import annotations

import math

import pytest
import torch

from insightface_pwr.heads.rkd_d import RKDDistanceLoss
from insightface_pwr.heads.registry import create_head

from loop_reference import assert_attached_zero, assert_matches_reference, dot, huber, random_batch, rows

TOL = {torch.float64: dict(rtol=1e-9, atol=1e-12), torch.float32: dict(rtol=2e-4, atol=2e-6)}


def make_batch(n: int, ds: int, dt: int, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random embeddings (not unit norm); teacher row 2 duplicates row 0 (ties in the teacher relations)."""
    return random_batch(n, ds, dt, dtype, seed, s_scale=1.5, t_scale=2.0)


# ---- the loop reference (one scalar at a time) ----
def mx_normalize(r: list) -> list:
    inv = 1.0 / torch.sqrt(dot(r, r) + 1e-10)
    return [v * inv for v in r]


def dist(a: list, b: list, relation: str):
    if relation == "cosine":
        return 1.0 - dot(a, b)
    return torch.sqrt(torch.clamp(dot(a, a) + dot(b, b) - 2.0 * dot(a, b), min=1e-12))


def ref_matrix(x: torch.Tensor, relation: str, mean_normalize: bool, convention: str) -> list:
    n = x.shape[0]
    r = rows(x) if convention == "rkd" else [mx_normalize(v) for v in rows(x)]
    d = [[dist(r[i], r[j], relation) if i != j else 0.0 for j in range(n)] for i in range(n)]
    if convention == "rkd":
        mean = sum(d[i][j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
        return [[v / mean for v in row] for row in d]
    if mean_normalize:
        upper = [d[i][j] for i in range(n) for j in range(i + 1, n)]
        mean = sum(upper) / len(upper) + 1e-8
        return [[v / mean for v in row] for row in d]
    return d


def ref_loss(s: torch.Tensor, t: torch.Tensor, relation: str = "euclidean", mean_normalize: bool = False,
             huber_delta: float = 1.0, convention: str = "pwr"):
    n = s.shape[0]
    if n < 2:
        return s.sum() * 0.0
    a, b = ref_matrix(s, relation, mean_normalize, convention), ref_matrix(t, relation, mean_normalize, convention)
    if convention == "rkd":
        return sum(huber(a[i][j] - b[i][j], huber_delta) for i in range(n) for j in range(n)) / (n * n)
    per_row = [sum(huber(a[i][j] - b[i][j], huber_delta) for j in range(n)) / (n - 1) for i in range(n)]
    return sum(per_row) / n


def compare(head, s: torch.Tensor, t: torch.Tensor, tol: dict | None = None, **params) -> None:
    assert_matches_reference(head, lambda a, b: ref_loss(a, b, **params), s, t, tol or TOL[s.dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("relation", ["euclidean", "cosine"])
@pytest.mark.parametrize("mean_normalize", [False, True])
def test_pwr_convention_matches_loop(dtype, relation, mean_normalize):
    for n, seed in [(6, 0), (5, 1), (2, 2), (1, 3)]:
        s, t = make_batch(n, 4, 3, dtype, seed)
        params = dict(relation=relation, mean_normalize=mean_normalize)
        compare(create_head("rkd_d", **params), s, t, **params)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_rkd_convention_matches_loop(dtype):
    for n, seed in [(6, 4), (3, 5), (2, 6), (1, 7)]:
        s, t = make_batch(n, 3, 5, dtype, seed)
        compare(create_head("rkd_d", convention="rkd"), s, t, convention="rkd")


@pytest.mark.parametrize("delta", [0.4, 3.0])
def test_huber_delta_both_branches(delta):
    # scaled raw embeddings under "rkd" make large and small differences: both Huber branches are used
    s, t = make_batch(6, 4, 4, torch.float64, 8)
    compare(create_head("rkd_d", huber_delta=delta), s, t, huber_delta=delta)
    compare(create_head("rkd_d", huber_delta=delta, convention="rkd"), 3 * s, t, huber_delta=delta, convention="rkd")
    nd = ref_matrix(s, "euclidean", False, "pwr")
    td = ref_matrix(t, "euclidean", False, "pwr")
    diffs = [abs(float(nd[i][j] - td[i][j])) for i in range(6) for j in range(6) if i != j]
    if delta == 0.4:
        assert min(diffs) < delta < max(diffs)


def test_n1_zero_attached_and_n2_finite():
    s, t = make_batch(1, 4, 3, torch.float64, 9)
    assert_attached_zero(RKDDistanceLoss(), s, t)
    s, t = make_batch(2, 4, 3, torch.float64, 10)
    for conv in ("pwr", "rkd"):
        assert math.isfinite(RKDDistanceLoss(convention=conv)(student=s, teacher=t).item())


def test_duplicate_student_rows_finite_gradient():
    s, t = make_batch(5, 4, 3, torch.float64, 11)
    s[1] = s[0]
    for conv in ("pwr", "rkd"):
        x = s.clone().requires_grad_(True)
        RKDDistanceLoss(convention=conv)(student=x, teacher=t).backward()
        assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("bad, match", [
    (dict(relation="l2"), "relation"), (dict(huber_delta=0.0), "huber_delta"), (dict(huber_delta=-1.0), "huber_delta"),
    (dict(convention="mxnet"), "convention"), (dict(convention="rkd", relation="cosine"), "relation"),
    (dict(mean_normalize=1), "mean_normalize")])
def test_bad_parameters(bad, match):
    with pytest.raises(ValueError, match=match):
        RKDDistanceLoss(**bad)


@pytest.mark.parametrize("relation", ["euclidean", "cosine"])
def test_mean_normalize_on_tight_clusters(relation):
    # rows close together: mean distance ~1e-3, where the +1e-8 of the mean normalisation matters (1e-5)
    s, t = make_batch(5, 4, 3, torch.float64, 12)
    s = s[:1] + 1e-3 * s
    t = t[:1] + 1e-3 * t
    params = dict(relation=relation, mean_normalize=True)
    # distances of close rows lose ~1e-10 relative to cancellation (both sides), gradients are ~1e3
    compare(create_head("rkd_d", **params), s, t, tol=dict(rtol=1e-6, atol=1e-6), **params)
