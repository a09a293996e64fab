"""The only package that knows arcface_torch (upstream, commit 0159b24d). What the patched upstream imports:

- ``build_hooks(cfg, backbone=..., partial_fc=..., optimizer=..., rank=..., world_size=..., local_rank=...)``
  (:mod:`.build`): the distillation hooks of a recipe;
- ``data_layer(cfg)`` (:mod:`.data_backend`): the MXNet-free loader and verification callback;
- ``load_recipe(path)``: a recipe file as upstream's ``get_config`` returns configs.

Modules: ``build`` (hooks from a recipe), ``classifier`` (teacher classifier shards, partial-FC logits),
``data_backend``, ``upstream`` (the one lookup of upstream's ``get_model``), ``patching`` (the patches).
Names are imported on first use, so ``insightface-pwr patch`` does not import torch.
"""
from typing import Any

__all__ = ["build_hooks", "data_layer", "load_recipe"]


def __getattr__(name: str) -> Any:
    if name == "build_hooks":
        from .build import build_hooks
        return build_hooks
    if name == "data_layer":
        from .data_backend import data_layer
        return data_layer
    if name == "load_recipe":
        from ...distill.recipe import load_recipe
        return load_recipe
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
