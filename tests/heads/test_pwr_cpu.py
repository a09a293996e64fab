"""The compiled CPU pass and sort of the exact PWR path (``insightface_pwr/heads/pwr_cpu.py``, ``_pwr_cpu.c``):
losses and gradients against the dense autograd reference (float64, rtol 1e-6) over every inversion and margin the
fast path covers, with ties, at sizes around the pass's block edges (8-item dense groups, two-level quarters,
groups cut short by n); against the vectorised path (a GPU's) at sizes the dense reference cannot hold; the sort
against ``torch.sort``; bad item codes refused without a write out of bounds; the switch."""
from __future__ import annotations

import pytest
import torch

from insightface_pwr.heads import pwr_cpu
from insightface_pwr.heads.pwr_fast import pwr_sum_and_grad_fast
from insightface_pwr.heads.pwr_math import pwr_loss_dense, pwr_sum_and_grad_tiled
from insightface_pwr.heads.registry import create_head
from test_pwr_fast import FAST, MARGINS, TIES, assert_close_rel, check_against_dense, relations, require_compiled


@pytest.fixture(autouse=True)
def compiled(monkeypatch):
    require_compiled()
    monkeypatch.setenv(pwr_cpu.ENV, "1")


def _sum_grad_count(s: torch.Tensor, t: torch.Tensor, inversion: str, margin, p: float, beta: float, on: bool,
                    monkeypatch) -> tuple:
    monkeypatch.setenv(pwr_cpu.ENV, "1" if on else "0")
    calls = pwr_cpu.call_count()
    out = pwr_sum_and_grad_fast(s, t, inversion, margin, p, beta)
    assert (pwr_cpu.call_count() > calls) == on  # the path asked for ran
    return out


# 1, 2: no level; 8, 9: one dense group / one level above it; 16, 17, 32, 33: the first quarters (two levels in one
# pass), 64, 65, 97: more, the last ones short or empty
@pytest.mark.parametrize("m", [1, 2, 3, 8, 9, 16, 17, 32, 33, 64, 65, 97, 200])
@pytest.mark.parametrize("ties", TIES)
def test_compiled_equals_dense_at_block_edges(m: int, ties: str) -> None:
    s, t = relations(m, ties, seed=m + len(ties))
    if m > 1 and torch.unique(t).numel() < 2:
        t[0] = t.max() + 0.125
    for inversion, p, beta in FAST + [("power", 5.0, 1.0)]:
        for margin in MARGINS:
            check_against_dense(s, t, inversion, margin, p, beta, "fast")


@pytest.mark.parametrize("m", [2, 3, 8, 9, 16, 17, 33, 65, 97, 300])
@pytest.mark.parametrize("ties", TIES)
@pytest.mark.parametrize("offset", [0.0, -1.0])
def test_one_call_sum_equals_dense_at_block_edges(monkeypatch, m: int, ties: str, offset: float) -> None:
    """float32 relations with one item per relation (teacher_diff, margin 0) take ``pwr_cpu.single_sum``: the
    dyadic test values are exact in float32, ties included; -0.0 and +0.0 mixed in t and s; with ``offset`` -1
    half the values are negative (their order keys are made differently)."""
    _two_call_sums_against_dense(m, ties, offset, ("teacher_diff", 0.0))


# a query and a key item per relation: 3.0 puts every key above every query (every t-ordered pair counts)
@pytest.mark.parametrize("m", [2, 3, 4, 5, 8, 9, 16, 17, 33, 65, 97, 300])
@pytest.mark.parametrize("ties", TIES)
@pytest.mark.parametrize("offset", [0.0, -1.0])
def test_pair_sum_equals_dense_at_block_edges(m: int, ties: str, offset: float) -> None:
    """float32 relations with a query and a key item per relation (a constant margin other than 0, teacher_std)
    take ``pwr_cpu.pair_sum``, as above."""
    _two_call_sums_against_dense(m, ties, offset, (0.125, -0.25, 3.0, "teacher_std"))


