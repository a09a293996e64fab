"""The fast O(M log M) and the tiled PWR paths against the dense reference ``pwr_loss_dense`` (values and
gradients, float64, rtol 1e-6), over every inversion and margin, with ties in t, in s and in both.

Ties come from quantising the values to a dyadic grid (multiples of 1/8 in [0, 2]): every sum and difference of
such values is exact in float64, so the reference and the fast path agree on which x_pq are exactly 0."""
from __future__ import annotations

import zlib

import pytest
import torch

from insightface_pwr.heads.base import debug_checks
from insightface_pwr.heads.pwr import pwr_loss_dense
from insightface_pwr.heads.pwr_fast import (MAX_FAST_POWER, is_decomposable, pair_count, pwr_loss,
                                            pwr_sum_and_grad_fast, resolve_method)
from insightface_pwr.heads.registry import create_head

RTOL = 1e-6
FAST = [("diff", 1.0, 1.0), ("power", 2.0, 1.0), ("power", 3.0, 1.0), ("exp", 1.0, 1.0), ("exp", 1.0, 2.5)]
TILED_ONLY = [("ranknet", 1.0, 1.0), ("ranknet", 1.0, 3.0), ("power", 1.5, 1.0), ("power", 0.5, 1.0)]
MARGINS = [0.0, 0.1, -0.125, "teacher_std", "teacher_diff"]
TIES = ["none", "t", "s", "both"]


