"""The one lookup of upstream's backbone factory, ``backbones.get_model``.

Inside arcface_torch (``train_v2.py``'s working directory is on ``sys.path``) ``from backbones import get_model``
finds it; elsewhere a folder can be given (``--arcface-root``), whose ``backbones`` package is imported under a
private module name. The factory is called ``get_model(name, dropout=0.0, fp16=..., num_features=D, **kwargs)``.
Without upstream, the package's own CPU backbones (:mod:`insightface_pwr.models.backbones`) are the fallback.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from typing import Callable, Optional

from torch import nn

__all__ = ["upstream_get_model", "model_factory"]


def upstream_get_model(root: Optional[str] = None) -> Optional[Callable[..., nn.Module]]:
    """Upstream's ``get_model``: from ``<root>/backbones`` when ``root`` is given (FileNotFoundError if absent),
    else the ``backbones`` package importable from ``sys.path`` (None if there is none)."""
    if root is None:
        try:
            from backbones import (
                get_model,  # arcface_torch's folder is the working directory of train_v2.py
            )
        except ImportError:
            return None
        return get_model
    init = os.path.join(os.path.abspath(root), "backbones", "__init__.py")
    if not os.path.isfile(init):
        raise FileNotFoundError(2, "arcface_torch's backbones package not found (run inside "
                                   "recognition/arcface_torch or pass --arcface-root)", init)
    name = f"_insightface_pwr_backbones_{abs(hash(init))}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[os.path.dirname(init)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name].get_model


def model_factory(root: Optional[str] = None) -> Callable[..., nn.Module]:
    """Upstream's ``get_model`` where it is found, else the package's own backbones (by the same call)."""
    from ...models.backbones import get_model
    return upstream_get_model(root) or get_model
