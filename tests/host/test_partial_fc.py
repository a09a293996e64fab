"""The CPU partial FC against a dense single-process reference (values and gradients), 1 and 2 gloo ranks."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from insightface_pwr.host.partial_fc import MarginSoftmax, PartialFC

N_LOCAL, D, C = 3, 5, 7


def _data():
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(C, D, generator=g)
    labels = torch.tensor([0, 6, 3, 3, 5, 1])
    # near their class centres: target probabilities stay far above upstream's 1e-30 clamp
    emb = weight[labels] + 0.8 * torch.randn(2 * N_LOCAL, D, generator=g)
    return emb, weight, labels


def _dense_reference(emb, weight, labels, margins):
    """Explicit loop: cos logits, margin on each target, scale 64, mean cross-entropy over the batch."""
    emb, weight = emb.clone().requires_grad_(), weight.clone().requires_grad_()
    cos = (F.normalize(emb) @ F.normalize(weight).t()).clamp(-1, 1)
    rows = []
    for i in range(emb.shape[0]):
        row = []
        for c in range(C):
            x = cos[i, c]
            if c == int(labels[i]):
                if margins[2] > 0:
                    x = x - margins[2]
                else:  # ArcFace with upstream's straight-through gradient
                    x = x + (torch.cos(torch.arccos(x.detach()) + margins[1]) - x.detach())
            row.append(64.0 * x)
        rows.append(torch.stack(row))
    logits = torch.stack(rows)
    loss = torch.stack([-(logits[i, labels[i]] - torch.logsumexp(logits[i], 0)) for i in range(len(rows))]).mean()
    loss.backward()
    return loss.item(), emb.grad, weight.grad


def _worker(rank, world, margins, sample_rate):
    emb, weight, labels = _data()
    n = emb.shape[0] // world
    pfc = PartialFC(MarginSoftmax(64.0, *margins), D, C, sample_rate)
    with torch.no_grad():
        pfc.weight.copy_(weight[pfc.class_start:pfc.class_start + pfc.num_local])
    local = emb[rank * n:(rank + 1) * n].clone().requires_grad_()
    loss = pfc(local, labels[rank * n:(rank + 1) * n].clone())
    loss.backward()
    return {"loss": loss.item(), "emb_grad": local.grad.numpy(), "w_grad": pfc.weight.grad.numpy(),
            "start": pfc.class_start, "count": pfc.num_local}


@pytest.mark.parametrize("margins", [(1.0, 0.0, 0.35), (1.0, 0.5, 0.0)], ids=["cosface", "arcface"])
@pytest.mark.parametrize("world", [1, 2])
def test_partial_fc_equals_dense_reference(run_gloo, margins, world):
    emb, weight, labels = _data()
    ref_loss, ref_emb_grad, ref_w_grad = _dense_reference(emb, weight, labels, margins)
    results = run_gloo(_worker, world, margins, 1.0)
    n = emb.shape[0] // world
    for rank, r in enumerate(results):
        assert math.isclose(r["loss"], ref_loss, rel_tol=1e-5)
        # AllGather's backward multiplies by the world size (DDP then averages over ranks)
        np.testing.assert_allclose(r["emb_grad"] / world, ref_emb_grad[rank * n:(rank + 1) * n], rtol=1e-4,
                                   atol=1e-6)
        np.testing.assert_allclose(r["w_grad"], ref_w_grad[r["start"]:r["start"] + r["count"]], rtol=1e-4,
                                   atol=1e-6)
    assert sum(r["count"] for r in results) == C


def test_margin_softmax_rejects_unsupported_margins():
    with pytest.raises(ValueError, match="CosFace"):
        MarginSoftmax(64, 0.9, 0.4, 0.15)