def _two_call_sums_against_dense(m: int, ties: str, offset: float, margins: tuple) -> None:
    s, t = relations(m, ties, seed=3 * m + len(ties))
    s, t = s.float() + offset, t.float() + offset
    if ties != "none":
        s[s == 0], t[t == 0] = -0.0, -0.0
        s[::5], t[::7] = torch.where(s[::5] == 0, 0.0, s[::5]), torch.where(t[::7] == 0, 0.0, t[::7])
    if torch.unique(t).numel() < 2:
        t[0] = t.max() + 0.125
    calls = pwr_cpu.call_count()
    for inversion, p, beta in FAST + [("power", 5.0, 1.0)]:
        for margin in margins:
            total, grad, count = pwr_sum_and_grad_fast(s, t, inversion, margin, p, beta)
            s_ref = s.double().requires_grad_(True)
            ref = pwr_loss_dense(s_ref, t.double(), inversion, margin, p, beta)
            (g_ref,) = torch.autograd.grad(ref, s_ref)
            n_ref = int((t[:, None] > t[None, :]).sum())
            assert int(count) == n_ref
            assert_close_rel(total / n_ref, ref.detach(), f"loss ({inversion} {p} {margin})")
            assert_close_rel(grad / n_ref, g_ref, f"grad ({inversion} {p} {margin})")
    assert pwr_cpu.call_count() - calls == 2 * len(margins) * (len(FAST) + 1)  # two calls per sum


@pytest.mark.parametrize("m", [40_000, (1 << 16) + 3])
@pytest.mark.parametrize("inversion,p,margin", [("exp", 1.0, "teacher_diff"), ("power", 3.0, 0.0),
                                                ("diff", 1.0, 0.1), ("power", 2.0, "teacher_std")])
@pytest.mark.parametrize("ties", ["both", "none"])
def test_one_call_sum_equals_vectorised_at_large_m(monkeypatch, m: int, inversion: str, p: float, margin,
                                                   ties: str) -> None:
    """(ties "both": runs of thousands of equal teacher values, ordered by the (t, s) sort; "none": float32 rounding
    leaves a few dozen pairs of equal values, ordered by insertion after the teacher-only sort)"""
    s, t = relations(m, ties, seed=m % 89)
    s, t = s.float(), t.float()
    got = _sum_grad_count(s, t, inversion, margin, p, 1.0, True, monkeypatch)
    ref = _sum_grad_count(s, t, inversion, margin, p, 1.0, False, monkeypatch)
    assert int(got[2]) == int(ref[2])
    assert_close_rel(got[0], ref[0], "sum")
    assert_close_rel(got[1], ref[1], "grad")


@pytest.mark.parametrize("inversion,p,beta", FAST)
@pytest.mark.parametrize("margin", ["teacher_diff", 0.125, "teacher_std"])
def test_compiled_float32_relations_with_ties(inversion: str, p: float, beta: float, margin) -> None:
    """float32 relations take the (t, s)-key order (one sort); exact against the tiled path in float64."""
    s, t = relations(300, "both", seed=5)
    s32, t32 = s.float(), t.float()
    total, grad, count = pwr_sum_and_grad_fast(s32, t32, inversion, margin, p, beta)
    ref_total, ref_grad = pwr_sum_and_grad_tiled(s32.double(), t32.double(), inversion, margin, p, beta)
    assert int(count) == int(((t32[:, None] > t32[None, :])).sum())
    assert_close_rel(total, ref_total, f"sum ({inversion} {margin})")
    assert_close_rel(grad, ref_grad, f"grad ({inversion} {margin})")


@pytest.mark.parametrize("m,ties", [(40_000, "both"), (70_001, "none"), ((1 << 16) + 3, "t")])
@pytest.mark.parametrize("inversion,p,margin", [("exp", 1.0, "teacher_diff"), ("diff", 1.0, 0.1),
                                                ("power", 2.0, "teacher_std")])
