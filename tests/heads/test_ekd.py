"""ekd against a slow loop written from shared/spec/HEADS_FR.md (values, gradients, anchors over consecutive calls),
its edge cases, state_dict round trip, parameter checks and the absence of host syncs."""
from __future__ import annotations

import contextlib
import math
from typing import Iterator

import pytest
import torch

from insightface_pwr.heads.base import debug_checks
from insightface_pwr.heads.registry import create_head

from loop_reference import assert_matches_reference

TOL = {torch.float64: dict(rtol=1e-9, atol=1e-12), torch.float32: dict(rtol=2e-4, atol=2e-6)}
DEFAULT_ANCHORS = (10, 100, 1000, 10000, 100000, 1000000)


# ---- the loop reference: pairs in Python lists, one scalar at a time; the anchors are Python floats ----
class LoopEKD:
    def __init__(self, topk=2000, t=0.01, anchors=DEFAULT_ANCHORS, momentum=0.01, w_pos=0.02, w_neg=0.01,
                 nan_on_empty=False):
        self.topk, self.t, self.anchors, self.mu = topk, t, anchors, momentum
        self.w_pos, self.w_neg, self.nan_on_empty = w_pos, w_neg, nan_on_empty
        self.a_s = [0.0] * len(anchors)
        self.a_t = [0.0] * len(anchors)

    def rank(self, v, anchors):
        total = 0.0
        for a in anchors:
            z = -(v - a) / self.t
            z = torch.clamp(z, -50, 50) if torch.is_tensor(z) else min(max(z, -50.0), 50.0)
            total = total + 1.0 / (1.0 + (torch.exp(z) if torch.is_tensor(z) else math.exp(z)))
        return total

    def __call__(self, S: torch.Tensor, T: torch.Tensor, labels: list):
        n = len(labels)
        if n < 2:
            return S.sum() * 0.0
        s = [S[i] / torch.clamp(torch.sqrt((S[i] * S[i]).sum()), min=1e-12) for i in range(n)]
        t = [[float(v) for v in T[i]] for i in range(n)]
        t = [[v / max(math.sqrt(sum(w * w for w in r)), 1e-12) for v in r] for r in t]
        pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
        x = {p: (s[p[0]] * s[p[1]]).sum() for p in pairs}
        y = {p: sum(a * b for a, b in zip(t[p[0]], t[p[1]])) for p in pairs}
        pos = [p for p in pairs if labels[p[0]] == labels[p[1]]]
        neg = [p for p in pairs if labels[p[0]] != labels[p[1]]]
        if neg:
            xs = sorted((float(x[p].detach()) for p in neg), reverse=True)
            ys = sorted((y[p] for p in neg), reverse=True)
            for k, a in enumerate(self.anchors):
                q = len(neg) // a
                self.a_s[k] = self.mu * xs[q] + (1 - self.mu) * self.a_s[k]
                self.a_t[k] = self.mu * ys[q] + (1 - self.mu) * self.a_t[k]

        def mse(sel):
            return sum((self.rank(x[p], self.a_s) - self.rank(y[p], self.a_t)) ** 2 for p in sel) / len(sel)

        l_pos = mse(pos) if pos else (float("nan") if self.nan_on_empty else 0.0)
        hard = sorted(neg, key=lambda p: -float(x[p].detach()))[:self.topk]
        l_neg = mse(hard) if hard else 0.0
        return self.w_pos * l_pos + self.w_neg * l_neg + S.sum() * 0.0


