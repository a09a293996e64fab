"""The checking primitives of recipes (types and known keys, with errors that name the key) and the
``lr_schedule`` section, shared by :mod:`insightface_pwr.distill.recipe`."""
from __future__ import annotations

import copy
import difflib
import math
import numbers
from typing import Any, Dict, Sequence

from easydict import EasyDict as edict

from ..infra.errors import UserError

__all__ = ["RecipeError", "LR_SCHEDULES", "validate_lr_schedule"]


class RecipeError(UserError, ValueError):
    """A recipe is missing, malformed, or holds an unknown key or a value of the wrong type."""


_INT = (int,)
_NUM = (numbers.Real,)
_STR_NONE = (str, type(None))
LR_SCHEDULES = {"step": {"kind": (str,), "every_epochs": _INT, "factor": _NUM, "warmup_epochs": _INT},
                "poly": {"kind": (str,), "power": _NUM},
                "multistep": {"kind": (str,), "milestones": (list, tuple), "factor": _NUM}}


def _type_names(types: tuple) -> str:
    names = {int: "int", float: "float", str: "str", bool: "bool", dict: "dict (edict)", list: "list",
             tuple: "tuple", type(None): "None", numbers.Real: "number"}
    return " or ".join(names.get(t, t.__name__) for t in types)


def _check_type(key: str, value: Any, types: tuple) -> None:
    if isinstance(value, float) and not math.isfinite(value):  # nan < 0 is False: refuse non-finite numbers here
        raise RecipeError(f"{key} must be a finite number, got {value!r}")
    ok = isinstance(value, types)
    if isinstance(value, bool) and bool not in types:  # True is an int in Python; never accept it as a number
        ok = False
    if not ok:
        raise RecipeError(f"{key} must be {_type_names(types)}, got {value!r} ({type(value).__name__})")


def _check_known(key: str, d: Dict[str, Any], known: Sequence[str]) -> None:
    for k in d:
        if k not in known:
            close = difflib.get_close_matches(str(k), list(known), n=2, cutoff=0.5)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise RecipeError(f"unknown key {key}.{k}.{hint} Known keys: {', '.join(known)}")


def validate_lr_schedule(s: Any, key: str = "config.lr_schedule") -> edict:
    """Validate one lr schedule section (``key`` names it in errors); returns it with its defaults filled in."""
    _check_type(key, s, (dict,))
    kind = s.get("kind")
    if kind not in LR_SCHEDULES:
        raise RecipeError(f"{key}.kind must be one of {tuple(LR_SCHEDULES)}, got {kind!r}")
    _check_known(key, s, list(LR_SCHEDULES[kind]))
    out = edict({"step": {"kind": "step", "every_epochs": 2, "factor": 0.1, "warmup_epochs": 0},
                 "poly": {"kind": "poly", "power": 1.0},
                 "multistep": {"kind": "multistep", "milestones": None, "factor": 0.1}}[kind])
    out.update(edict(copy.deepcopy(dict(s))))
    for k, types in LR_SCHEDULES[kind].items():
        _check_type(f"{key}.{k}", out[k], types)
    if kind == "step" and (out.every_epochs <= 0 or not 0 < out.factor <= 1 or out.warmup_epochs < 0):
        raise RecipeError(f"{key}: need every_epochs > 0, 0 < factor <= 1, warmup_epochs >= 0, got {dict(out)}")
    if kind == "multistep":
        ms = out.milestones
        if (not ms or not all(isinstance(e, int) and not isinstance(e, bool) and e > 0 for e in ms)
                or list(ms) != sorted(set(ms)) or not 0 < out.factor <= 1):
            raise RecipeError(f"{key}: need milestones = increasing epochs (ints > 0) and 0 < factor <= 1, got "
                              f"{dict(out)}")
        out.milestones = list(ms)
    return out