def test_compiled_equals_vectorised_at_large_m(monkeypatch, m: int, ties: str, inversion: str, p: float,
                                               margin) -> None:
    """Sizes with many two-level passes (and the vectorised tree in chunks): the two paths share only the setup."""
    s, t = relations(m, ties, seed=m % 97)
    got = _sum_grad_count(s, t, inversion, margin, p, 1.0, True, monkeypatch)
    ref = _sum_grad_count(s, t, inversion, margin, p, 1.0, False, monkeypatch)
    assert int(got[2]) == int(ref[2])
    assert_close_rel(got[0], ref[0], "sum")
    assert_close_rel(got[1], ref[1], "grad")


def test_compiled_equals_tiled_at_the_papers_batch() -> None:
    """N = 92 (M = 4,186), PWR-Exp (teacher-diff) on float32 cosine relations of random embeddings, against the
    O(M^2) tiled path (the dense reference would need ~1 GB)."""
    g = torch.Generator().manual_seed(92)
    x = torch.nn.functional.normalize(torch.randn(2, 92, 64, generator=g), dim=-1)
    iu = torch.triu_indices(92, 92, 1)
    s, t = (1.0 - x @ x.transpose(1, 2))[:, iu[0], iu[1]]
    total, grad, count = pwr_sum_and_grad_fast(s, t, "exp", "teacher_diff", 1.0, 1.0)
    ref_total, ref_grad = pwr_sum_and_grad_tiled(s.double(), t.double(), "exp", "teacher_diff", 1.0, 1.0, 1024)
    assert int(count) == int((t[:, None] > t[None, :]).sum())
    assert_close_rel(total, ref_total, "sum")
    assert_close_rel(grad, ref_grad, "grad")


@pytest.mark.parametrize("n", [0, 1, 2, 5, 2047, 2048, 5000])
@pytest.mark.parametrize("kind", ["random", "few values", "constant", "extremes"])
def test_sort_equals_torch_stable_sort(n: int, kind: str) -> None:
    g = torch.Generator().manual_seed(n)
    if kind == "random":
        keys = torch.randint(-2**62, 2**62, (n,), generator=g)
    elif kind == "few values":
        keys = torch.randint(-2, 3, (n,), generator=g) * (1 << 40)
    elif kind == "constant":
        keys = torch.full((n,), -7, dtype=torch.int64)
    else:
        pool = torch.tensor([-2**63, -1, 0, 1, 2**63 - 1])
        keys = pool[torch.randint(0, 5, (n,), generator=g)]
    got_keys, got_perm = pwr_cpu.sort(keys)
    ref_keys, ref_perm = torch.sort(keys, stable=True)
    assert torch.equal(got_keys, ref_keys) and torch.equal(got_perm, ref_perm)


@pytest.mark.parametrize("codes", [[0, 0, 2, 3, 4], [0, 1, 2, 3, 7], [5, 1, 2, 3, 4], [-1, 1, 2, 3, 4]],
                         ids=["duplicate", "beyond-n", "shifted", "negative"])
@pytest.mark.parametrize("n", [5, 40])
def test_bad_item_codes_are_refused(codes: list, n: int) -> None:
    """Codes that are not the positions 0 .. n - 1 (an internal error) raise; nothing is written out of bounds
    (the buffers are the tensors' own: a stray write would corrupt the guard values around them)."""
    code = torch.tensor(codes + list(range(len(codes), n)), dtype=torch.int32)
    guard = torch.full((3 * n,), 12345.0, dtype=torch.float64)
    f = guard[n:2 * n]
    f.fill_(1.5)
    with pytest.raises(ValueError, match="not the positions"):
        pwr_cpu.run_tree_cpu(code, f, 0, 1.0, True)
    assert torch.equal(guard[:n], torch.full((n,), 12345.0, dtype=torch.float64))
    assert torch.equal(guard[2 * n:], torch.full((n,), 12345.0, dtype=torch.float64))


