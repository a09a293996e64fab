"""insightface-pwr: knowledge distillation heads and hooks for InsightFace's arcface_torch.

The head registry's functions are available here (``insightface_pwr.create_head``, ``register_head``,
``list_heads``, ``get_head_spec``); they are imported on first use, so that importing the package (the command
line does) does not import torch.

The package's layers, bottom to top (enforced by import-linter, see setup.cfg):
``infra`` (files, progress, faults) < ``heads`` (loss math on tensors) | ``data`` (file formats) < ``models``
(model runners, backbones) < ``distill`` (hooks, recipes, teachers, cache, distribution wrappers) | ``eval``
(metrics, evaluation) < ``integration.arcface_torch`` (the only package that knows upstream) < ``host`` (the CPU
reference loop) < ``demo`` < ``cli``.
"""
from typing import Any

__version__ = "0.1.0"

__all__ = ["register_head", "create_head", "list_heads", "get_head_spec", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("register_head", "create_head", "list_heads", "get_head_spec"):
        from .heads import registry
        return getattr(registry, name)
    raise AttributeError(f"module 'insightface_pwr' has no attribute {name!r}")
