"""The distribution wrappers read nothing back to the host per step: on 2 gloo processes, a wrapper's SECOND call
(its first compares the ranks' shapes once, by design) runs forward and backward under the sync counter of
tests/heads/test_no_host_sync.py with zero counted calls: GlobalBatch around every embedding head, ClassSharded
around hkd, and the bucketed gradient average of head parameters."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from gloo_helpers import run_gloo_processes

WORLD = 2


def _worker(rank: int, world: int) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "heads"))  # the sync counter of the head tests
    from test_contract import HEAD_PARAMS
    from test_no_host_sync import SyncCounter, make_inputs

    from insightface_pwr.distill.gather import ClassSharded, GlobalBatch, average_gradients
    from insightface_pwr.heads.base import debug_checks
    from insightface_pwr.heads.registry import create_head, get_head_spec, list_heads

    calls = {}  # (the process group is run_gloo_processes')
    for name in list_heads():
        head = create_head(name, **HEAD_PARAMS.get(name, {}))
        logits = get_head_spec(name).consumes == "logits"
        module = ClassSharded(head) if logits else GlobalBatch(head)
        for call in range(2):
            inputs = make_inputs(name, seed=rank)
            key = next(iter(inputs))
            inputs[key] = inputs[key].clone().requires_grad_(True)
            with debug_checks(False), SyncCounter() as counter:
                module(**inputs).backward()
            if call == 1:
                calls[name] = counter.calls
            elif not logits:
                calls[f"{name}:first"] = counter.calls  # the one-time shape check: it does read back
    weight = torch.nn.Parameter(torch.full((3,), float(rank)))
    average_gradients([weight], WORLD)  # broadcasts rank 0's values once
    with SyncCounter() as counter:
        (weight * (rank + 1.0)).sum().backward()
    calls["average_gradients"] = counter.calls
    calls["average_gradients_value"] = weight.grad.tolist()  # mean of 1 and 2 over the ranks
    return calls


@pytest.fixture(scope="module")
def calls():
    return run_gloo_processes(_worker, WORLD, timeout=240)


def test_wrappers_read_nothing_back_per_step(calls):
    from insightface_pwr.heads.registry import list_heads
    for rank_calls in calls:
        for name in list_heads():
            assert rank_calls[name] == [], (name, rank_calls[name])
        assert rank_calls["average_gradients"] == []
        assert "tolist" in rank_calls["pwr:first"]  # the counter sees the wrapper's own reads (the first call's)


def test_head_parameter_gradients_are_averaged_over_ranks(calls):
    for rank_calls in calls:
        assert rank_calls["average_gradients_value"] == pytest.approx([1.5, 1.5, 1.5])
