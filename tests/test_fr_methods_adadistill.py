"""AdaDistill over partial FC's class shards (integration/arcface_torch/centres.py) against independent references:
the local ``adadistill`` head (one process, the centres being partial FC's weight), one process on the
concatenated batch (two gloo processes, each owning half of the classes), and an explicit loop over partial FC's
sampled classes (``sample_rate < 1``). Values, student gradients and the centres after several steps."""
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from insightface_pwr.heads.adadistill import AdaDistillLoss, adadistill_alpha, adadistill_update
from insightface_pwr.host.partial_fc import MarginSoftmax, PartialFC
from insightface_pwr.integration.arcface_torch.centres import ForwardBypass, PartialFCAdaDistill

sys.path.insert(0, str(Path(__file__).resolve().parent / "host"))
from gloo_helpers import run_gloo_processes  # noqa: E402

C, D, N, STEPS = 16, 6, 8, 4
SCALE = 16.0  # partial FC's cross-entropy clamps each p_target at 1e-30 (as upstream); at s 64 random batches
# reach it, and the value (not the gradient) would then differ from the local head's F.cross_entropy


def _inputs(seed=0):
    """STEPS global batches (float64): student rows, teacher rows near them, labels with repeats; the initial
    C x D centres."""
    g = torch.Generator().manual_seed(seed)
    steps = []
    for k in range(STEPS):
        t = torch.randn(N, D, generator=g, dtype=torch.float64)
        s = t + (1.5 - 0.3 * k) * torch.randn(N, D, generator=g, dtype=torch.float64)
        y = torch.randint(0, C, (N,), generator=g)
        y[-1] = y[0]  # a repeated label: the last sample's update wins
        steps.append((s, t, y))
    return steps, 0.01 * torch.randn(C, D, generator=g, dtype=torch.float64)


def _pfc(centres, sample_rate=1.0):
    pfc = PartialFC(MarginSoftmax(64, 1.0, 0.5, 0.0), D, C, sample_rate)
    with torch.no_grad():
        pfc.weight.data = centres[pfc.class_start:pfc.class_start + pfc.num_local].clone()
    pfc.weight.requires_grad_(False)
    return pfc


def _local_reference(steps, centres, margin_type, m):
    head = AdaDistillLoss(num_classes=C, embedding_size=D, margin_type=margin_type, m=m, s=SCALE).double()
    head.centres.copy_(centres)
    out = []
    for s, t, y in steps:
        s = s.clone().requires_grad_(True)
        loss = head(student=s, teacher=t, labels=y)
        loss.backward()
        out.append((loss.item(), s.grad.clone(), head.centres.clone()))
    return out


