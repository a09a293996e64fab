"""No host synchronisation in any head's forward + backward.

A host sync (reading a device value on the host: ``.item()``, ``bool(t)``, ``.tolist()``, a data-dependent output
size such as ``nonzero`` / ``unique`` / boolean-mask indexing) stalls the GPU stream once per training step. On a
CPU the same calls are merely slow, but they are the same calls: a ``TorchFunctionMode`` sees every one of them
(also inside the Python ``backward`` of an ``autograd.Function``, because the backward runs under the mode here),
so this test finds them without a GPU.
"""
from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

from insightface_pwr.heads.base import debug_checks
from insightface_pwr.heads.registry import create_head, get_head_spec, list_heads
from test_contract import HEAD_PARAMS  # construction parameters a head needs (adadistill: num_classes)

N, D = 12, 5

_SYNC_METHODS = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "numpy", "cpu", "nonzero",
                 "masked_select", "unique", "unique_consecutive", "argwhere", "nonzero_static"}
_SYNC_FUNCTIONS = {torch.nonzero, torch.masked_select, torch.unique, torch.unique_consecutive, torch.argwhere}


def _is_bool_index(index) -> bool:
    parts = index if isinstance(index, tuple) else (index,)
    return any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts)


class SyncCounter(TorchFunctionMode):
    """Counts the torch calls that read device values on the host (``calls`` lists their names)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        if func is torch.Tensor.backward:
            return self._backward(*args, **kwargs)
        if func in _SYNC_FUNCTIONS or name in _SYNC_METHODS:
            self.calls.append(name)
        elif name in ("__getitem__", "__setitem__") and len(args) > 1 and _is_bool_index(args[1]):
            self.calls.append(f"{name}[bool]")
        return func(*args, **kwargs)

    def _backward(self, loss: torch.Tensor, gradient=None, retain_graph=None, create_graph=False, inputs=None):
        """``loss.backward()`` WITH this mode active inside: a mode is popped while it handles a call, so calling
        ``Tensor.backward`` here would run the whole backward (and every ``autograd.Function.backward``) unseen.
        The engine call below is what ``torch.autograd.backward`` ends in; it carries the mode stack along."""
        if inputs is not None or create_graph:
            raise NotImplementedError("SyncCounter: backward(inputs=..., create_graph=True) is not supported")
        with self:
            grad = torch.ones_like(loss) if gradient is None else gradient
            torch.autograd.Variable._execution_engine.run_backward(
                (loss,), (grad,), bool(retain_graph), False, (), True, True)


def make_inputs(name: str, n: int = N, seed: int = 0) -> dict:
    """Keyword inputs of head ``name`` (as ``test_contract.make_inputs``): logits or embeddings, float32."""
    spec = get_head_spec(name)
    g = torch.Generator().manual_seed(seed)
    if spec.consumes == "logits":
        return {"student_logits": 5 * torch.randn(n, 7, generator=g), "teacher_logits": 5 * torch.randn(n, 7, generator=g)}
    dt = D if spec.cls.same_dim else D + 1
    inputs = {"student": torch.randn(n, D, generator=g), "teacher": torch.randn(n, dt, generator=g)}
    if spec.cls.uses_labels:
        inputs["labels"] = torch.arange(n) % 3
    return inputs


def count_syncs(name: str, **params) -> list:
    """The host-sync calls of one forward + backward of head ``name`` (debug checks off: they DO read values)."""
    inputs = make_inputs(name)
    key = next(iter(inputs))
    inputs[key] = inputs[key].clone().requires_grad_(True)
    head = create_head(name, **{**HEAD_PARAMS.get(name, {}), **params})
    with debug_checks(False), SyncCounter() as counter:
        loss = head(**inputs)
        loss.backward()
    assert inputs[key].grad is not None and float(inputs[key].grad.abs().sum()) > 0  # the counter saw real work
    return counter.calls


def test_counter_sees_syncs_in_forward_and_in_autograd_function_backward() -> None:
    """The counter itself: it must catch each kind of call, including one in a custom backward."""

    class Syncing(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, g):
            g.sum().item()
            return g * 2

    x = torch.randn(4, requires_grad=True)
    with SyncCounter() as counter:
        y = Syncing.apply(x)
        z = y.detach()
        bool(z.sum() > 0), float(z[0]), int(z.argmax()), z.tolist(), torch.unique(z), z.unique_consecutive()
        z[z > 0], z.nonzero(), torch.masked_select(z, z > 0)
        y.sum().backward()
    assert counter.calls.count("item") == 1  # the one in backward
    for name in ("__bool__", "__float__", "__int__", "tolist", "unique", "unique_consecutive", "__getitem__[bool]",
                 "nonzero", "masked_select"):
        assert name in counter.calls, (name, counter.calls)


@pytest.mark.parametrize("name", list_heads())
def test_no_host_sync(name: str) -> None:
    calls = count_syncs(name)
    assert calls == [], f"head {name!r} reads device values on the host in forward + backward: {calls}"


# Exact PWR may read at most this many values on the host per forward + backward. Today it reads none: the pair
# count and the loss normaliser stay tensors, tie groups come from comparisons with the neighbour (no
# unique_consecutive), the exp shift is the middle of the value range (a tensor), and the range check that needs a
# host read runs only with debug checks on.
PWR_MAX_SYNCS = 0


@pytest.mark.parametrize("params", [dict(method="fast"), dict(method="auto", inversion="diff", margin=0.1),
                                    dict(method="fast", inversion="power", p=3.0, margin="teacher_std"),
                                    dict(method="fast", inversion="exp", margin=0.0),
                                    dict(method="tiled", tile=16), dict(method="tiled", inversion="ranknet", tile=16)],
                         ids=lambda p: "-".join(str(v) for v in p.values()))
@pytest.mark.parametrize("compiled", ["1", "0"], ids=["compiled-cpu-pass", "vectorised"])
def test_exact_pwr_methods_do_not_sync(monkeypatch, params: dict, compiled: str) -> None:
    """Both CPU paths: the compiled pass (a CPU's) and the vectorised one (a GPU's, forced here)."""
    from insightface_pwr.heads import pwr_cpu

    monkeypatch.setenv(pwr_cpu.ENV, compiled)
    calls = count_syncs("pwr", **params)
    assert len(calls) <= PWR_MAX_SYNCS, f"pwr {params}: host syncs {calls}"
