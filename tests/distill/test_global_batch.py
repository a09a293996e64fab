"""``pwr`` in the ``GlobalBatch`` wrapper (a recipe term's ``gather="global"``): 2 processes (gloo on 127.0.0.1)
against ONE process on the concatenated batch.

The model is a shared linear layer (same weights on both ranks): student embeddings S_r = X_r @ W. What must hold
(the convention of ``insightface_pwr/distill/collectives.py``, arcface_torch's AllGather):
- every rank's loss VALUE equals the single-process loss over the concatenated batch;
- every rank's gradient w.r.t. its OWN embeddings S_r equals W_size (= 2) times the single-process gradient of the
  same rows (the gather's backward sums the ranks' gradients and multiplies by the world size);
- the rank-averaged weight gradient (what DDP applies) equals the single-process weight gradient exactly.
"""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from gloo_helpers import run_gloo_processes
from insightface_pwr.distill.gather import GlobalBatch
from insightface_pwr.heads.registry import create_head

WORLD = 2
N_PER_RANK = 12
CASES = [dict(inversion="exp", margin="teacher_diff", relation="cosine", method="fast"),
         dict(inversion="ranknet", relation="euclidean", method="tiled", tile=50),
         dict(inversion="diff", margin=0.05, relation="cosine", method="dense")]


def _data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(WORLD * N_PER_RANK, 10, generator=g, dtype=torch.float64)
    w = torch.randn(10, 8, generator=g, dtype=torch.float64)
    teacher = torch.randn(WORLD * N_PER_RANK, 6, generator=g, dtype=torch.float64)
    return x, w, teacher


def _run(params: dict, x: torch.Tensor, w0: torch.Tensor, teacher: torch.Tensor, scope: str):
    w = w0.clone().requires_grad_(True)
    s = x @ w
    s.retain_grad()
    head = create_head("pwr", **params)
    loss = (GlobalBatch(head) if scope == "global" else head)(student=s, teacher=teacher)
    loss.backward()
    return loss.detach(), s.grad, w.grad


def _worker(rank: int, world: int) -> list:
    x, w0, teacher = _data()
    rows = slice(rank * N_PER_RANK, (rank + 1) * N_PER_RANK)
    results = []
    for params in CASES:
        loss, s_grad, w_grad = _run(params, x[rows], w0, teacher[rows], "global")
        dist.all_reduce(w_grad)  # what DDP does: the mean over ranks
        results.append((loss, s_grad, w_grad / WORLD))
    return results


@pytest.fixture(scope="module")
def two_rank_results():
    return run_gloo_processes(_worker, WORLD, timeout=180)


@pytest.mark.parametrize("case", range(len(CASES)))
def test_global_scope_equals_single_process_on_concatenated_batch(two_rank_results, case: int) -> None:
    x, w0, teacher = _data()
    ref_loss, ref_s_grad, ref_w_grad = _run(CASES[case], x, w0, teacher, "local")
    assert float(ref_loss) > 0.0
    for rank in range(WORLD):
        loss, s_grad, w_grad_mean = two_rank_results[rank][case]
        rows = slice(rank * N_PER_RANK, (rank + 1) * N_PER_RANK)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=0.0)
        torch.testing.assert_close(s_grad, WORLD * ref_s_grad[rows], rtol=1e-9, atol=1e-14)
        torch.testing.assert_close(w_grad_mean, ref_w_grad, rtol=1e-9, atol=1e-14)


def test_local_scope_differs_from_global(two_rank_results) -> None:
    """Guard against a test that cannot fail: the per-rank local loss is NOT the global one."""
    x, w0, teacher = _data()
    local, _, _ = _run(CASES[0], x[:N_PER_RANK], w0, teacher[:N_PER_RANK], "local")
    assert abs(float(local) - float(two_rank_results[0][0][0])) > 1e-6


def test_global_scope_without_process_group_is_local() -> None:
    x, w0, teacher = _data()
    for params in CASES:
        a = _run(params, x, w0, teacher, "global")
        b = _run(params, x, w0, teacher, "local")
        for u, v in zip(a, b):
            torch.testing.assert_close(u, v, rtol=0, atol=0)
