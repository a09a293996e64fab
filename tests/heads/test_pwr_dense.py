"""PWR (``pwr_loss_dense`` and the ``pwr`` head, whatever path it takes) against a slow loop over the ordered
pairs of pairs, written from the paper's definition (eq. 3-11, the ``pwr`` module docstring): values and gradients, float64 and float32, with ties."""
from __future__ import annotations

import math

import pytest
import torch

from insightface_pwr.heads.pwr import PairwiseRankingLoss, pwr_loss_dense
from insightface_pwr.heads.registry import create_head

from loop_reference import assert_attached_zero, random_batch

TOL = {torch.float64: dict(rtol=1e-8, atol=1e-11), torch.float32: dict(rtol=2e-4, atol=2e-6)}
INVERSIONS = [("diff", {}), ("power", dict(p=2.0)), ("power", dict(p=0.5)), ("exp", {}), ("exp", dict(beta=2.0))]
MARGINS = [0.0, 0.1, "teacher_std", "teacher_diff"]


# ---- the loop reference ----
def ref_from_relations(s: list, t: list, inversion: str, margin, p: float = 1.0, beta: float = 1.0):
    """Mean of l over the ordered pairs of pairs (a, b) with t_a > t_b; s are 0-d tensors, t floats."""
    m_count = len(t)
    if margin == "teacher_std" and m_count:
        mean = sum(t) / m_count
        margin = math.sqrt(sum((v - mean) ** 2 for v in t) / m_count)
    total, count = None, 0
    for a in range(m_count):
        for b in range(m_count):
            if not t[a] > t[b]:
                continue
            count += 1
            if inversion == "ranknet":
                term = torch.log(1.0 + torch.exp(-beta * (s[a] - s[b])))
            else:
                m = t[a] - t[b] if margin == "teacher_diff" else margin
                x = m - (s[a] - s[b])
                if float(x.detach()) <= 0.0:
                    continue
                term = {"diff": lambda: x, "power": lambda: x ** p, "exp": lambda: torch.exp(beta * x) - 1.0}[inversion]()
            total = term if total is None else total + term
    return count, total


def ref_relations(x: torch.Tensor, relation: str) -> list:
    """The pair relations i < j (row-major) of the rows divided by their norms, one scalar at a time. The norm is
    MXNet's L2Normalization, sqrt(sum x^2 + 1e-10), as in the PWR authors' code: two identical rows then have a
    cosine distance of about 1e-10 / |x|^2 (not a rounding-dependent +-1e-16), so ties stay ties on every CPU."""
    n, d = x.shape
    r = []
    for i in range(n):
        norm = torch.sqrt(sum(x[i, k] * x[i, k] for k in range(d)) + 1e-10)
        r.append([x[i, k] / norm for k in range(d)])
    out = []
    for i in range(n):
        for j in range(i + 1, n):
            dot = sum(r[i][k] * r[j][k] for k in range(d))
            if relation == "cosine":
                out.append(1.0 - dot)
            else:
                sq = sum(v * v for v in r[i]) + sum(v * v for v in r[j]) - 2.0 * dot
                out.append(torch.sqrt(torch.clamp(sq, min=1e-12)))
    return out


def check(out: torch.Tensor, grad: torch.Tensor, ref_count: int, ref_total, leaf: torch.Tensor) -> None:
    dtype = leaf.dtype
    assert out.dtype == dtype and out.dim() == 0
    if ref_total is None:  # no ordered pair, or every term zero
        ref_value, ref_grad = torch.zeros((), dtype=dtype), torch.zeros_like(leaf)
    else:
        ref = ref_total / ref_count
        leaf.grad = None
        ref.backward()
        ref_value, ref_grad = ref.detach(), leaf.grad
    torch.testing.assert_close(out.detach(), ref_value.to(dtype), **TOL[dtype])
    torch.testing.assert_close(grad, ref_grad, **TOL[dtype])


