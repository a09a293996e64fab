"""The distillation heads. Importing this package registers every built-in head."""
from . import pwr  # noqa: F401
from . import darkrank, feature, hkd, rkd_a, rkd_d, rkd_da  # noqa: F401
from . import adadistill, coupleface, ekd  # noqa: F401

__all__ = ["pwr", "rkd_d", "rkd_a", "rkd_da", "darkrank", "hkd", "feature", "ekd", "adadistill", "coupleface"]