def relations(m: int, ties: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Relation-like vectors in [0, 2] (the range of cosine / euclidean distances of normalised rows)."""
    g = torch.Generator().manual_seed(seed)
    s = torch.rand(m, generator=g, dtype=torch.float64) * 2.0
    t = torch.rand(m, generator=g, dtype=torch.float64) * 2.0
    if ties in ("t", "both"):
        t = torch.round(t * 8.0) / 8.0
    if ties in ("s", "both"):
        s = torch.round(s * 8.0) / 8.0
    return s, t


def assert_close_rel(got: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    """|got - ref| <= RTOL * max|ref| (elementwise for the gradient, relative to its largest entry)."""
    scale = ref.abs().max().clamp(min=1e-300)
    err = float((got - ref).abs().max() / scale)
    assert err <= RTOL, f"{what}: relative error {err:.3g} > {RTOL} (max |ref| = {float(scale):.6g})"


def check_against_dense(s: torch.Tensor, t: torch.Tensor, inversion: str, margin, p: float, beta: float,
                        method: str) -> None:
    s_ref = s.clone().requires_grad_(True)
    ref = pwr_loss_dense(s_ref, t, inversion, margin, p, beta)
    (g_ref,) = torch.autograd.grad(ref, s_ref)
    s_new = s.clone().requires_grad_(True)
    got = pwr_loss(s_new, t, inversion, margin, p, beta, method=method, tile=37)
    (g_new,) = torch.autograd.grad(got * 3.0, s_new)  # a non-unit upstream gradient must scale through
    tag = f"{method} {inversion} p={p} beta={beta} margin={margin!r}"
    assert got.dtype == torch.float64
    assert_close_rel(got.detach(), ref.detach(), f"loss ({tag})")
    assert_close_rel(g_new, 3.0 * g_ref, f"grad ({tag})")


@pytest.fixture(params=["compiled", "blocks", "tree"])
def fast_path(request, monkeypatch):
    """The fast method's exact algorithms: on a CPU the compiled pass (``pwr_cpu``), and the vectorised ones a GPU
    runs (forced here with the compiled pass off): the block decomposition (``pwr_small``, small M) and the tree."""
    import insightface_pwr.heads.pwr_small as pwr_small
    from insightface_pwr.heads import pwr_cpu

    if request.param == "compiled":
        require_compiled()
        monkeypatch.setenv(pwr_cpu.ENV, "1")
    else:
        monkeypatch.setenv(pwr_cpu.ENV, "0")
        monkeypatch.setattr(pwr_small, "SMALL_M", 10**9 if request.param == "blocks" else 0)
    return request.param


def require_compiled() -> None:
    """Skip (fail where INSIGHTFACE_PWR_REQUIRE_COMPILED is set, as in CI) when the compiled pass is not built."""
    import os

    from insightface_pwr.heads import pwr_cpu

    if not pwr_cpu.available():
        msg = "the compiled CPU pass (insightface_pwr/heads/_pwr_cpu.c) is not built (no C compiler at install?)"
        if os.environ.get("INSIGHTFACE_PWR_REQUIRE_COMPILED"):
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.mark.parametrize("ties", TIES)
@pytest.mark.parametrize("margin", MARGINS)
@pytest.mark.parametrize("inversion,p,beta", FAST)
def test_fast_equals_dense(inversion: str, p: float, beta: float, margin, ties: str, fast_path: str) -> None:
    s, t = relations(160, ties, seed=zlib.crc32(f"{inversion}{p}{beta}{margin}{ties}".encode()) % 1000)
    check_against_dense(s, t, inversion, margin, p, beta, "fast")


@pytest.mark.parametrize("ties", TIES)
@pytest.mark.parametrize("margin", MARGINS)
@pytest.mark.parametrize("inversion,p,beta", FAST[::2] + TILED_ONLY)
def test_tiled_equals_dense(inversion: str, p: float, beta: float, margin, ties: str) -> None:
    s, t = relations(100, ties, seed=7)
    check_against_dense(s, t, inversion, margin, p, beta, "tiled")


@pytest.mark.parametrize("m", [2, 3, 4, 5, 8, 17, 64, 65])
def test_fast_small_and_non_power_of_two_sizes(m: int, fast_path: str) -> None:
    """Sizes around the padding to 2^levels, with heavy ties."""
    s, t = relations(m, "both", seed=m)
    if pair_count(t) == 0:
        t[0] = t.max() + 0.125
    for inversion, p, beta in FAST:
        check_against_dense(s, t, inversion, "teacher_diff", p, beta, "fast")
        check_against_dense(s, t, inversion, 0.125, p, beta, "fast")


def test_fast_equals_dense_m_4950() -> None:
    """M = 4950 (N = 100): 2.45e7 pairs of pairs, the dense reference still fits (about 1 GB). The paper's best
    variant, with ties in t and s."""
    s, t = relations(4950, "both", seed=11)
    check_against_dense(s, t, "exp", "teacher_diff", 1.0, 1.0, "fast")


def test_pair_count_matches_brute_force() -> None:
    for ties in TIES:
        _, t = relations(300, ties, seed=3)
        brute = int((t[:, None] > t[None, :]).sum())
        assert pair_count(t) == brute
        assert pwr_sum_and_grad_fast(t.flip(0), t, "diff", 0.0)[2] == brute
    assert pair_count(torch.ones(10)) == 0
    assert pair_count(torch.ones(1)) == 0


def test_all_teacher_relations_equal_gives_attached_zero() -> None:
    s = torch.rand(10, dtype=torch.float64, requires_grad=True)
    loss = pwr_loss(s, torch.full((10,), 0.5, dtype=torch.float64), method="fast")
    loss.backward()
    assert float(loss.detach()) == 0.0 and s.grad is not None and float(s.grad.abs().sum()) == 0.0


def test_float32_input_returns_float32() -> None:
    s, t = relations(120, "none", seed=5)
    s32 = s.float().requires_grad_(True)
    loss = pwr_loss(s32, t.float(), "exp", "teacher_diff", method="fast")
    loss.backward()
    assert loss.dtype == torch.float32 and s32.grad.dtype == torch.float32
    s64 = s.clone().requires_grad_(True)
    ref = pwr_loss_dense(s64, t, "exp", "teacher_diff")
    ref.backward()
    torch.testing.assert_close(loss.double(), ref.detach(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(s32.grad.double(), s64.grad, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("relation", ["cosine", "euclidean"])
@pytest.mark.parametrize("inversion,margin", [("exp", "teacher_diff"), ("diff", 0.1), ("power", "teacher_std")])
def test_head_methods_agree_on_embeddings(relation: str, inversion: str, margin) -> None:
    g = torch.Generator().manual_seed(0)
    student = torch.randn(40, 16, generator=g, dtype=torch.float64)
    teacher = torch.randn(40, 24, generator=g, dtype=torch.float64)
    params = dict(relation=relation, inversion=inversion, margin=margin, p=2.0)
    grads, losses = [], []
    for method in ("dense", "fast", "tiled", "auto"):
        x = student.clone().requires_grad_(True)
        loss = create_head("pwr", method=method, tile=100, **params)(student=x, teacher=teacher)
        loss.backward()
        losses.append(loss.detach())
        grads.append(x.grad)
    for loss, grad in zip(losses[1:], grads[1:]):
        assert_close_rel(loss, losses[0], "head loss")
        assert_close_rel(grad, grads[0], "head embedding grad")


@pytest.mark.parametrize("relation", ["cosine", "euclidean"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("teacher_dim", [8, 12])  # (equal widths: both normalised and related in one batch)
@pytest.mark.parametrize("transposed_writes", [True, False])  # K's lower triangle: transposed positions / blocked copy
def test_head_hand_backward_equals_autograd_with_duplicate_rows(monkeypatch, relation: str, dtype, teacher_dim: int,
                                                                 transposed_writes: bool) -> None:
    """The fast / tiled head computes d loss / d student by hand (relations and normalisation backward, in one
    autograd node); autograd through ``relations`` and ``pwr_loss`` is the reference, with duplicated student
    rows in float64 (euclidean distance at its clamp: no gradient there; in float32 the rounding leaves such a
    distance at ~1e-4 and its gradient is rounding noise either way), a zero row, and a head whose student
    needs no gradient (the loss only)."""
    import insightface_pwr.heads.relations as relations

    monkeypatch.setattr(relations, "SMALL_TRANSPOSE", 256 if transposed_writes else 0)
    g = torch.Generator().manual_seed(3)
    student = torch.randn(30, 8, generator=g, dtype=torch.float64)
    if dtype == torch.float64:
        student[5] = student[2]
    student[7] = 0.0
    student = student.to(dtype)
    teacher = torch.randn(30, teacher_dim, generator=g, dtype=torch.float64).to(dtype)
    for method in ("fast", "tiled"):
        head = create_head("pwr", method=method, relation=relation, tile=64)
        x = student.clone().requires_grad_(True)
        loss = head(student=x, teacher=teacher)
        (3.0 * loss).backward()
        y = student.clone().requires_grad_(True)
        ref = pwr_loss(*head.relations(y, teacher), "exp", "teacher_diff", method=method, tile=64)
        (3.0 * ref).backward()
        torch.testing.assert_close(loss, ref.detach(), rtol=1e-12 if dtype == torch.float64 else 1e-6, atol=0)
        torch.testing.assert_close(x.grad, y.grad, rtol=1e-9 if dtype == torch.float64 else 1e-4,
                                   atol=1e-14 if dtype == torch.float64 else 1e-7)
        if relation == "euclidean":
            assert y.grad[5].abs().sum() > 0  # (the pair (2, 5) passes no gradient, the others do)
        with torch.no_grad():
            assert torch.equal(head(student=student, teacher=teacher), loss.detach())
        assert not head(student=student, teacher=teacher).requires_grad


def test_method_resolution_never_approximates_silently() -> None:
    assert resolve_method("auto", "exp", 1.0) == "fast"
    assert resolve_method("auto", "power", 3.0) == "fast"
    assert resolve_method("auto", "power", 2.5) == "tiled"
    assert resolve_method("auto", "power", float(MAX_FAST_POWER + 1)) == "tiled"
    assert resolve_method("auto", "ranknet", 1.0) == "tiled"
    assert not is_decomposable("ranknet", 1.0)
    with pytest.raises(ValueError, match="method='fast' needs a decomposable inversion"):
        resolve_method("fast", "ranknet", 1.0)
    with pytest.raises(ValueError, match="method='fast'.*p=2.5"):
        create_head("pwr", method="fast", inversion="power", p=2.5)
    with pytest.raises(ValueError, match="method must be one of"):
        resolve_method("approx", "exp", 1.0)
    with pytest.raises(ValueError, match="tile must be a positive int"):
        create_head("pwr", tile=0)


def test_exp_fast_refuses_overflowing_range_with_debug_checks() -> None:
    """The range check reads values on the host: it runs with debug checks on only."""
    s, t = relations(20, "none", seed=1)
    with debug_checks(True), pytest.raises(ValueError, match="exceeds .* use method='tiled'"):
        pwr_sum_and_grad_fast(s, t, "exp", 0.0, beta=2000.0)
    with debug_checks(True):  # within range: no error, the same result as without the check
        assert_close_rel(pwr_sum_and_grad_fast(s, t, "exp", 0.0, beta=2.0)[0],
                         pwr_sum_and_grad_fast(s, t, "exp", 0.0, beta=2.0)[0], "debug on/off")


def test_exp_head_refuses_or_avoids_a_beta_out_of_the_fast_range() -> None:
    """Relations of normalised rows lie in [0, 2]: the head knows the bound at construction (no per-call read)."""
    with pytest.raises(ValueError, match="beta=400.0"):
        create_head("pwr", method="fast", inversion="exp", beta=400.0)
    assert create_head("pwr", method="auto", inversion="exp", beta=400.0)._method == "tiled"
    assert create_head("pwr", method="auto", inversion="exp", beta=100.0)._method == "fast"
    assert create_head("pwr", method="auto", inversion="exp", beta=300.0, margin=1.0)._method == "tiled"


@pytest.mark.parametrize("inversion,p,beta", FAST)
@pytest.mark.parametrize("margin", ["teacher_diff", 0.0, 0.125])
def test_fast_float32_relations_with_ties(inversion: str, p: float, beta: float, margin, fast_path: str) -> None:
    """float32 relations take the 32-bit teacher key; ties in t, in s and between -0.0 and +0.0."""
    s, t = relations(300, "both", seed=9)
    t[:10] = -0.0
    t[10:20] = 0.0
    s32, t32 = s.float().requires_grad_(True), t.float()
    got = pwr_loss(s32, t32, inversion, margin, p, beta, method="fast")
    (g_got,) = torch.autograd.grad(got, s32)
    s64 = s.clone().requires_grad_(True)
    ref = pwr_loss_dense(s64, t32.double(), inversion, margin, p, beta)
    (g_ref,) = torch.autograd.grad(ref, s64)
    assert got.dtype == torch.float32
    assert_close_rel(got.detach().double(), ref.detach(), f"loss float32 {inversion} {margin}")
    assert_close_rel(g_got.double(), g_ref, f"grad float32 {inversion} {margin}")


def test_no_ordered_pair_count_is_a_tensor() -> None:
    assert pair_count(torch.tensor([-0.0, 0.0, 0.0])).item() == 0
    assert pair_count(torch.tensor([1.0, -0.0, 0.0])).item() == 2


@pytest.mark.parametrize("inversion,p", [("exp", 1.0), ("power", 3.0), ("diff", 1.0), ("power", 2.0)])
def test_cpu_chunked_tree_equals_dense(monkeypatch, inversion: str, p: float) -> None:
    """The CPU path runs the tree in chunks (whole groups below a chunk, chunk by chunk within the wider groups);
    force chunks of 8 items so that both run here, for one item and for two items per relation."""
    from insightface_pwr.heads import pwr_cpu

    monkeypatch.setenv(pwr_cpu.ENV, "0")  # (the vectorised tree, not the compiled pass)
    import insightface_pwr.heads.pwr_fast as pwr_fast
    import insightface_pwr.heads.pwr_tree as pwr_tree

    monkeypatch.setattr(pwr_tree, "CHUNK_LEVELS", 3)
    monkeypatch.setattr(pwr_fast.pwr_small, "SMALL_M", 0)  # (700 relations: the tree, not the blocks)
    s, t = relations(700, "both", seed=21)
    check_against_dense(s, t, inversion, "teacher_diff", p, 1.0, "fast")
    check_against_dense(s, t, inversion, 0.1, p, 1.0, "fast")


@pytest.mark.parametrize("inversion,p", [("exp", 1.0), ("power", 2.0)])
def test_unchunked_tree_with_positions_in_scratch_equals_dense(monkeypatch, inversion: str, p: float) -> None:
    """Off a CPU the tree runs unchunked and writes the in-group positions of its widest levels into scratch (a
    kept vector of n positions would cost 8 bytes per item): force both here."""
    from insightface_pwr.heads import pwr_cpu

    monkeypatch.setenv(pwr_cpu.ENV, "0")  # (the vectorised tree, not the compiled pass)
    import insightface_pwr.heads.pwr_fast as pwr_fast
    import insightface_pwr.heads.pwr_tree as pwr_tree

    monkeypatch.setattr(pwr_tree, "CHUNK_LEVELS", 64)
    monkeypatch.setattr(pwr_tree, "_KEEP_POSITIONS", 4)
    monkeypatch.setattr(pwr_fast.pwr_small, "SMALL_M", 0)
    s, t = relations(300, "both", seed=22)
    check_against_dense(s, t, inversion, "teacher_diff", p, 1.0, "fast")
    check_against_dense(s, t, inversion, 0.1, p, 1.0, "fast")


def test_ts_order_keys_sort_lexicographically_with_signed_zeros_and_infinities() -> None:
    """The packed (t, s) keys of float32 relations order as the pairs (t, s) do (checked pair by pair against
    Python's tuple order), equal pairs (-0.0 = +0.0) get equal keys, and the teacher words of the sorted keys
    change exactly where the sorted teacher values change."""
    from insightface_pwr.heads.pwr_math import teacher_words, ts_order_keys
    g = torch.Generator().manual_seed(5)
    t, s = torch.randn(600, generator=g), torch.randn(600, generator=g)
    t[::7], s[::11] = t[3], s[5]
    t[5], t[6], s[8], s[9], t[10], s[12] = -0.0, 0.0, -0.0, 0.0, float("inf"), -float("inf")
    keys = ts_order_keys(t, s).tolist()
    pairs = [(float(a), float(b)) for a, b in zip(t, s)]
    order = sorted(range(600), key=lambda i: pairs[i])
    for a, b in zip(order, order[1:]):
        assert keys[a] == keys[b] if pairs[a] == pairs[b] else keys[a] < keys[b], (pairs[a], pairs[b])
    sorted_keys, perm = torch.sort(torch.tensor(keys))
    words = teacher_words(sorted_keys)
    assert torch.equal(words[1:] != words[:-1], t[perm][1:] != t[perm][:-1])


def test_float64_order_keys_order_and_round_trip() -> None:
    """The float64 order keys sort as the values do (infinities, subnormals, signed zeros equal) and map back to
    the same bits (-0.0 as +0.0): the tree reads the sorted values back from the sorted keys."""
    from insightface_pwr.heads.pwr_math import key_values, order_key
    g = torch.Generator().manual_seed(6)
    x = torch.randn(4000, generator=g, dtype=torch.float64) * torch.logspace(-300, 300, 4000, dtype=torch.float64)
    x[:6] = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), 5e-324, -5e-324], dtype=torch.float64)
    keys = order_key(x)
    assert torch.equal(keys.argsort(stable=True), (x + 0.0).argsort(stable=True))
    assert int(keys[0]) == int(keys[1])
    assert torch.equal(key_values(keys).view(torch.int64), (x + 0.0).view(torch.int64))