def batch(n: int, ds: int, dt: int, seed: int, dtype=torch.float64, per_class: int = 2):
    """Clustered raw embeddings (student related to teacher), labels 0..n/per_class shuffled."""
    g = torch.Generator().manual_seed(seed)
    labels = (torch.arange(n) // per_class)[torch.randperm(n, generator=g)]
    centres = torch.randn(int(labels.max()) + 1, dt, generator=g, dtype=torch.float64)
    t = centres[labels] + 0.8 * torch.randn(n, dt, generator=g, dtype=torch.float64)
    s = 1.5 * (t @ torch.randn(dt, ds, generator=g, dtype=torch.float64) / dt ** 0.5
               + 0.5 * torch.randn(n, ds, generator=g, dtype=torch.float64))
    return s.to(dtype), (2 * t).to(dtype), labels


def run_both(params: dict, batches, dtype) -> None:
    head, ref = create_head("ekd", **params), LoopEKD(**params)
    for s, t, y in batches:
        assert s.dtype == dtype
        assert_matches_reference(head, lambda s2, t2: ref(s2, t2, y.tolist()), s, t, TOL[dtype], labels=y,
                                 nan_value_ok=True)
        torch.testing.assert_close(head.s_anchor, torch.tensor(ref.a_s, dtype=dtype), **TOL[dtype])
        torch.testing.assert_close(head.t_anchor, torch.tensor(ref.a_t, dtype=dtype), **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("params,n,per_class", [
    ({}, 8, 2),                                                    # topk above n_neg, q_k = 0 for most anchors
    ({"topk": 7}, 12, 3),                                          # topk below n_neg
    ({"topk": 20, "t": 0.05, "anchors": (2, 3, 9), "momentum": 0.5}, 10, 2),  # anchors move fast
    ({"w_pos": 1.0, "w_neg": 0.5, "t": 0.1}, 9, 3),
])
def test_matches_loop_over_consecutive_calls(params, n, per_class, dtype):
    batches = [batch(n, 6, 9, seed, dtype, per_class) for seed in range(3)]
    run_both(params, batches, dtype)


def test_duplicated_image_ties_in_both_models():
    s, t, y = batch(10, 6, 9, 5)
    s[7], t[7], y[7] = s[2], t[2], y[2]
    # all negatives used: a tie straddling the topk cut would send the (equal) gradient to row 2 or to row 7
    run_both({}, [(s, t, y)] * 2, torch.float64)


def test_anchors_are_buffers_updated_before_use_even_in_eval_and_no_grad():
    head = create_head("ekd", anchors=(2, 4), momentum=0.5)
    assert set(head.state_dict()) == {"s_anchor", "t_anchor"}
    s, t, y = batch(8, 5, 7, 0)
    ref = LoopEKD(anchors=(2, 4), momentum=0.5)
    head.eval()
    with torch.no_grad():
        head(student=s, teacher=t, labels=y)
    ref(s, t, y.tolist())
    assert torch.allclose(head.s_anchor, torch.tensor(ref.a_s, dtype=torch.float64), rtol=1e-12)
    assert head.s_anchor.dtype == torch.float64 and head.s_anchor.abs().sum() > 0


def test_no_positive_pair_gives_the_negative_term_or_nan():
    s, t, y = batch(7, 5, 8, 1, per_class=1)
    assert len(set(y.tolist())) == 7
    run_both({}, [(s, t, y)] * 2, torch.float64)
    s1 = s.clone().requires_grad_(True)
    out = create_head("ekd", nan_on_empty=True)(student=s1, teacher=t, labels=y)
    out.backward()
    assert math.isnan(out.item()) and torch.isfinite(s1.grad).all() and s1.grad.abs().sum() > 0


def test_all_labels_equal():
    s, t, _ = batch(6, 5, 8, 2)
    y = torch.zeros(6, dtype=torch.int64)
    with debug_checks(), pytest.raises(ValueError, match=r"N=6.*\(1 distinct label"):
        create_head("ekd")(student=s, teacher=t, labels=y)
    head = create_head("ekd")
    head(student=s, teacher=t, labels=torch.arange(6) // 2)
    before = head.s_anchor.clone(), head.t_anchor.clone()
    s1 = s.clone().requires_grad_(True)
    with debug_checks(False):
        out = head(student=s1, teacher=t, labels=y)  # defined without a sync: anchors kept, L_neg = 0
    out.backward()
    assert torch.equal(head.s_anchor, before[0]) and torch.equal(head.t_anchor, before[1])
    ref = LoopEKD()
    ref.a_s, ref.a_t = before[0].tolist(), before[1].tolist()
    s2 = s.clone().requires_grad_(True)
    r = ref(s2, t, y.tolist())
    r.backward()
    torch.testing.assert_close(out.detach(), r.detach(), **TOL[torch.float64])
    torch.testing.assert_close(s1.grad, s2.grad, **TOL[torch.float64])


def test_single_row_is_an_attached_zero_and_keeps_the_anchors():
    head = create_head("ekd")
    s = torch.randn(1, 4, dtype=torch.float64, requires_grad=True)
    out = head(student=s, teacher=torch.randn(1, 6, dtype=torch.float64), labels=torch.zeros(1, dtype=torch.int64))
    out.backward()
    assert out.item() == 0.0 and out.requires_grad and torch.equal(s.grad, torch.zeros_like(s))
    assert not head.s_anchor.any() and not head.t_anchor.any()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_state_dict_round_trip(dtype):
    batches = [batch(9, 5, 7, seed, dtype, 3) for seed in range(4)]
    head = create_head("ekd", topk=5, momentum=0.3)
    for s, t, y in batches[:3]:
        head(student=s, teacher=t, labels=y)
    state = head.state_dict()
    fresh = create_head("ekd", topk=5, momentum=0.3)
    fresh.load_state_dict(state)
    assert fresh.s_anchor.dtype == dtype and torch.equal(fresh.s_anchor, head.s_anchor)
    s, t, y = batches[3]
    assert torch.equal(head(student=s, teacher=t, labels=y), fresh(student=s, teacher=t, labels=y))
    assert torch.equal(head.t_anchor, fresh.t_anchor)


@pytest.mark.parametrize("params,name", [
    (dict(topk=0), "topk"), (dict(t=0.0), "t"), (dict(anchors=(1, 10)), "anchors"), (dict(anchors=()), "anchors"),
    (dict(anchors=(10.0,)), "anchors"), (dict(anchors=(True, 10)), "anchors"), (dict(momentum=0.0), "momentum"),
    (dict(momentum=1.5), "momentum"), (dict(w_pos=-1.0), "w_pos"), (dict(w_neg=float("inf")), "w_neg"),
    (dict(nan_on_empty=1), "nan_on_empty"),
])
def test_parameter_errors_name_the_parameter(params, name):
    with pytest.raises((ValueError, TypeError), match=name):
        create_head("ekd", **params)


def test_labels_are_required():
    s, t, _ = batch(6, 5, 8, 0)
    with pytest.raises(ValueError, match="labels"):
        create_head("ekd")(student=s, teacher=t)


# ---- no host synchronisation in forward / backward ----
SYNC_METHODS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero", "cpu", "numpy")


@contextlib.contextmanager
def count_host_syncs() -> Iterator[list]:
    """Records every call of a Tensor method that reads values to the host, boolean-mask indexing, torch.unique
    and torch.nonzero while the block runs."""
    calls: list = []
    saved = {}

    def wrap(owner, name):
        orig = getattr(owner, name)
        saved[(owner, name)] = orig

        def f(*a, **k):
            calls.append(name)
            return orig(*a, **k)
        setattr(owner, name, f)

    for m in SYNC_METHODS:
        wrap(torch.Tensor, m)
    wrap(torch, "unique")
    wrap(torch, "nonzero")
    getitem = torch.Tensor.__getitem__
    saved[(torch.Tensor, "__getitem__")] = getitem

    def gi(self, idx):
        items = idx if isinstance(idx, tuple) else (idx,)
        if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items):
            calls.append("bool-mask indexing")
        return getitem(self, idx)
    torch.Tensor.__getitem__ = gi
    try:
        yield calls
    finally:
        for (owner, name), orig in saved.items():
            setattr(owner, name, orig)


def assert_no_host_sync(head, **inputs) -> None:
    s = inputs["student"].clone().requires_grad_(True)
    inputs = dict(inputs, student=s)
    with debug_checks(False), count_host_syncs() as calls:
        head(**inputs).backward()
    assert calls == [], f"host syncs in forward/backward: {calls}"


@pytest.mark.parametrize("per_class", [1, 2, 13])
def test_no_host_sync(per_class):
    s, t, y = batch(13, 5, 8, 0, per_class=per_class)
    assert_no_host_sync(create_head("ekd", topk=4), student=s, teacher=t, labels=y)
    assert_no_host_sync(create_head("ekd", nan_on_empty=True), student=s, teacher=t, labels=y)


def test_the_sync_counter_sees_syncs():
    x = torch.ones(3)
    with count_host_syncs() as calls:
        x.sum().item()
        x[x > 0]
        bool(x.any())
    assert calls == ["item", "bool-mask indexing", "__bool__"]
