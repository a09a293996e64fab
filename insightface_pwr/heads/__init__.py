"""The distillation heads. Importing this package registers every built-in head."""
from . import pwr  # noqa: F401

__all__ = ["pwr"]
