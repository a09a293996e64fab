"""adadistill against a slow loop written from shared/spec/HEADS_FR.md (values, gradients, centres over consecutive
calls; both margins, both alphas), the last-occurrence rule, state_dict round trip, parameter checks, no host sync."""
from __future__ import annotations

import math

import pytest
import torch

from insightface_pwr.heads.adadistill import adadistill_alpha, adadistill_update
from insightface_pwr.heads.base import debug_checks
from insightface_pwr.heads.registry import create_head

from loop_reference import assert_matches_reference
from test_ekd import assert_no_host_sync

TOL = {torch.float64: dict(rtol=1e-9, atol=1e-12), torch.float32: dict(rtol=2e-4, atol=2e-5)}


def dot(a, b):
    return sum(a[k] * b[k] for k in range(len(a)))


def cos(a, b):  # torch.nn.CosineSimilarity's eps 1e-8 on each norm
    return dot(a, b) / (max(math.sqrt(dot(a, a)), 1e-8) * max(math.sqrt(dot(b, b)), 1e-8))


class LoopAdaDistill:
    """The centres as Python lists of floats; the loss one sample and one class at a time."""

    def __init__(self, centres: torch.Tensor, margin_type="arcface", m=0.45, s=64.0, adaptive=True):
        self.w = [[float(v) for v in row] for row in centres]
        self.margin_type, self.m, self.s, self.adaptive = margin_type, m, s, adaptive

    def __call__(self, S: torch.Tensor, T: torch.Tensor, labels: list):
        n = len(labels)
        s = [S[i] / torch.sqrt((S[i] * S[i]).sum()) for i in range(n)]
        t = [[float(v) for v in T[i]] for i in range(n)]
        t = [[v / math.sqrt(dot(r, r)) for v in r] for r in t]
        old = [list(r) for r in self.w]
        for i in range(n):  # in batch order: a later sample of the same class overwrites an earlier one
            c = min(max(cos([float(v) for v in s[i].detach()], t[i]), -1.0), 1.0)
            if self.adaptive:
                c = c * min(max(cos(old[labels[i]], t[i]), 1e-6), 1.0)
            a = min(max(c, 1e-6), 1.0)
            self.w[labels[i]] = [a * old[labels[i]][k] + (1 - a) * t[i][k] for k in range(len(t[i]))]
        wn = [[v / math.sqrt(dot(r, r)) for v in r] for r in self.w]
        total = 0.0
        for i in range(n):
            logits = []
            for j in range(len(wn)):
                c = torch.clamp(dot(s[i], wn[j]), -1.0, 1.0)
                if j == labels[i]:
                    c = torch.cos(torch.acos(c) + self.m) if self.margin_type == "arcface" else c - self.m
                logits.append(self.s * c)
            z = torch.stack(logits)
            total = total + torch.logsumexp(z, 0) - z[labels[i]]
        return total / n


def batch(n: int, d: int, c: int, seed: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, c, (n,), generator=g)
    centres = torch.randn(c, d, generator=g, dtype=torch.float64)
    t = centres[labels] + 0.7 * torch.randn(n, d, generator=g, dtype=torch.float64)
    s = 1.3 * (t + 0.6 * torch.randn(n, d, generator=g, dtype=torch.float64))
    return s.to(dtype), (2 * t).to(dtype), labels


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("params", [
    dict(margin_type="arcface", m=0.45, s=64.0),
    dict(margin_type="cosface", m=0.35, s=64.0),
    dict(margin_type="arcface", m=0.5, s=16.0, adaptive_weighted_alpha=False),
    dict(margin_type="cosface", m=0.2, s=30.0, adaptive_weighted_alpha=False),
])
def test_matches_loop_over_consecutive_calls(params, dtype):
    c, d = 7, 6
    torch.manual_seed(0)
    head = create_head("adadistill", num_classes=c, embedding_size=d, **params).to(dtype)
    ref = LoopAdaDistill(head.centres.double(), params["margin_type"], params["m"], params["s"],
                         params.get("adaptive_weighted_alpha", True))
    for seed in range(3):
        s, t, y = batch(10, d, c, seed, dtype)  # 10 samples over 7 classes: repeated labels
        assert s.dtype == dtype
        assert_matches_reference(head, lambda s2, t2: ref(s2, t2, y.tolist()), s, t, TOL[dtype], labels=y)
        torch.testing.assert_close(head.centres, torch.tensor(ref.w, dtype=dtype), **TOL[dtype])


