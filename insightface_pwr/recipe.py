"""What a recipe file imports: ``from insightface_pwr.recipe import load_base`` (a stable path for users' recipes).

The recipe machinery lives in :mod:`insightface_pwr.distill.recipe`; this module re-exports its public names."""
from .distill.recipe import RecipeError, load_base, load_recipe  # noqa: F401

__all__ = ["RecipeError", "load_base", "load_recipe"]
