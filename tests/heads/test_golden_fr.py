"""ekd and adadistill against the golden fixture written by the PUBLISHED reference code, call after call.

``tests/golden/fr_golden.json`` (see ``tests/golden/README.md`` and ``make_golden_fr.py``) holds sequences of
calls on ONE reference module: Tencent/TFace's ``EKD`` (its anchors move from call to call) and fdbtrs/AdaDistill's
``AdaptiveAArcFace`` / ``AdaptiveACosFace`` (its class centres move). Per call: the inputs, the loss value, the
gradient with respect to the student input and the module's state after the call. Here one head per sequence
(``create_head(head, **params)``, float64, AdaDistill's initial centres loaded from the fixture) is called on the
same inputs in the same order and compared after every call.

Tolerance: relative 1e-9 (``|ours - ref| <= RTOL * |ref| + ATOL`` for values and state entries; gradients as a
whole against max |reference gradient|). Both sides run the same float64 operations up to summation order (our
means are sums divided by a count tensor; a gather instead of boolean masks), measured at a few 1e-16.
"""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any, Dict

import pytest
import torch

from insightface_pwr.heads.registry import create_head

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "golden"
GOLDEN = GOLDEN_DIR / "fr_golden.json"
RTOL, ATOL = 1e-9, 1e-15
TFACE_COMMIT = "171ec1434aca0972e111663ac646c9c1e3e44b5b"
ADADISTILL_COMMIT = "0842186b6e2e07e13aa0e605919dca63a0d3f0fc"

DOC = json.loads(GOLDEN.read_text())
SEQS = DOC["sequences"]


def _head(seq: Dict[str, Any], **override: Any):
    params = dict(seq["params"], **override)
    if "anchors" in params:
        params["anchors"] = tuple(params["anchors"])
    head = create_head(seq["head"], **params).double()
    if "init_state" in seq:
        head.load_state_dict({k: torch.tensor(v, dtype=torch.float64) for k, v in seq["init_state"].items()})
    return head


def _call(head, call: Dict[str, Any]) -> tuple[float, torch.Tensor]:
    s = torch.tensor(call["student"], dtype=torch.float64, requires_grad=True)
    t = torch.tensor(call["teacher"], dtype=torch.float64)
    loss = head(student=s, teacher=t, labels=torch.tensor(call["labels"], dtype=torch.int64))
    assert loss.dim() == 0 and loss.dtype == torch.float64
    loss.backward()
    return float(loss.detach()), s.grad


def _close(ours: float, ref: Any) -> bool:
    if ref == "nan":
        return math.isnan(ours)
    return abs(ours - ref) <= RTOL * abs(ref) + ATOL


def _deviation(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours - ref).abs().max()) / max(float(ref.abs().max()), ATOL)


@pytest.mark.parametrize("seq", SEQS, ids=[s["id"] for s in SEQS])
def test_sequence_matches_reference(seq: Dict[str, Any]) -> None:
    head = _head(seq)
    for k, call in enumerate(seq["calls"]):
        where = f"{seq['id']} call {k} ({seq['reference']['url']} {seq['reference']['file']})"
        value, grad = _call(head, call)
        assert _close(value, call["value"]), f"{where}: value {value!r} vs reference {call['value']!r}"
        ref_g = torch.tensor(call["grad_student"], dtype=torch.float64)
        assert grad.shape == ref_g.shape and torch.isfinite(grad).all(), where
        assert _deviation(grad, ref_g) <= RTOL, f"{where}: gradient deviation {_deviation(grad, ref_g):.3g}"
        for name, ref_state in call["state"].items():
            ours = getattr(head, name)
            ref_t = torch.tensor(ref_state, dtype=torch.float64)
            assert ours.dtype == torch.float64 and ours.shape == ref_t.shape, (where, name)
            err = float((ours - ref_t).abs().max())
            assert err <= RTOL * float(ref_t.abs().max()) + ATOL, f"{where}: state {name} deviates by {err:.3g}"


def test_no_positive_default_is_the_reference_gradient_with_a_finite_value() -> None:
    """The reference's NaN (mean of no positive pair) is reproduced only with nan_on_empty=True; by default the
    empty term is an attached zero: finite value, the same gradient and anchors."""
    seq = next(s for s in SEQS if s["id"] == "ekd_n8_no_positive")
    head = _head(seq, nan_on_empty=False)
    for call in seq["calls"]:
        assert call["value"] == "nan"
        value, grad = _call(head, call)
        assert math.isfinite(value) and value > 0
        assert _deviation(grad, torch.tensor(call["grad_student"], dtype=torch.float64)) <= RTOL
        assert torch.allclose(head.s_anchor, torch.tensor(call["state"]["s_anchor"], dtype=torch.float64),
                              rtol=RTOL, atol=ATOL)


def test_fixture_metadata_and_coverage() -> None:
    assert DOC["format"] == 1 and DOC["dtype"] == "float64"
    assert GOLDEN.stat().st_size < 1_000_000, "keep the golden fixture under 1 MB"
    assert DOC["references"]["tface"]["commit"] == TFACE_COMMIT
    assert DOC["references"]["adadistill"]["commit"] == ADADISTILL_COMMIT
    ekd = [s for s in SEQS if s["head"] == "ekd"]
    ada = [s for s in SEQS if s["head"] == "adadistill"]
    assert all(len(s["calls"]) >= 2 for s in SEQS)
    ns = {len(s["calls"][0]["labels"]) for s in ekd}
    assert min(ns) == 8 and max(ns) == 128
    assert all(len(s["calls"][0]["student"][0]) != len(s["calls"][0]["teacher"][0]) for s in ekd)  # D_s != D_t
    topk_vs_neg = set()
    for s in ekd:
        for c in s["calls"]:
            lab = c["labels"]
            n_neg = sum(lab[i] != lab[j] for i in range(len(lab)) for j in range(i + 1, len(lab)))
            topk_vs_neg.add(s["params"].get("topk", 2000) >= n_neg)
    assert topk_vs_neg == {True, False}
    assert {s["params"]["margin_type"] for s in ada} == {"arcface", "cosface"}
    for s in SEQS:  # the anchors / centres really move from call to call
        first, last = s["calls"][0]["state"], s["calls"][-1]["state"]
        assert any(first[k] != last[k] for k in first), s["id"]


def test_fixture_matches_the_generating_script() -> None:
    """The committed inputs and parameters are exactly what ``make_golden_fr.py`` builds (bit-exact)."""
    spec = importlib.util.spec_from_file_location("make_golden_fr", GOLDEN_DIR / "make_golden_fr.py")
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    built = mod.build_sequences()
    assert [s["id"] for s in built] == [s["id"] for s in SEQS]
    for b, s in zip(built, SEQS):
        assert (b["head"], b["params"], b.get("init_state")) == (s["head"], s["params"], s.get("init_state"))
        for cb, cs in zip(b["calls"], s["calls"], strict=True):
            assert (cb["student"], cb["teacher"], cb["labels"]) == (cs["student"], cs["teacher"], cs["labels"])