def test_wrong_argument_types_are_refused() -> None:
    """(never a pointer the C code cannot read: another device's tensor is refused before the call)"""
    with pytest.raises(ValueError, match="float32 CPU vectors"):
        pwr_cpu.single_sum(torch.rand(5), torch.rand(5, device="meta"), 1, 0, 1.0)
    with pytest.raises(ValueError, match="float32 CPU vectors"):
        pwr_cpu.single_sum(torch.rand(5, dtype=torch.float64), torch.rand(5), 1, 0, 1.0)
    with pytest.raises(ValueError, match="int32 codes and float64 features"):
        pwr_cpu.run_tree_cpu(torch.arange(4, dtype=torch.int32), torch.ones(4, dtype=torch.float64, device="meta"), 0,
                             1.0, True)
    with pytest.raises(ValueError, match="int32 codes and float64 features"):
        pwr_cpu.run_tree_cpu(torch.arange(4), torch.ones(4, dtype=torch.float64), 0, 1.0, True)
    with pytest.raises(ValueError, match="int32 codes and float64 features"):
        pwr_cpu.run_tree_cpu(torch.arange(4, dtype=torch.int32), torch.ones(3, dtype=torch.float64), 0, 1.0, True)


def test_switch_and_fallback(monkeypatch) -> None:
    """INSIGHTFACE_PWR_CPU_KERNEL=0 turns the compiled pass off; a missing library falls back to the vectorised
    path; both give the head's loss and gradient of the compiled pass."""
    g = torch.Generator().manual_seed(3)
    student, teacher = torch.randn(40, 16, generator=g), torch.randn(40, 16, generator=g)
    head = create_head("pwr", method="fast")

    def step() -> tuple:
        x = student.clone().requires_grad_(True)
        before = pwr_cpu.call_count()
        loss = head(student=x, teacher=teacher)
        loss.backward()
        return loss.detach(), x.grad, pwr_cpu.call_count() - before

    on = step()
    assert on[2] == 2  # float32 relations, teacher_diff: the sum in two calls
    for env, lib in (("0", True), ("off", True), ("1", False)):
        monkeypatch.setenv(pwr_cpu.ENV, env)
        if not lib:
            monkeypatch.setattr(pwr_cpu, "_LIB", None)
        assert not pwr_cpu.enabled(torch.device("cpu"))
        off = step()
        assert off[2] == 0
        torch.testing.assert_close(off[0], on[0], rtol=1e-6, atol=0)
        torch.testing.assert_close(off[1], on[1], rtol=1e-5, atol=1e-9)
    assert not pwr_cpu.enabled(torch.device("meta"))


def test_a_library_of_another_interface_version_is_not_used() -> None:
    """``_bind`` accepts the built library, refuses one whose ABI number differs or that lacks a function."""
    import ctypes

    lib = ctypes.CDLL(str(pwr_cpu.library_path()))
    assert pwr_cpu._bind(lib)

    class Other:
        def __init__(self, abi: int, missing: str = "") -> None:
            for name in pwr_cpu._SIGNATURES:
                if name != missing:
                    setattr(self, name, (lambda: abi) if name == "pwr_cpu_abi" else getattr(lib, name))

    assert not pwr_cpu._bind(Other(pwr_cpu.ABI + 1))
    assert not pwr_cpu._bind(Other(pwr_cpu.ABI, missing="pwr_single_finish"))


# the head's step in two compiled calls (``pwr_cpu.cosine_mean``: cosine, fast, teacher_diff or a zero margin)
HEAD_CASES = [dict(inversion="exp", margin="teacher_diff"), dict(inversion="exp", margin=0, beta=2.0),
              dict(inversion="diff", margin="teacher_diff"), dict(inversion="power", p=2.0, margin=0.0),
              dict(inversion="power", p=5.0, margin="teacher_diff"),
              # a query and a key item per relation
              dict(inversion="diff", margin=0.1), dict(inversion="exp", margin=-0.05, beta=1.5),
              dict(inversion="diff", margin="teacher_std"), dict(inversion="exp", margin="teacher_std"),
              dict(inversion="power", p=3.0, margin=0.25)]


