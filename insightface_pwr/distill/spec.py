"""A recipe's ``distill`` section once validated: the typed objects that building the hooks, ``insightface-pwr
check`` and the formula printer read (:func:`insightface_pwr.distill.recipe.validate_distill` makes them)."""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Tuple

from easydict import EasyDict as edict

__all__ = ["TeacherSpec", "HeadTermSpec", "DistillSpec"]


@dataclasses.dataclass
class TeacherSpec:
    """``config.distill.teacher``, validated (every default filled in)."""

    weights: str
    network: Optional[str] = None
    embedding_size: Optional[int] = None
    classifier: Any = None
    format: str = "auto"
    fp16: bool = False
    input_size: Tuple[int, int] = (112, 112)
    cache: Optional[str] = None

    def as_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def __getitem__(self, key: str) -> Any:  # mapping-style reads (teachers, the cache) see the same values
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)


@dataclasses.dataclass
class HeadTermSpec:
    """One ``config.distill.heads[i]``: the head's name, its weight, the parameters the recipe gave (``params``),
    all of them with the head's defaults merged in by the registry (``full_params``), and how it is distributed
    over ranks (``gather``: "local" or "global", see :mod:`insightface_pwr.distill.gather`)."""

    name: str
    weight: float
    params: edict
    full_params: Dict[str, Any]
    gather: str = "local"


@dataclasses.dataclass
class DistillSpec:
    """``config.distill``, validated once (by :func:`validate_distill`, which :func:`load_recipe` calls) into the
    object that building the hooks, ``insightface-pwr check`` and the formula printer read."""

    teacher: TeacherSpec
    heads: List[HeadTermSpec]
    student_init: Optional[str] = None
    classification_weight: float = 1.0
    inherit_classifier: bool = False
    lr_schedule: Optional[edict] = None
    method: Optional[str] = None  # "proxylesskd" (then inherit_classifier is True too) or None

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)

    def is_whole(self) -> bool:
        """Whether every part is still the validated object (code may assign a raw section to a field)."""
        return isinstance(self.teacher, TeacherSpec) and all(isinstance(h, HeadTermSpec) for h in self.heads)

    def to_section(self) -> edict:
        """The recipe section this spec stands for (raw parts kept raw), to validate again after an edit."""
        teacher = self.teacher.as_dict() if isinstance(self.teacher, TeacherSpec) else self.teacher
        heads = [edict(name=h.name, weight=h.weight, params=edict(h.params), gather=h.gather)
                 if isinstance(h, HeadTermSpec) else h for h in self.heads]
        return edict(teacher=teacher, heads=heads, student_init=self.student_init,
                     classification_weight=self.classification_weight, inherit_classifier=self.inherit_classifier,
                     lr_schedule=self.lr_schedule, method=self.method)