def relation_vectors(m: int, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Student and teacher relation vectors; the teacher has a group of three and a pair of tied values."""
    g = torch.Generator().manual_seed(seed)
    s = torch.rand(m, generator=g, dtype=torch.float64) * 2.0
    t = torch.rand(m, generator=g, dtype=torch.float64) * 2.0
    t[3] = t[0]
    t[5] = t[0]
    t[4] = t[1]
    return s.to(dtype), t.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("margin", MARGINS)
@pytest.mark.parametrize("inversion, kw", INVERSIONS)
def test_dense_matches_loop(dtype, margin, inversion, kw):
    s, t = relation_vectors(10, dtype, seed=len(str(margin)) + len(inversion))
    x = s.clone().requires_grad_(True)
    out = pwr_loss_dense(x, t, inversion=inversion, margin=margin, **kw)
    out.backward()
    leaf = s.clone().requires_grad_(True)
    count, total = ref_from_relations([leaf[k] for k in range(len(s))], [float(v) for v in t], inversion, margin, **kw)
    assert count == (100 - (9 + 4 + 5)) // 2  # 10 values: one group of 3 and one of 2 tied
    check(out, x.grad, count, total, leaf)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("beta", [1.0, 3.0])
def test_dense_ranknet_matches_loop(dtype, beta):
    s, t = relation_vectors(10, dtype, seed=7)
    x = s.clone().requires_grad_(True)
    out = pwr_loss_dense(x, t, inversion="ranknet", margin=0.3, beta=beta)  # ranknet ignores the margin
    out.backward()
    leaf = s.clone().requires_grad_(True)
    count, total = ref_from_relations([leaf[k] for k in range(len(s))], [float(v) for v in t], "ranknet", 0.3, beta=beta)
    check(out, x.grad, count, total, leaf)


def embeddings(n: int, ds: int, dt: int, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher row 2 duplicates row 0: the relations of pairs (0, k) and (2, k) tie."""
    return random_batch(n, ds, dt, dtype, seed)


HEAD_CASES = [dict(inversion="exp", margin="teacher_diff"), dict(inversion="diff", margin=0.1),
              dict(inversion="diff", margin="teacher_std"), dict(inversion="power", p=2.0, margin=0.0),
              dict(inversion="power", p=0.5, margin="teacher_diff"), dict(inversion="exp", beta=2.0, margin="teacher_std"),
              dict(inversion="ranknet", beta=2.0)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("relation", ["cosine", "euclidean"])
@pytest.mark.parametrize("params", HEAD_CASES, ids=lambda p: "-".join(str(v) for v in p.values()))
def test_head_matches_loop(dtype, relation, params):
    head = create_head("pwr", relation=relation, **params)
    for n, seed, dt in [(5, 0, 3), (4, 1, 3), (5, 2, 4)]:  # (equal widths: the head relates both in one batch)
        s, t = embeddings(n, 4, dt, dtype, seed)
        x = s.clone().requires_grad_(True)
        out = head(student=x, teacher=t)
        out.backward()
        leaf = s.clone().requires_grad_(True)
        t_rel = [float(v) for v in ref_relations(t, relation)]
        kw = {k: v for k, v in params.items() if k in ("p", "beta")}
        count, total = ref_from_relations(ref_relations(leaf, relation), t_rel, params["inversion"],
                                          params.get("margin", 0.0), **kw)
        check(out, x.grad, count, total, leaf)


@pytest.mark.parametrize("n", [1, 2])
def test_no_pair_of_pairs_gives_attached_zero(n):
    s, t = embeddings(n, 4, 3, torch.float64, 3)
    assert_attached_zero(PairwiseRankingLoss(), s, t)


def test_dense_all_teacher_ties_gives_attached_zero():
    s = torch.rand(6, dtype=torch.float64, requires_grad=True)
    out = pwr_loss_dense(s, torch.full((6,), 0.5, dtype=torch.float64), inversion="diff", margin=0.1)
    assert out.item() == 0.0 and out.requires_grad
    out.backward()
    assert torch.equal(s.grad, torch.zeros_like(s))


@pytest.mark.parametrize("bad, match", [(dict(relation="l2"), "relation"), (dict(inversion="hinge"), "inversion"),
                                        (dict(margin="std"), "margin"), (dict(p=0.0), "p"), (dict(beta=-1.0), "beta")])
def test_bad_parameters(bad, match):
    with pytest.raises(ValueError, match=match):
        PairwiseRankingLoss(**bad)


@pytest.mark.parametrize("relation", ["cosine", "euclidean"])
def test_relations_match_loop(relation):
    """The head's differentiable relations (``relations.pairwise_relations`` of the normalised rows, what the dense
    method ranks) against the scalar loop: values and gradients of a weighted sum, ties (equal rows) included."""
    s, t = embeddings(5, 4, 3, torch.float64, 3)
    head = create_head("pwr", relation=relation, method="dense")
    x, leaf = s.clone().requires_grad_(True), s.clone().requires_grad_(True)
    rs, rt = head.relations(x, t)
    ref_s, ref_t = torch.stack(ref_relations(leaf, relation)), torch.stack(ref_relations(t, relation))
    torch.testing.assert_close(rs.detach(), ref_s.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(rt, ref_t, rtol=1e-10, atol=1e-12)
    w = torch.linspace(-1.0, 2.0, rs.numel(), dtype=torch.float64)
    (rs * w).sum().backward()
    (ref_s * w).sum().backward()
    torch.testing.assert_close(x.grad, leaf.grad, rtol=1e-9, atol=1e-12)
