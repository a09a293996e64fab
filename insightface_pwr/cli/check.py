"""``insightface-pwr check RECIPE``: load and validate a recipe without a GPU, data or teacher files.

It runs the recipe through the same :func:`~insightface_pwr.distill.recipe.load_recipe` that training uses (so the same
structural checks: unknown keys, wrong types, head parameters, a classifier for HKD), then prints the effective
configuration (arcface_torch's defaults + the recipe, every head parameter filled in) and the combined loss as a
formula. Paths (rec, teacher weights, student_init) are NOT opened: a recipe for a cluster checks on a laptop.
With ``--gpus N`` it also prints the global batch and the step counts that arcface_torch derives from them.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Dict, List

from ..infra.errors import UserError
from ..distill.formula import combined_loss_formula, margin_name
from ..distill.recipe import RecipeError, load_recipe

__all__ = ["add_arguments", "run", "effective_lines", "loss_formula"]

_SKIP = ("wandb_key",)  # never echo credentials, even the placeholder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="recipe file (arcface_torch-style config with an optional distill section)")
    parser.add_argument("--gpus", type=int, default=None,
                        help="also print the global batch and steps for N training processes (e.g. 6)")


def _flatten(prefix: str, value: Any, out: List[str]) -> None:
    if isinstance(value, dict) and value:
        for k in sorted(value):
            _flatten(f"{prefix}.{k}", value[k], out)
    elif isinstance(value, (list, tuple)) and value and all(isinstance(v, dict) for v in value):
        for i, v in enumerate(value):
            _flatten(f"{prefix}[{i}]", v, out)
    else:
        out.append(f"{prefix} = {value!r}")


def effective_lines(cfg: Dict[str, Any]) -> List[str]:
    """``config.key = value`` lines of a loaded recipe, sorted, nested sections flattened, head params complete."""
    shown = dict(cfg)
    for k in _SKIP:
        shown.pop(k, None)
    d = shown.get("distill")
    if d is not None:  # the validated DistillSpec: head parameters complete (the registry merged the defaults)
        distill = {"teacher": d.teacher.as_dict(), "student_init": d.student_init,
                   "classification_weight": d.classification_weight, "inherit_classifier": d.inherit_classifier,
                   "heads": [{"name": h.name, "weight": h.weight, "params": h.full_params, "gather": h.gather}
                             for h in d.heads]}
        if d.lr_schedule is not None:  # only the key of the schedule in force is shown (the alias, here)
            distill["lr_schedule"] = d.lr_schedule
            shown.pop("lr_schedule", None)
        shown["distill"] = distill
    out: List[str] = []
    for k in sorted(shown):
        _flatten(f"config.{k}", shown[k], out)
    return out


def loss_formula(cfg: Dict[str, Any]) -> str:
    """The combined loss; a recipe without ``distill`` trains with the margin softmax alone."""
    if cfg.get("distill") is None:
        return f"L = 1 * {margin_name(cfg.get('margin_list'))}"
    return combined_loss_formula(cfg)


def run(args: argparse.Namespace) -> int:
    if args.gpus is not None and args.gpus < 1:
        raise UserError(f"--gpus must be >= 1, got {args.gpus}")
    try:
        cfg = load_recipe(args.recipe)
    except RecipeError as e:
        msg = str(e)
        if args.recipe not in msg:
            msg = f"{args.recipe}: {msg}"
        print(f"error: {msg}", file=sys.stderr)
        return 1
    from ..distill.recipe import recipe_defaults
    print(f"# {args.recipe}: valid (arcface_torch defaults + the recipe; files are not opened)")
    print(f"# defaults: {recipe_defaults()[1]}")
    print("\n".join(effective_lines(cfg)))
    if args.gpus is not None:
        total = cfg.batch_size * args.gpus
        steps = cfg.num_image // total
        print(f"# {args.gpus} processes: global batch {cfg.batch_size} x {args.gpus} = {total}; "
              f"{cfg.num_image} // {total} = {steps} steps per epoch; x {cfg.num_epoch} epochs = "
              f"{steps * cfg.num_epoch} steps")
    print(loss_formula(cfg))
    return 0