@pytest.mark.parametrize("margin_type, m", [("arcface", 0.45), ("cosface", 0.35)])
def test_one_process_equals_the_local_head(margin_type, m):
    steps, centres = _inputs()
    ref = _local_reference(steps, centres, margin_type, m)
    pfc = _pfc(centres)
    term = PartialFCAdaDistill(pfc, margin_type, m, SCALE)
    for (s, t, y), (loss_ref, grad_ref, centres_ref) in zip(steps, ref):
        s = s.clone().requires_grad_(True)
        loss = term(student=s, teacher=t, labels=y)
        loss.backward()
        assert loss.item() == pytest.approx(loss_ref, rel=1e-10)
        torch.testing.assert_close(s.grad, grad_ref, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(pfc.weight.data, centres_ref, rtol=0, atol=0)
        assert pfc.weight.grad is None
    assert not torch.equal(pfc.weight.data, centres)  # the centres moved


def test_sampled_classes_equal_an_explicit_loop():
    """sample_rate 0.6: the softmax runs over partial FC's kept classes (positives + random others), every
    centre of the batch is updated; reference written out step by step from the spec."""
    steps, centres = _inputs(1)
    pfc = _pfc(centres, sample_rate=0.6)
    term = PartialFCAdaDistill(pfc, "arcface", 0.45, SCALE)
    ref_centres = centres.clone()
    for s, t, y in steps:
        s1 = s.clone().requires_grad_(True)
        loss = term(student=s1, teacher=t, labels=y)
        loss.backward()
        index = pfc.weight_index  # the classes partial FC kept this step
        assert index.numel() == int(0.6 * C) and set(y.tolist()) <= set(index.tolist())
        s2 = s.clone().requires_grad_(True)
        sn, tn = s2 / s2.norm(dim=1, keepdim=True), t / t.norm(dim=1, keepdim=True)
        alpha = adadistill_alpha(sn.detach(), tn, ref_centres[y])
        before = ref_centres.clone()
        for i in range(N):
            ref_centres[y[i]] = alpha[i] * before[y[i]] + (1 - alpha[i]) * tn[i]
        w = F.normalize(ref_centres[index], dim=1)
        cols = torch.searchsorted(index, y)
        cos = (sn @ w.t()).clamp(-1, 1)
        rows = torch.arange(N)
        logits = cos.clone()
        logits[rows, cols] = torch.cos(torch.acos(cos[rows, cols]) + 0.45)
        ref = F.cross_entropy(SCALE * logits, cols)
        ref.backward()
        assert loss.item() == pytest.approx(ref.item(), rel=1e-10)
        torch.testing.assert_close(s1.grad, s2.grad, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(pfc.weight.data, ref_centres, rtol=1e-12, atol=1e-15)


def _two_rank_worker(rank, world, margin_type, m, sample_rate):
    torch.manual_seed(100 + rank)  # partial FC's class draw (sample_rate < 1) is rank-local, as upstream
    steps, centres = _inputs()
    pfc = _pfc(centres, sample_rate)
    term = PartialFCAdaDistill(pfc, margin_type, m, SCALE)
    out = []
    for s, t, y in steps:
        part = slice(rank * N // world, (rank + 1) * N // world)
        local = s[part].clone().requires_grad_(True)
        loss = term(student=local, teacher=t[part], labels=y[part])
        loss.backward()
        out.append((loss.item(), local.grad.numpy().copy(), pfc.weight.data.numpy().copy(),
                    pfc.class_start, pfc.num_local))
    return out


@pytest.mark.parametrize("margin_type, m", [("arcface", 0.45), ("cosface", 0.35)])
def test_two_processes_equal_one_process_on_the_concatenated_batch(margin_type, m):
    steps, centres = _inputs()
    ref = _local_reference(steps, centres, margin_type, m)
    ranks = run_gloo_processes(_two_rank_worker, 2, margin_type, m, 1.0)
    for k, (loss_ref, grad_ref, centres_ref) in enumerate(ref):
        owners = []
        for rank, res in enumerate(ranks):
            loss, grad, shard, start, count = res[k]
            assert loss == pytest.approx(loss_ref, rel=1e-10)  # the same global loss on every rank
            # arcface_torch's all-gather convention: rank r's rows get W x dL/dx_r (DDP's mean then gives dL/dtheta)
            part = slice(rank * N // 2, (rank + 1) * N // 2)
            torch.testing.assert_close(torch.from_numpy(grad), 2 * grad_ref[part], rtol=1e-9, atol=1e-12)
            torch.testing.assert_close(torch.from_numpy(shard), centres_ref[start:start + count], rtol=0, atol=0)
            owners += list(range(start, start + count))
        assert owners == list(range(C))  # every centre has exactly one owner


def test_two_processes_with_sampled_classes_update_every_centre_once():
    """sample_rate 0.6 on 2 ranks: the centres (updated before the draw) still equal the 1-process centres."""
    steps, centres = _inputs()
    ref = _local_reference(steps, centres, "arcface", 0.45)
    ranks = run_gloo_processes(_two_rank_worker, 2, "arcface", 0.45, 0.6)
    for k, (_, _, centres_ref) in enumerate(ref):
        full = torch.cat([torch.from_numpy(res[k][2]) for res in ranks])
        torch.testing.assert_close(full, centres_ref, rtol=0, atol=0)
        assert all(torch.isfinite(torch.from_numpy(res[k][1])).all() for res in ranks)


def test_sharded_update_leaves_rows_not_owned_alone():
    centres = torch.randn(4, 3, dtype=torch.float64)
    t = F.normalize(torch.randn(5, 3, dtype=torch.float64), dim=1)
    rows = torch.tensor([1, 0, 1, 0, 2])
    owned = torch.tensor([True, False, True, False, False])  # row 0 and 2 only "seen" from other ranks
    alpha = torch.full((5,), 0.25, dtype=torch.float64)
    out = adadistill_update(centres.clone(), rows, alpha, t, owned=owned)
    expected = centres.clone()
    expected[1] = 0.25 * centres[1] + 0.75 * t[2]  # the last owned sample of row 1
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_forward_bypass_gives_an_attached_zero_and_is_undone():
    pfc = _pfc(torch.randn(C, D, dtype=torch.float64))
    emb = torch.randn(3, D, requires_grad=True)
    bypass = ForwardBypass(pfc)
    loss = pfc(emb, torch.tensor([0, 1, 2]))
    assert loss.item() == 0.0 and loss.requires_grad
    with pytest.raises(RuntimeError, match="no classifier logits"):
        bypass.pair(emb)
    bypass.close()
    assert "forward" not in vars(pfc)