def _embeddings(n: int, d_s: int, d_t: int, ties: bool, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    student, teacher = torch.randn(n, d_s, generator=g), torch.randn(n, d_t, generator=g)
    if ties and n > 3:  # equal rows: tied relations (and zero ones) in the teacher, the student, or both
        teacher[1], student[2], teacher[3], student[3] = teacher[0], student[0], teacher[0], student[0]
    return student, teacher


def _head_step(head, student: torch.Tensor, teacher: torch.Tensor) -> tuple:
    x = student.clone().requires_grad_(True)
    before = pwr_cpu.call_count()
    loss = head(student=x, teacher=teacher)
    (loss * 3.0).backward()  # a non-unit upstream gradient must scale through
    return loss.detach(), x.grad, pwr_cpu.call_count() - before


def _dense_head_reference(student: torch.Tensor, teacher: torch.Tensor, case: dict) -> tuple:
    """Autograd through the MXNet-style normalisation, the float32 Gram matrices (one batched product when the
    widths agree, as the head) and their cosine relations, then the dense O(M^2) loss in float64."""
    from insightface_pwr.heads.common import l2_normalize_mx

    n = student.shape[0]
    x = student.clone().requires_grad_(True)
    if student.shape[1] == teacher.shape[1]:
        xn = l2_normalize_mx(torch.cat((x, teacher))).view(2, n, -1)
        gs, gt = (xn @ xn.transpose(1, 2)).unbind(0)
    else:
        xs, xt = l2_normalize_mx(x), l2_normalize_mx(teacher)
        gs, gt = xs @ xs.t(), xt @ xt.t()
    iu = torch.triu_indices(n, n, 1)
    s, t = 1.0 - gs[iu[0], iu[1]], (1.0 - gt[iu[0], iu[1]]).detach()
    loss = pwr_loss_dense(s.double(), t.double(), case["inversion"], case["margin"], case.get("p", 1.0),
                          case.get("beta", 1.0))
    (loss * 3.0).backward()
    return loss.detach(), x.grad


@pytest.mark.parametrize("n", [3, 4, 5, 17, 40])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("widths", [(16, 16), (8, 24)])
def test_head_step_in_two_calls_equals_dense(n: int, ties: bool, widths: tuple) -> None:
    """Loss and gradient with respect to the embeddings against autograd through the dense reference (rtol 1e-6
    for the loss, 1e-5 of the largest entry for the float32 gradient), with tied and zero relations."""
    student, teacher = _embeddings(n, *widths, ties, seed=n + 100 * ties + widths[1])
    for case in HEAD_CASES:
        loss, grad, calls = _head_step(create_head("pwr", method="fast", **case), student, teacher)
        assert calls == 2, case  # the two-call step ran
        ref_loss, ref_grad = _dense_head_reference(student, teacher, case)
        assert loss.dtype == torch.float32 and grad.dtype == torch.float32
        torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-6, atol=0, msg=lambda m: f"{case}: {m}")
        assert float((grad - ref_grad).abs().max()) <= 1e-5 * float(ref_grad.abs().max().clamp(min=1e-30)), case


@pytest.mark.parametrize("n", [3, 8, 92, 150])
@pytest.mark.parametrize("ties", [False, True])
def test_head_step_in_two_calls_equals_the_composed_paths(monkeypatch, n: int, ties: bool) -> None:
    """Bit for bit the loss and gradient of the same head through the relation vectors and ``single_sum`` (the
    composed compiled path), and within rounding those of the vectorised path (a GPU's), at the paper's batch and
    around it; with grad off the loss alone."""
    student, teacher = _embeddings(n, 32, 32, ties, seed=7 * n + ties)
    for case in HEAD_CASES:
        head = create_head("pwr", **case)
        fused = _head_step(head, student, teacher)
        assert fused[2] == 2
        head._compiled = None  # (the composed path: relation vectors, the two-call sum, the gradient matrix in torch)
        composed = _head_step(head, student, teacher)
        if case["margin"] == "teacher_std":  # (the C code's std and torch's may differ in their last bits)
            torch.testing.assert_close(fused[0], composed[0], rtol=1e-6, atol=0)
            torch.testing.assert_close(fused[1], composed[1], rtol=1e-5, atol=1e-9)
        else:
            assert torch.equal(fused[0], composed[0]) and torch.equal(fused[1], composed[1]), case
        monkeypatch.setenv(pwr_cpu.ENV, "0")
        vectorised = _head_step(create_head("pwr", **case), student, teacher)
        monkeypatch.setenv(pwr_cpu.ENV, "1")
        assert vectorised[2] == 0
        torch.testing.assert_close(vectorised[0], fused[0], rtol=1e-6, atol=0)
        torch.testing.assert_close(vectorised[1], fused[1], rtol=1e-5, atol=1e-9)
        with torch.no_grad():
            assert torch.equal(create_head("pwr", **case)(student=student, teacher=teacher), fused[0])


