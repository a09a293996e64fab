"""With 2+ GPUs (NCCL): global PWR (GlobalBatch) and HKD (ClassSharded) on 2 processes equal one process on the
concatenated batch: the loss on every rank, the DDP-averaged backbone gradient, and HKD's classifier gradient
(the ranks' shards concatenated)."""
import pytest
import torch
import torch.multiprocessing as mp

from insightface_pwr.host.launch import free_port

import nccl_workers


def _spawn(world, tmp_path, device):
    use_cuda = device.type == "cuda"
    backend = "nccl" if use_cuda else "gloo"
    out = tmp_path / f"w{world}"
    out.mkdir()
    mp.spawn(nccl_workers.run, args=(world, free_port(), backend, str(out), use_cuda), nprocs=world, join=True)
    return [torch.load(out / f"rank{r}_of{world}.pt", weights_only=False) for r in range(world)]


def test_global_pwr_and_hkd_on_two_processes_equal_one(tmp_path, device):
    if device.type == "cuda" and torch.cuda.device_count() < 2:
        pytest.skip(f"needs 2 GPUs, {torch.cuda.device_count()} visible")
    (one,) = _spawn(1, tmp_path, device)
    two = _spawn(2, tmp_path, device)
    for head in ("pwr", "hkd"):
        ref = one[head]
        assert ref["weight_grad"].abs().max() > 0
        for r in range(2):
            torch.testing.assert_close(two[r][head]["loss"], ref["loss"], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(two[r][head]["weight_grad"], ref["weight_grad"], rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(two[r][head]["bias_grad"], ref["bias_grad"], rtol=1e-4, atol=1e-6)
        if head == "hkd":
            merged = torch.cat([two[r][head]["shard_grad"] for r in range(2)])
            torch.testing.assert_close(merged, ref["shard_grad"], rtol=1e-4, atol=1e-7)
