"""feature against a slow loop over samples written from shared/spec/HEADS.md."""
from __future__ import annotations

import pytest
import torch

from insightface_pwr.heads.feature import FeatureConsistencyLoss
from insightface_pwr.heads.registry import create_head

from loop_reference import assert_matches_reference, random_batch

TOL = {torch.float64: dict(rtol=1e-9, atol=1e-12), torch.float32: dict(rtol=1e-4, atol=1e-6)}


def make_batch(n: int, d: int, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    return random_batch(n, d, d, dtype, seed, s_scale=3.0, t_scale=0.5)


def ref_loss(s: torch.Tensor, t: torch.Tensor, kind: str):
    n, d = s.shape
    total = s.sum() * 0.0
    for i in range(n):
        ns = torch.sqrt(sum(s[i, k] * s[i, k] for k in range(d)) + 1e-10)
        nt = torch.sqrt(sum(t[i, k] * t[i, k] for k in range(d)) + 1e-10)
        if kind == "cosine":
            total = total + 1.0 - sum(s[i, k] * t[i, k] for k in range(d)) / (ns * nt)
        else:
            total = total + sum((s[i, k] / ns - t[i, k] / nt) ** 2 for k in range(d))
    return total / n


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind", ["cosine", "l2"])
def test_matches_loop(dtype, kind):
    head = create_head("feature", kind=kind)
    for n, seed in [(5, 0), (2, 1), (1, 2)]:
        s, t = make_batch(n, 4, dtype, seed)
        assert_matches_reference(head, lambda a, b: ref_loss(a, b, kind), s, t, TOL[dtype])


def test_l2_is_twice_cosine_and_zero_when_aligned():
    s, t = make_batch(6, 5, torch.float64, 3)
    cos, l2 = FeatureConsistencyLoss("cosine"), FeatureConsistencyLoss(kind="l2")
    torch.testing.assert_close(l2(student=s, teacher=t), 2.0 * cos(student=s, teacher=t))
    assert cos(student=7.0 * t, teacher=t).item() == pytest.approx(0.0, abs=1e-9)


def test_needs_equal_dims_and_valid_kind():
    with pytest.raises(ValueError, match=r"student \(3, 4\).*teacher \(3, 5\)"):
        FeatureConsistencyLoss()(student=torch.randn(3, 4), teacher=torch.randn(3, 5))
    with pytest.raises(ValueError, match="kind"):
        FeatureConsistencyLoss(kind="l1")