def test_cosine_mean_returns_the_sum_count_and_range() -> None:
    """``cosine_mean``'s (sum, C, value range) against the tiled sum, the counted pairs and the range of s - t of
    the same relations; its gradient matrix symmetric with a zero diagonal; none without grad."""
    g = torch.Generator().manual_seed(5)
    x = torch.nn.functional.normalize(torch.randn(2, 30, 16, generator=g), dim=-1)
    gram = x @ x.transpose(1, 2)
    iu = torch.triu_indices(30, 30, 1)
    s, t = (1.0 - gram[:, iu[0], iu[1]]).double()
    loss, kmat, res = pwr_cpu.cosine_mean(gram[0], gram[1], pwr_cpu.SINGLE, 1, 0.0, 0, 1.0, True)
    ref_sum, ref_grad = pwr_sum_and_grad_tiled(s, t, "exp", "teacher_diff", 1.0, 1.0, 64)
    count = int((t[:, None] > t[None, :]).sum())
    assert int(res[1]) == count
    assert_close_rel(res[0], ref_sum, "sum")
    assert float(res[2]) == float((s - t).max() - (s - t).min())
    assert float(loss) == float((res[0] / count).float())
    assert torch.equal(kmat, kmat.t()) and not kmat.diagonal().any()
    assert_close_rel(kmat[iu[0], iu[1]].double(), ref_grad / count, "gradient matrix")
    assert pwr_cpu.cosine_mean(gram[0], gram[1], pwr_cpu.SINGLE, 1, 0.0, 0, 1.0, False)[1] is None
    lower = gram.clone()  # only the pairs i < j (the upper triangles) are read
    lower.tril_(-1).add_(torch.rand(2, 30, 30, generator=g).tril_(-1)).add_(gram.triu())
    again = pwr_cpu.cosine_mean(lower[0], lower[1], pwr_cpu.SINGLE, 1, 0.0, 0, 1.0, True)
    assert torch.equal(again[0], loss) and torch.equal(again[1], kmat) and torch.equal(again[2], res)
    # a query and a key item per relation: a constant margin, the teacher's std (computed by the C code)
    for kind, margin in ((pwr_cpu.CONSTANT, 0.3), (pwr_cpu.CONSTANT, -0.2), (pwr_cpu.TEACHER_STD, "teacher_std")):
        loss, kmat, res = pwr_cpu.cosine_mean(gram[0], gram[1], kind, 0, 0.0 if kind == pwr_cpu.TEACHER_STD else
                                              margin, 1, 1.0, True)
        ref_sum, ref_grad = pwr_sum_and_grad_tiled(s, t, "diff", margin, 1.0, 1.0, 64)
        const = t.std(unbiased=False) if kind == pwr_cpu.TEACHER_STD else margin
        assert int(res[1]) == count
        assert_close_rel(res[0], ref_sum, f"sum ({margin})")
        assert float(res[2]) == pytest.approx(float(torch.cat((s, s + const)).max() - torch.cat((s, s + const)).min()),
                                              rel=1e-12)
        assert float(loss) == float((res[0] / count).float())
        assert torch.equal(kmat, kmat.t()) and not kmat.diagonal().any()
        assert_close_rel(kmat[iu[0], iu[1]].double(), ref_grad / count, f"gradient matrix ({margin})")
        again = pwr_cpu.cosine_mean(lower[0], lower[1], kind, 0, 0.0 if kind == pwr_cpu.TEACHER_STD else margin, 1,
                                    1.0, True)
        assert torch.equal(again[0], loss) and torch.equal(again[1], kmat) and torch.equal(again[2], res)


