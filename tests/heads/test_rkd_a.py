"""rkd_a and rkd_da against slow loops over triples / pairs written from shared/spec/HEADS.md."""
from __future__ import annotations

import pytest
import torch

from insightface_pwr.heads.rkd_a import RKDAngleLoss
from insightface_pwr.heads.rkd_da import RKDDistanceAngleLoss
from insightface_pwr.heads.registry import create_head

from loop_reference import assert_attached_zero, assert_matches_reference, dot, huber, random_batch, rows

TOL = {torch.float64: dict(rtol=1e-9, atol=1e-12), torch.float32: dict(rtol=2e-4, atol=2e-6)}


def make_batch(n: int, ds: int, dt: int, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random embeddings (not unit norm); teacher row 2 duplicates row 0 (zero difference vectors, tied angles)."""
    return random_batch(n, ds, dt, dtype, seed, s_scale=1.5, t_scale=2.0)


# ---- the loop reference ----
def unit(v: list, convention: str) -> list:
    """pwr: v / sqrt(|v|^2 + 1e-10) (MXNet); rkd: v / max(|v|, 1e-12) (torch F.normalize)."""
    if convention == "pwr":
        inv = 1.0 / torch.sqrt(dot(v, v) + 1e-10)
        return [c * inv for c in v]
    sq = float(dot(v, v).detach())
    if sq == 0.0:
        return [c * 0.0 for c in v]  # e_ij = 0 when x_j = x_i
    norm = torch.sqrt(dot(v, v))
    return [c / torch.clamp(norm, min=1e-12) for c in v]


def ref_angles(x: torch.Tensor, convention: str) -> list:
    n = x.shape[0]
    r = rows(x)
    if convention == "pwr":
        r = [unit(v, "pwr") for v in r]
    e = [[unit([b - a for a, b in zip(r[i], r[j])], convention) for j in range(n)] for i in range(n)]
    return [[[dot(e[i][j], e[i][k]) for k in range(n)] for j in range(n)] for i in range(n)]


def ref_angle_loss(s: torch.Tensor, t: torch.Tensor, huber_delta: float = 1.0, convention: str = "pwr"):
    n = s.shape[0]
    a, b = ref_angles(s, convention), ref_angles(t, convention)
    return sum(huber(a[i][j][k] - b[i][j][k], huber_delta)
               for i in range(n) for j in range(n) for k in range(n)) / n ** 3


def ref_distance_loss(s: torch.Tensor, t: torch.Tensor, relation: str, convention: str):
    """RKD-D (default huber_delta 1, no mean_normalize) as a loop, for the rkd_da check."""
    n = s.shape[0]

    def mat(x):
        r = rows(x) if convention == "rkd" else [unit(v, "pwr") for v in rows(x)]
        d = [[0.0 if i == j else (1.0 - dot(r[i], r[j]) if relation == "cosine" else torch.sqrt(torch.clamp(
            dot(r[i], r[i]) + dot(r[j], r[j]) - 2.0 * dot(r[i], r[j]), min=1e-12))) for j in range(n)] for i in range(n)]
        if convention == "rkd":
            mean = sum(d[i][j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
            d = [[v / mean for v in row] for row in d]
        return d

    a, b = mat(s), mat(t)
    total = sum(huber(a[i][j] - b[i][j], 1.0) for i in range(n) for j in range(n))
    return total / (n * n) if convention == "rkd" else total / (n * (n - 1))


def compare(head, ref_fn, s: torch.Tensor, t: torch.Tensor) -> None:
    assert_matches_reference(head, ref_fn, s, t, TOL[s.dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("convention", ["pwr", "rkd"])
def test_angle_matches_loop(dtype, convention):
    for n, seed in [(5, 0), (3, 1), (2, 2)]:
        s, t = make_batch(n, 3, 4, dtype, seed)
        compare(create_head("rkd_a", convention=convention), lambda a, b: ref_angle_loss(a, b, convention=convention),
                s, t)


def test_angle_huber_delta_linear_branch():
    # delta 0.1: most angle differences of random batches exceed it, so the linear branch is exercised
    s, t = make_batch(5, 3, 3, torch.float64, 3)
    compare(create_head("rkd_a", huber_delta=0.1), lambda a, b: ref_angle_loss(a, b, huber_delta=0.1), s, t)


@pytest.mark.parametrize("convention, relation", [("pwr", "euclidean"), ("pwr", "cosine"), ("rkd", "euclidean")])
def test_rkd_da_is_distance_plus_twice_angle(convention, relation):
    s, t = make_batch(4, 3, 5, torch.float64, 4)
    compare(create_head("rkd_da", convention=convention, relation=relation),
            lambda a, b: ref_distance_loss(a, b, relation, convention) + 2.0 * ref_angle_loss(a, b, convention=convention),
            s, t)


@pytest.mark.parametrize("cls", [RKDAngleLoss, RKDDistanceAngleLoss])
def test_n1_zero_attached(cls):
    s, t = make_batch(1, 4, 3, torch.float64, 5)
    assert_attached_zero(cls(), s, t)


@pytest.mark.parametrize("convention", ["pwr", "rkd"])
def test_duplicate_student_rows_finite_gradient(convention):
    s, t = make_batch(5, 4, 3, torch.float64, 6)
    s[1] = s[0]
    x = s.clone().requires_grad_(True)
    RKDDistanceAngleLoss(convention=convention)(student=x, teacher=t).backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("cls, bad, match", [
    (RKDAngleLoss, dict(huber_delta=0.0), "rkd_a: huber_delta"), (RKDAngleLoss, dict(convention="x"), "convention"),
    (RKDDistanceAngleLoss, dict(huber_delta=float("inf")), "rkd_da: huber_delta"),
    (RKDDistanceAngleLoss, dict(relation="dot"), "rkd_da: relation"),
    (RKDDistanceAngleLoss, dict(convention="rkd", relation="cosine"), "relation")])
def test_bad_parameters(cls, bad, match):
    with pytest.raises(ValueError, match=match):
        cls(**bad)


@pytest.mark.parametrize("convention", ["pwr", "rkd"])
def test_tiny_differences(convention):
    # raw rows 1e-4 apart: the 1e-10 of MXNet's normalisation matters, F.normalize is scale-free
    s, t = make_batch(4, 3, 3, torch.float64, 7)
    s, t = 1e-4 * s, 1e-4 * t
    compare(create_head("rkd_a", convention=convention), lambda a, b: ref_angle_loss(a, b, convention=convention),
            s + (1.0 if convention == "pwr" else 0.0), t + (1.0 if convention == "pwr" else 0.0))
