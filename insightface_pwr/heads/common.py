"""Small pieces shared by the RKD / DarkRank / feature heads: the PWR authors' L2 normalisation, the Huber loss
and parameter checks.

- :func:`l2_normalize_mx` is MXNet's ``L2Normalization``: x / sqrt(sum x^2 + 1e-10) (a zero row stays zero, with
  a finite gradient). The PWR authors' code normalises embeddings (``mode='instance'``, per row) and the RKD-A
  difference vectors (``mode='spatial'``, over the last axis) this way.
- :func:`at_least_float32` lifts float16 / bfloat16 inputs (autocast) to float32: the eps constants below (1e-10,
  1e-12) underflow in float16 and would give NaN; float32 and float64 pass through unchanged.
- :func:`huber` is the MXNet code's Huber loss: 0.5 x^2 if |x| <= delta else delta * (|x| - 0.5 delta), elementwise
  (for delta = 1 it equals ``torch.nn.functional.smooth_l1_loss``, the original RKD code's loss).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch

__all__ = ["MX_L2_EPS", "kept", "at_least_float32", "l2_normalize_mx", "l2_normalize_mx_scale", "l2_normalize_mx_backward",
           "huber", "check_choice", "check_positive",
           "check_nonnegative", "check_int"]

MX_L2_EPS = 1e-10  # MXNet L2Normalization's eps, added to the sum of squares under the square root


def kept(store: dict, key: Any, make: Callable[[], Any], limit: int) -> Any:
    """``store[key]``, made by ``make()`` on first use; beyond ``limit`` entries the oldest go (the small per-shape
    caches of constants and scratch buffers: a batch's shape rarely changes). Made outside inference mode even when
    the first call runs in it: an inference tensor kept as scratch would refuse the in-place writes of every later
    call made outside (a validation pass under ``torch.inference_mode`` before training)."""
    value = store.get(key)
    if value is None:
        with torch.inference_mode(False):
            value = store[key] = make()
        while len(store) > limit:
            store.pop(next(iter(store)))
    return value


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 if it is a half-precision float (float16, bfloat16), else unchanged (differentiable)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def l2_normalize_mx(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """x / sqrt(sum(x^2, dim) + 1e-10), as MXNet's ``L2Normalization``."""
    return x * torch.rsqrt((x * x).sum(dim=dim, keepdim=True) + MX_L2_EPS)


def l2_normalize_mx_scale(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(``l2_normalize_mx(x)`` for rows, the row scales 1 / sqrt(|x|^2 + 1e-10) (n, 1)): for a hand backward."""
    r = torch.rsqrt((x * x).sum(dim=1, keepdim=True) + MX_L2_EPS)
    return x * r, r


def l2_normalize_mx_backward(xn: torch.Tensor, r: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """d loss / d x from d loss / d xn for ``xn, r = l2_normalize_mx_scale(x)``: r (g - xn (xn . g)) per row."""
    return torch.addcmul(grad, xn, (xn * grad).sum(dim=1, keepdim=True), value=-1.0).mul_(r)


def huber(x: torch.Tensor, delta: float = 1.0) -> torch.Tensor:
    """Elementwise Huber loss of the differences ``x``: 0.5 x^2 if |x| <= delta else delta (|x| - delta / 2)."""
    a = x.abs()
    return torch.where(a <= delta, 0.5 * x * x, delta * (a - 0.5 * delta))


def check_choice(head: str, name: str, value: Any, choices: Iterable[Any]) -> None:
    """ValueError unless ``value`` is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices or isinstance(value, bool):
        raise ValueError(f"{head}: {name} must be one of {choices}, got {value!r}")


def check_positive(head: str, name: str, value: Any) -> float:
    """ValueError unless ``value`` is a finite real number > 0; returns it as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < float(value) < float("inf")):
        raise ValueError(f"{head}: {name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_nonnegative(head: str, name: str, value: Any) -> float:
    """ValueError unless ``value`` is a finite real number >= 0; returns it as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 <= float(value) < float("inf")):
        raise ValueError(f"{head}: {name} must be a finite number >= 0, got {value!r}")
    return float(value)


def check_int(head: str, name: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    """ValueError unless ``value`` is an int in [minimum, maximum]; returns it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or (
            maximum is not None and value > maximum):
        upper = f" and <= {maximum}" if maximum is not None else ""
        raise ValueError(f"{head}: {name} must be an integer >= {minimum}{upper}, got {value!r}")
    return value