def test_the_head_takes_the_two_call_step_only_where_it_applies(monkeypatch) -> None:
    """euclidean relations, float64 embeddings, fewer than 3 rows, the tiled method (ranknet): the composed paths,
    with ``cosine_mean`` never called."""
    def refuse(*args, **kwargs):
        raise AssertionError("cosine_mean called")

    student, teacher = _embeddings(12, 8, 8, False, seed=1)
    monkeypatch.setattr(pwr_cpu, "cosine_mean", refuse)
    for kwargs, s, t in ((dict(relation="euclidean"), student, teacher), (dict(inversion="ranknet"), student, teacher),
                         (dict(margin="teacher_std"), student.double(), teacher.double()),
                         ({}, student[:2], teacher[:2]), (dict(method="tiled"), student, teacher)):
        x = s.clone().requires_grad_(True)
        create_head("pwr", **kwargs)(student=x, teacher=t).backward()
        assert x.grad is not None


def test_cosine_mean_refuses_bad_arguments() -> None:
    gram = torch.eye(5)
    for gs, gt in ((gram, gram.double()), (gram, torch.eye(5, device="meta")), (gram[:4], gram),
                   (torch.eye(2), torch.eye(2)), (torch.ones(5), torch.ones(5)), (torch.ones(()), torch.ones(()))):
        with pytest.raises(ValueError, match="pwr CPU mean: expected two float32 CPU Gram matrices"):
            pwr_cpu.cosine_mean(gs, gt, pwr_cpu.SINGLE, 1, 0.0, 0, 1.0, True)
    with pytest.raises(ValueError, match="failed"):
        pwr_cpu.cosine_mean(gram, gram, pwr_cpu.SINGLE, 2, 0.0, 0, 1.0, True)  # lam must be 0 or 1 (the C code)


def test_head_step_in_two_calls_without_ordered_pairs() -> None:
    """Every teacher row the same (all teacher relations tied: C = 0): the loss and its gradient are zeros."""
    student, teacher = _embeddings(6, 8, 8, False, seed=2)
    loss, grad, calls = _head_step(create_head("pwr"), student, teacher[:1].expand(6, 8))
    assert calls == 2 and float(loss) == 0.0 and not grad.any()


@pytest.mark.parametrize("run", [2, 31, 32, 33, 200])
def test_one_call_sum_with_runs_of_equal_teacher_values(monkeypatch, run: int) -> None:
    """Teacher ties in runs of ``run`` equal values (ordered by insertion up to 32, by the 64-bit (t, s) sort
    above) with student values tied within them, at random positions: against the dense reference and the
    vectorised path."""
    g = torch.Generator().manual_seed(run)
    m = 3 * run + 40
    t = torch.rand(m, generator=g) * 2.0
    s = torch.round(torch.rand(m, generator=g) * 16.0) / 8.0  # (ties in s too)
    where = torch.randperm(m, generator=g)
    t[where[:run]], t[where[run:2 * run]] = 0.75, 1.25  # two runs, one at the largest or smallest value
    t[where[2 * run]] = 2.5
    for inversion, p, margin in (("exp", 1.0, "teacher_diff"), ("power", 2.0, 0.0), ("diff", 1.0, "teacher_diff")):
        got = _sum_grad_count(s, t, inversion, margin, p, 1.0, True, monkeypatch)
        ref = _sum_grad_count(s, t, inversion, margin, p, 1.0, False, monkeypatch)
        assert int(got[2]) == int(ref[2]) == int((t[:, None] > t[None, :]).sum())
        assert_close_rel(got[0], ref[0], "sum")
        assert_close_rel(got[1], ref[1], "grad")
        s_ref = s.double().requires_grad_(True)
        dense = pwr_loss_dense(s_ref, t.double(), inversion, margin, p, 1.0)
        (dense_grad,) = torch.autograd.grad(dense, s_ref)
        assert_close_rel(got[0] / got[2], dense.detach(), "sum (dense)")
        assert_close_rel(got[1] / got[2], dense_grad, "grad (dense)")


