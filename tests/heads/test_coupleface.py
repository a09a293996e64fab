"""coupleface_provisional against a slow loop written from the provisional section of shared/spec/HEADS_FR.md
(values and gradients), its mining edge cases, parameter checks and the absence of host syncs."""
from __future__ import annotations

import math

import pytest
import torch

from insightface_pwr.heads.registry import create_head, get_head_spec

from test_ekd import assert_no_host_sync

TOL = {torch.float64: dict(rtol=1e-9, atol=1e-12), torch.float32: dict(rtol=2e-4, atol=2e-6)}


def mx_norm(r):
    inv = 1.0 / torch.sqrt((r * r).sum() + 1e-10)
    return r * inv


def loop_loss(S, T, labels, num_negatives=10, lambda_fcd=1.0, lambda_rad=1.0):
    n = len(labels)
    s = [mx_norm(S[i]) for i in range(n)]
    t = [mx_norm(T[i].detach()) for i in range(n)]
    fcd = sum(((s[i] - t[i]) ** 2).sum() for i in range(n)) / n
    mined = set()
    for i in range(n):
        for j in range(n):
            if i != j and labels[i] == labels[j]:
                mined.add((min(i, j), max(i, j)))
        negs = [j for j in range(n) if labels[j] != labels[i]]
        negs.sort(key=lambda j: (-float((t[i] * t[j]).sum()), j))  # largest teacher similarity, then lower index
        for j in negs[:num_negatives]:
            mined.add((min(i, j), max(i, j)))
    if mined:
        rad = sum(((s[i] * s[j]).sum() - (t[i] * t[j]).sum()) ** 2 for i, j in mined) / len(mined)
    else:
        rad = 0.0
    return lambda_fcd * fcd + lambda_rad * rad


def batch(n, d, seed, dtype=torch.float64, per_class=2):
    g = torch.Generator().manual_seed(seed)
    labels = (torch.arange(n) // per_class)[torch.randperm(n, generator=g)]
    t = torch.randn(n, d, generator=g, dtype=torch.float64)
    s = t + 0.7 * torch.randn(n, d, generator=g, dtype=torch.float64)
    return s.to(dtype), (1.5 * t).to(dtype), labels


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("params,n,per_class", [
    ({}, 14, 2), ({"num_negatives": 2}, 12, 3), ({"num_negatives": 0}, 9, 3),
    ({"num_negatives": 3, "lambda_fcd": 0.5, "lambda_rad": 4.0}, 10, 1), ({"num_negatives": 50}, 7, 2),
])
def test_matches_loop(params, n, per_class, dtype):
    head = create_head("coupleface_provisional", **params)
    for seed in range(2):
        s, t, y = batch(n, 6, seed, dtype, per_class)
        s1 = s.clone().requires_grad_(True)
        out = head(student=s1, teacher=t, labels=y)
        out.backward()
        s2 = s.clone().requires_grad_(True)
        ref = loop_loss(s2, t, y.tolist(), **params)
        ref.backward()
        assert out.dtype == dtype and out.dim() == 0
        torch.testing.assert_close(out.detach(), ref.detach().to(dtype), **TOL[dtype])
        torch.testing.assert_close(s1.grad, s2.grad, **TOL[dtype])


def test_teacher_ties_choose_the_lower_index():
    s, t, y = batch(8, 5, 3, per_class=1)
    t[6] = t[4]  # rows 4 and 6 tie in every teacher similarity
    s1 = s.clone().requires_grad_(True)
    out = create_head("coupleface_provisional", num_negatives=1)(student=s1, teacher=t, labels=y)
    out.backward()
    s2 = s.clone().requires_grad_(True)
    ref = loop_loss(s2, t, y.tolist(), num_negatives=1)
    ref.backward()
    torch.testing.assert_close(out.detach(), ref.detach(), **TOL[torch.float64])
    torch.testing.assert_close(s1.grad, s2.grad, **TOL[torch.float64])


def test_single_row_is_the_feature_term_only():
    s, t, y = batch(1, 5, 0)
    out = create_head("coupleface_provisional")(student=s, teacher=t, labels=y)
    assert math.isclose(float(out), float(loop_loss(s, t, y.tolist())), rel_tol=1e-12)


def test_provisional_name_and_docstring():
    spec = get_head_spec("coupleface_provisional")
    assert "provisional" in spec.summary.lower()
    with pytest.raises(ValueError):
        get_head_spec("coupleface")


@pytest.mark.parametrize("params,name", [
    (dict(num_negatives=-1), "num_negatives"), (dict(num_negatives=1.5), "num_negatives"),
    (dict(lambda_fcd=-1.0), "lambda_fcd"), (dict(lambda_rad=float("nan")), "lambda_rad"),
])
def test_parameter_errors_name_the_parameter(params, name):
    with pytest.raises((ValueError, TypeError), match=name):
        create_head("coupleface_provisional", **params)


def test_no_host_sync():
    for per_class in (1, 3):
        s, t, y = batch(9, 5, 0, per_class=per_class)
        assert_no_host_sync(create_head("coupleface_provisional", num_negatives=2), student=s, teacher=t, labels=y)
