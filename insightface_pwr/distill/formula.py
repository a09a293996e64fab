"""The combined loss of a recipe as one line (``L = 0.7 * CosFace(m=0.35, s=64) + 0.3 * hkd(temperature=4.0)``):
what the training log prints once and ``insightface-pwr check`` shows, read off the validated recipe."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

from .recipe import CLASSIFIER_HEADS, UPSTREAM_DEFAULTS, validate_distill

__all__ = ["margin_name", "combined_loss_formula"]


def margin_name(margin_list: Optional[Sequence[float]]) -> str:
    m1, m2, m3 = margin_list if margin_list is not None else UPSTREAM_DEFAULTS["margin_list"]
    if m1 == 1.0 and m2 == 0.0 and m3 > 0:
        return f"CosFace(m={m3:g}, s=64)"
    if m1 == 1.0 and m3 == 0.0:
        return f"ArcFace(m={m2:g}, s=64)"
    return f"CombinedMargin(m1={m1:g}, m2={m2:g}, m3={m3:g}, s=64)"


def combined_loss_formula(cfg: Dict[str, Any]) -> str:
    """The combined loss of a recipe as one line, e.g. ``L = 100 * pwr(inversion=exp, margin=teacher_diff)``."""
    d = validate_distill(cfg["distill"])  # already a DistillSpec after load_recipe: not validated again
    terms: List[Tuple[float, str]] = []
    if d.classification_weight != 0:
        over = " over the teacher's frozen classifier (ProxylessKD)" if d.method == "proxylesskd" else ""
        terms.append((d.classification_weight, margin_name(cfg.get("margin_list")) + over))
    for h in d.heads:
        params = ", ".join(f"{k}={v}" for k, v in h.params.items())
        where = ", over the global batch" if h.gather == "global" else ""
        if h.name in CLASSIFIER_HEADS:
            where = ", centres in partial FC's shards, global batch"
        terms.append((h.weight, f"{h.name}({params}{where})"))
    return "L = " + " + ".join(f"{w:g} * {name}" for w, name in terms)