def test_pair_sum_refuses_bad_arguments() -> None:
    s = torch.rand(6)
    with pytest.raises(ValueError, match="pair sum: expected two float32 CPU vectors"):
        pwr_cpu.pair_sum(s, torch.rand(6, dtype=torch.float64), 0.1, 1, 1.0)
    with pytest.raises(ValueError, match="pair sum: expected two float32 CPU vectors"):
        pwr_cpu.pair_sum(s[:1], s[:1], 0.1, 1, 1.0)
    with pytest.raises(ValueError, match="the margin must be a float or a float64 CPU tensor of one value"):
        pwr_cpu.pair_sum(s, s, torch.tensor(0.1), 1, 1.0)
    with pytest.raises(ValueError, match="the margin must be a float or a float64 CPU tensor of one value"):
        pwr_cpu.pair_sum(s, s, torch.zeros(2, dtype=torch.float64), 1, 1.0)
    with pytest.raises(ValueError, match="failed"):
        pwr_cpu.pair_sum(s, s, 0.1, 9, 1.0)  # k above the C code's MAX_K


def test_pair_sum_centres_the_features_on_keys_and_queries(monkeypatch) -> None:
    """beta * (value range) at the fast path's limit (200 x (2 + 3 + 2) = 1400): the exp features stay finite only
    if centred on the range of keys AND queries (centred on the queries alone a key feature would be exp(800)), and
    the pass masks a product that does not count before forming it (a key's feature times the keys' sum overflows:
    0 x inf would be NaN). float32 (``pair_sum``) and float64 (the composed compiled path) against the vectorised
    path and the dense loss (whose gradient is NaN here: its masked pairs overflow)."""
    s = torch.linspace(0.0, 2.0, 50)
    ref = _sum_grad_count(s.double(), s.double(), "exp", 3.0, 1.0, 200.0, False, monkeypatch)
    dense = pwr_loss_dense(s.double(), s.double(), "exp", 3.0, 1.0, 200.0)
    assert_close_rel(ref[0] / ref[2], dense, "vectorised loss")
    for x in (s, s.double()):
        total, grad, count = _sum_grad_count(x, x.clone(), "exp", 3.0, 1.0, 200.0, True, monkeypatch)
        assert torch.isfinite(total) and torch.isfinite(grad).all() and int(count) == int(ref[2])
        assert_close_rel(total, ref[0], f"sum ({x.dtype})")
        assert_close_rel(grad, ref[1], f"grad ({x.dtype})")


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
def test_every_fast_power_through_the_compiled_pass(p: float) -> None:
    """The pass's power levels are compiled once per k (1 .. 8): each against the dense reference, with one item
    per relation and with two, float32 (the two-call sums) and float64 (the composed path), ties included."""
    s, t = relations(300, "both", seed=int(p))
    for margin in ("teacher_diff", 0.0, 0.125, "teacher_std"):
        check_against_dense(s, t, "power", margin, p, 1.0, "fast")
        total, grad, count = pwr_sum_and_grad_fast(s.float(), t.float(), "power", margin, p, 1.0)
        s_ref = s.float().double().requires_grad_(True)
        ref = pwr_loss_dense(s_ref, t.float().double(), "power", margin, p, 1.0)
        (g_ref,) = torch.autograd.grad(ref, s_ref)
        assert_close_rel(total / count, ref.detach(), f"loss (p={p}, {margin})")
        assert_close_rel(grad / count, g_ref, f"grad (p={p}, {margin})")