def test_repeated_label_keeps_the_last_sample_update():
    d = 4
    centres = torch.randn(3, d, dtype=torch.float64)
    t = torch.nn.functional.normalize(torch.randn(5, d, dtype=torch.float64), dim=1)
    labels = torch.tensor([2, 0, 2, 1, 2])
    alpha = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5], dtype=torch.float64)
    old = centres.clone()
    adadistill_update(centres, labels, alpha, t)
    torch.testing.assert_close(centres[2], 0.5 * old[2] + 0.5 * t[4], rtol=0, atol=1e-15)
    torch.testing.assert_close(centres[0], 0.2 * old[0] + 0.8 * t[1], rtol=0, atol=1e-15)
    torch.testing.assert_close(centres[1], 0.4 * old[1] + 0.6 * t[3], rtol=0, atol=1e-15)


def test_alpha_forms():
    s = torch.nn.functional.normalize(torch.randn(6, 5, dtype=torch.float64), dim=1)
    t = torch.nn.functional.normalize(torch.randn(6, 5, dtype=torch.float64), dim=1)
    w = torch.randn(6, 5, dtype=torch.float64)
    c = (s * t).sum(1)
    lam = (torch.nn.functional.normalize(w, dim=1) * t).sum(1).clamp(1e-6, 1)
    torch.testing.assert_close(adadistill_alpha(s, t, w, True), (c * lam).clamp(1e-6, 1))
    torch.testing.assert_close(adadistill_alpha(s, t, w, False), c.clamp(1e-6, 1))


def test_centres_are_seeded_by_torch_and_have_init_std():
    torch.manual_seed(3)
    a = create_head("adadistill", num_classes=200, embedding_size=64, init_std=0.02)
    torch.manual_seed(3)
    b = create_head("adadistill", num_classes=200, embedding_size=64, init_std=0.02)
    assert torch.equal(a.centres, b.centres) and set(a.state_dict()) == {"centres"}
    assert abs(float(a.centres.std()) - 0.02) < 0.001 and not a.centres.requires_grad
    assert list(a.parameters()) == []


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_state_dict_round_trip(dtype):
    head = create_head("adadistill", num_classes=5, embedding_size=4, margin_type="cosface").to(dtype)
    batches = [batch(8, 4, 5, seed, dtype) for seed in range(4)]
    for s, t, y in batches[:3]:
        head(student=s, teacher=t, labels=y)
    fresh = create_head("adadistill", num_classes=5, embedding_size=4, margin_type="cosface").to(dtype)
    fresh.load_state_dict(head.state_dict())
    s, t, y = batches[3]
    assert torch.equal(head(student=s, teacher=t, labels=y), fresh(student=s, teacher=t, labels=y))
    assert torch.equal(head.centres, fresh.centres)


def test_teacher_and_centres_get_no_gradient():
    head = create_head("adadistill", num_classes=5, embedding_size=4)
    s, t, y = batch(8, 4, 5, 0)
    t.requires_grad_(True)
    s.requires_grad_(True)
    head(student=s, teacher=t, labels=y).backward()
    assert t.grad is None and s.grad.abs().sum() > 0


@pytest.mark.parametrize("params,name", [
    (dict(), "num_classes"), (dict(num_classes=0), "num_classes"), (dict(num_classes=3, embedding_size=0),
                                                                     "embedding_size"),
    (dict(num_classes=3, margin_type="sphereface"), "margin_type"), (dict(num_classes=3, m=-0.1), "m"),
    (dict(num_classes=3, s=0.0), "s"), (dict(num_classes=3, init_std=0.0), "init_std"),
    (dict(num_classes=3, adaptive_weighted_alpha=1), "adaptive_weighted_alpha"),
])
def test_parameter_errors_name_the_parameter(params, name):
    with pytest.raises((ValueError, TypeError), match=name):
        create_head("adadistill", **params)


def test_input_errors():
    head = create_head("adadistill", num_classes=5, embedding_size=4)
    s, t, y = batch(6, 4, 5, 0)
    with pytest.raises(ValueError, match="embedding_size"):
        create_head("adadistill", num_classes=5, embedding_size=3)(student=s, teacher=t, labels=y)
    with pytest.raises(ValueError, match="equal embedding sizes"):
        head(student=s, teacher=torch.randn(6, 5, dtype=torch.float64), labels=y)
    with pytest.raises(ValueError, match="labels"):
        head(student=s, teacher=t)
    with debug_checks(), pytest.raises(ValueError, match="num_classes"):
        head(student=s, teacher=t, labels=torch.full((6,), 5))


def test_no_host_sync():
    s, t, y = batch(9, 4, 5, 0)
    for margin in ("arcface", "cosface"):
        for adaptive in (True, False):
            head = create_head("adadistill", num_classes=5, embedding_size=4, margin_type=margin,
                               adaptive_weighted_alpha=adaptive)
            assert_no_host_sync(head, student=s, teacher=t, labels=y)
