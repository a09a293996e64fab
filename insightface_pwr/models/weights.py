"""Model files: safe loading (``torch.load(weights_only=True)``: no code runs) and the one way a backbone gets the
weights of an arcface_torch file (``model.pt``, or a ``checkpoint_gpu_*.pt`` holding ``state_dict_backbone``; a DDP
``module.`` prefix removed), strictly: any missing, unexpected or wrongly shaped key is an error listing them all.
Used by teachers, ``student_init``, evaluation, the report and the demo."""
from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Union

import torch
from torch import nn

from ..infra.errors import UserError

__all__ = ["CheckpointError", "WeightsError", "safe_load", "extract_backbone_state", "load_weights_strict",
           "load_backbone"]

PathLike = Union[str, "os.PathLike[str]"]


class CheckpointError(UserError, RuntimeError):
    """A checkpoint file is missing, unreadable or does not hold what was expected."""


class WeightsError(UserError, ValueError):
    """A weights file does not hold a backbone state_dict, or does not fit the network."""


def safe_load(path: PathLike, what: str = "checkpoint", *, mmap: bool = False) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with errors that name ``what`` and the file;
    ``mmap``: map the tensors instead of reading them (where torch supports it), for slicing big shards."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} file not found: {str(path)!r}")
    kwargs = {"mmap": True} if mmap and "mmap" in inspect.signature(torch.load).parameters else {}  # torch >= 2.1
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, **kwargs)
    except Exception as e:  # noqa: BLE001  (torch raises many kinds; all mean "cannot read this file")
        raise CheckpointError(f"cannot read {what} {str(path)!r} with torch.load(weights_only=True): "
                              f"{type(e).__name__}: {e}") from e


def extract_backbone_state(obj: Any, path: Path, what: str) -> Dict[str, torch.Tensor]:
    """The backbone state_dict in ``obj``: a plain state_dict, or an arcface_torch ``checkpoint_gpu_*.pt``
    (``state_dict_backbone``); a ``module.`` prefix (DDP) is removed."""
    if isinstance(obj, Mapping) and "state_dict_backbone" in obj:
        obj = obj["state_dict_backbone"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{what} {str(path)!r} is not a state_dict (a dict of tensors) nor an arcface_torch "
                           f"checkpoint with 'state_dict_backbone'")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def load_weights_strict(module: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """Load ``state`` into ``module``; any missing, unexpected or wrongly shaped key is a WeightsError that
    lists them all (names and shapes)."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs network {tuple(own[k].shape)}"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        def show(xs: list) -> str:
            return ", ".join(xs[:20]) + (f", ... ({len(xs)} in all)" if len(xs) > 20 else "") if xs else "none"
        raise WeightsError(f"{what} does not fit the network (architecture mismatch): missing keys: "
                           f"{show(missing)}; unexpected keys: {show(unexpected)}; shape mismatches: {show(shapes)}")
    module.load_state_dict(state, strict=True)


def load_backbone(path: PathLike, network: str, factory: Callable[..., nn.Module], what: str = "model",
                  **kwargs: Any) -> nn.Module:
    """``factory(network, dropout=0.0, **kwargs)`` (e.g. ``fp16``, ``num_features``) with the weights of ``path``
    loaded strictly."""
    path = Path(path)
    state = extract_backbone_state(safe_load(path, what), path, what)
    try:
        module = factory(network, dropout=0.0, **kwargs)
    except Exception as e:  # noqa: BLE001  (any factory: upstream's get_model raises ValueError, others differ)
        raise WeightsError(f"{what}: cannot build network {network!r}: {type(e).__name__}: {e}") from e
    if module is None:
        raise WeightsError(f"{what}: unknown network {network!r}")
    load_weights_strict(module, state, f"{what} {str(path)!r} for network {network!r}")
    return module
