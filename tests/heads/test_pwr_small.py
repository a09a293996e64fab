"""The block (square-root) decomposition of the fast PWR path (``pwr_small``) against the dense reference: tiny
blocks so that ties in t, in s and in both cross many t-block and value-block boundaries, every inversion the
fast path covers, float32 and float64 relations, losses and gradients (rtol 1e-6), and the sums of
``block_sums`` against a brute-force dominance count."""
from __future__ import annotations

import pytest
import torch

import insightface_pwr.heads.pwr_small as pwr_small
import insightface_pwr.heads.pwr_tree as pwr_tree
from insightface_pwr.heads.pwr_fast import pwr_loss, pwr_sum_and_grad_fast
from insightface_pwr.heads.pwr_math import pwr_loss_dense, pwr_sum_and_grad_tiled
from test_pwr_fast import FAST, MARGINS, TIES, assert_close_rel, check_against_dense, relations


@pytest.fixture(autouse=True)
def vectorised_path(monkeypatch):
    """This module tests the vectorised algorithms (a GPU's): the compiled CPU pass off."""
    from insightface_pwr.heads import pwr_cpu

    monkeypatch.setenv(pwr_cpu.ENV, "0")


@pytest.fixture
def tiny_blocks(monkeypatch):
    """Blocks of 4 items: every tie run of the dyadic test values spans several blocks."""
    monkeypatch.setattr(pwr_small, "SMALL_M", 10**9)
    monkeypatch.setattr(pwr_small, "block_shape", lambda n: (-(-n // 4), 4))


@pytest.mark.parametrize("ties", TIES)
@pytest.mark.parametrize("margin", MARGINS)
@pytest.mark.parametrize("inversion,p,beta", FAST + [("power", 5.0, 1.0)])
def test_blocks_equal_dense_with_ties_across_blocks(tiny_blocks, inversion, p, beta, margin, ties) -> None:
    s, t = relations(90, ties, seed=len(str(margin)) + 10 * len(ties) + int(p))
    check_against_dense(s, t, inversion, margin, p, beta, "fast")


@pytest.mark.parametrize("m", [2, 3, 7, 33, 130])
@pytest.mark.parametrize("margin", ["teacher_diff", 0.125])
def test_blocks_sizes_and_padding(tiny_blocks, m: int, margin) -> None:
    s, t = relations(m, "both", seed=m)
    if int((t[:, None] > t[None, :]).sum()) == 0:
        t[0] = t.max() + 0.125
    for inversion, p, beta in FAST:
        check_against_dense(s, t, inversion, margin, p, beta, "fast")


@pytest.mark.parametrize("inversion,p,beta", FAST)
@pytest.mark.parametrize("margin", ["teacher_diff", 0.0, 0.125, "teacher_std"])
def test_blocks_float32_relations_with_ties(tiny_blocks, inversion, p, beta, margin) -> None:
    """float32 relations take the one-sort (t, s) key; ties between -0.0 and +0.0 included."""
    s, t = relations(150, "both", seed=3)
    t[:10] = -0.0
    t[10:20] = 0.0
    s[20:25] = -0.0
    s32, t32 = s.float().requires_grad_(True), t.float()
    got = pwr_loss(s32, t32, inversion, margin, p, beta, method="fast")
    (g_got,) = torch.autograd.grad(got, s32)
    s64 = s32.detach().double().requires_grad_(True)
    ref = pwr_loss_dense(s64, t32.double(), inversion, margin, p, beta)
    (g_ref,) = torch.autograd.grad(ref, s64)
    assert got.dtype == torch.float32 and g_got.dtype == torch.float32
    assert_close_rel(got.detach().double(), ref.detach(), f"loss float32 {inversion} {margin}")
    assert_close_rel(g_got.double(), g_ref, f"grad float32 {inversion} {margin}")


def test_default_block_shape_equals_dense_m_4186() -> None:
    """The paper's per-GPU batch (N = 92, M = 4186) with the default block shape, ties in t and s."""
    s, t = relations(4186, "both", seed=92)
    check_against_dense(s, t, "exp", "teacher_diff", 1.0, 1.0, "fast")
    check_against_dense(s, t, "diff", 0.1, 1.0, 1.0, "fast")


def test_blocks_and_tree_agree(monkeypatch) -> None:
    s, t = relations(3000, "t", seed=5)
    for inversion, p, beta, margin in [("exp", 1.0, 1.0, "teacher_diff"), ("power", 3.0, 1.0, 0.1)]:
        monkeypatch.setattr(pwr_small, "SMALL_M", 10**9)
        total_b, grad_b, count_b = pwr_sum_and_grad_fast(s, t, inversion, margin, p, beta)
        monkeypatch.setattr(pwr_small, "SMALL_M", 0)
        total_t, grad_t, count_t = pwr_sum_and_grad_fast(s, t, inversion, margin, p, beta)
        assert int(count_b) == int(count_t)
        assert_close_rel(total_b, total_t, f"total {inversion}")
        assert_close_rel(grad_b, grad_t, f"grad {inversion}")


@pytest.mark.parametrize("B,L", [(1, 4), (3, 4), (5, 8)])
@pytest.mark.parametrize("groups", [1, 2])
def test_block_sums_equal_brute_force(B: int, L: int, groups: int) -> None:
    """R (sum of W over the items an item dominates) and T (sum of U over the items dominating it), with many
    equal values: q dominates p iff pos(q) < pos(p) and v_q > v_p (and, with groups, both lie in one group of
    n / groups consecutive positions)."""
    if B % groups:
        B *= groups
    n = B * L
    G = n // groups
    g = torch.Generator().manual_seed(n + groups)
    v = torch.randint(0, 5, (n,), generator=g).double()
    Fm = torch.randn(5, n, generator=g, dtype=torch.float64)  # 2 key features, 3 query features
    vperm = torch.cat([torch.sort(v[i * G:(i + 1) * G], stable=True)[1] + i * G for i in range(groups)])
    Y = torch.stack((v, torch.full_like(v, float("nan"))))  # row 1: scratch (overwritten)
    FF = torch.stack((Fm, torch.full_like(Fm, float("nan"))), 1)  # [:, 1]: the value order (written)
    T, R = pwr_small.block_sums(pwr_small._Space(Y, FF, 2, B, L, groups), vperm)
    torch.testing.assert_close(FF[:, 1], Fm[:, vperm], rtol=0, atol=0)
    pos = torch.arange(n)
    grp = pos // G
    dom = ((pos[:, None] < pos[None, :]) & (v[:, None] > v[None, :]) & (grp[:, None] == grp[None, :])).double()
    torch.testing.assert_close(R, Fm[2:] @ dom.t(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(T, Fm[:2] @ dom, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dense_levels,chunk", [(0, 16384), (1, 16384), (4, 32), (6, 64), (8, 512), (10, 8192)])
@pytest.mark.parametrize("inversion,p,beta", FAST)
def test_tree_with_dense_lowest_levels_equals_dense(monkeypatch, dense_levels, chunk, inversion, p, beta) -> None:
    """The tree (blocks off) finishing its lowest levels densely (``dense_groups``), in sub-chunks, and with the
    CPU chunking of the low levels forced small (then the dense levels stop at the chunk's)."""

    monkeypatch.setattr(pwr_small, "SMALL_M", 0)
    monkeypatch.setattr(pwr_small, "DENSE_LEVELS", dense_levels)
    monkeypatch.setattr(pwr_small, "_DENSE_CHUNK", chunk)
    s, t = relations(300, "both", seed=dense_levels + chunk)
    for margin in ("teacher_diff", 0.125, "teacher_std"):
        check_against_dense(s, t, inversion, margin, p, beta, "fast")
    monkeypatch.setattr(pwr_tree, "CHUNK_LEVELS", 3)
    check_against_dense(s, t, inversion, "teacher_diff", p, beta, "fast")
    check_against_dense(s, t, inversion, 0.125, p, beta, "fast")


@pytest.mark.parametrize("small_m,chunk", [(0, 16), (0, 2), (10**9, 16)], ids=["tree", "chunked-tree", "blocks"])
@pytest.mark.parametrize("params", [dict(inversion="exp", margin="teacher_diff"), dict(inversion="diff", margin=0.1),
                                    dict(inversion="power", p=3.0, margin="teacher_std"),
                                    dict(inversion="exp", margin=0.0)],
                         ids=lambda p: "-".join(str(v) for v in p.values()))
def test_both_fast_algorithms_do_not_sync(monkeypatch, small_m: int, chunk: int, params: dict) -> None:
    """test_no_host_sync's batches are small enough for the blocks: the tree (with its dense levels) too, and
    with chunks of 4 items, the CPU's chunked and wide levels (pwr_tree.py)."""
    from test_no_host_sync import count_syncs

    monkeypatch.setattr(pwr_small, "SMALL_M", small_m)
    monkeypatch.setattr(pwr_small, "DENSE_LEVELS", 2 if chunk > 2 else 0)
    monkeypatch.setattr(pwr_tree, "CHUNK_LEVELS", chunk)
    calls = count_syncs("pwr", method="fast", **params)
    assert calls == [], f"pwr fast ({'tree' if small_m == 0 else 'blocks'}) {params}: host syncs {calls}"


@pytest.mark.parametrize("inversion,p,beta", FAST)
def test_kept_buffers_carry_nothing_between_calls(inversion, p, beta) -> None:
    """The small path keeps its scratch (values, features, masks, cells) per block shape: calls alternating
    between sizes of one block shape (pads differ) and between data sets must each equal the dense reference."""
    assert pwr_small.block_shape(100) == pwr_small.block_shape(97)
    for m, seed, margin in [(100, 1, "teacher_diff"), (97, 2, "teacher_diff"), (100, 3, 0.125), (97, 4, 0.125),
                            (100, 5, "teacher_diff"), (50, 6, 0.125), (100, 7, "teacher_diff")]:
        s, t = relations(m, "both" if seed % 2 else "none", seed=seed)
        check_against_dense(s, t, inversion, margin, p, beta, "fast")
        s32, t32 = s.float(), t.float()  # the (t, s) key sort of 32-bit relations, against the tiled sums
        total, grad, _ = pwr_sum_and_grad_fast(s32, t32, inversion, margin, p, beta)
        ref_total, ref_grad = pwr_sum_and_grad_tiled(s32.double(), t32.double(), inversion, margin, p, beta)
        assert_close_rel(total, ref_total, f"sum {inversion} float32 m={m}")
        assert_close_rel(grad, ref_grad, f"grad {inversion} float32 m={m}")


@pytest.mark.parametrize("n,small_m", [(12, None), (40, 0)])  # the blocks (kept scratch); the tree (forced: the
def test_kept_buffers_made_under_inference_mode_serve_training(monkeypatch, n: int, small_m) -> None:  # count's)
    """A first call under ``torch.inference_mode`` (a validation pass) makes the kept scratch; the training
    calls after it write into the same buffers and must work, with the dense reference's loss and gradient; and
    buffers made outside serve a later inference-mode call."""
    import insightface_pwr.heads.pwr_math as pwr_math
    import insightface_pwr.heads.relations as relations
    from insightface_pwr.heads.registry import create_head

    for module, name in ((pwr_small, "_SPACES"), (pwr_small, "_CONSTS"), (pwr_math, "_RUNS"),
                         (relations, "_PAIR_INDEX")):
        monkeypatch.setattr(module, name, {})  # fresh caches: the first call below makes every buffer
    if small_m is not None:
        monkeypatch.setattr(pwr_small, "SMALL_M", small_m)
    g = torch.Generator().manual_seed(n)
    st, te = torch.randn(n, 16, generator=g, dtype=torch.float64), torch.randn(n, 16, generator=g, dtype=torch.float64)
    fast, dense = create_head("pwr", method="fast"), create_head("pwr", method="dense")
    with torch.inference_mode():
        first = fast(student=st, teacher=te)
    x = st.clone().requires_grad_(True)
    loss = fast(student=x, teacher=te)
    loss.backward()
    y = st.clone().requires_grad_(True)
    ref = dense(student=y, teacher=te)
    ref.backward()
    assert_close_rel(loss.detach(), ref.detach(), "loss after an inference-mode call")
    assert_close_rel(first, ref.detach(), "loss under inference mode")
    assert_close_rel(x.grad, y.grad, "gradient after an inference-mode call")
    with torch.inference_mode():
        again = fast(student=st, teacher=te)
    assert_close_rel(again, ref.detach(), "loss under inference mode, buffers made outside")
