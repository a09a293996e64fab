"""The Table-1 report: trained models x benchmarks, with the PWR paper's figures beside the rows they replicate.

Rows are recipes; a recipe trained with several seeds (work folders named ``<recipe>_seed<k>``, e.g.
``pwr_exp_seed0``, ``pwr_exp_seed1``) is one row with the mean and the spread (population std, and min..max) of
each metric over its seeds. A recipe's paper row comes from :data:`RECIPE_ROWS` (the recipes in ``recipes/``
and the demo's runs). Cells are 10-fold accuracies of flip-summed embeddings, in percent. The ROC curves of every
model (first seed of each row) on each set go into one PNG.
"""
from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..data.verification_bin import VerificationBin
from ..infra.atomic import atomic_write_bytes, atomic_write_text
from .embedding_store import EmbeddingStore
from .verification_metrics import evaluate_verification, flip_sum, pair_distances

__all__ = ["PAPER_COLUMNS", "PAPER_TABLE", "RECIPE_ROWS", "split_seed", "evaluate_entry", "aggregate",
           "format_markdown", "write_report", "roc_png"]

# The PWR paper's Table 1 (Nikitin, Konushin, Konushin, GraphiCon 2020, CEUR-WS Vol-2744 paper 30): fractions.
PAPER_COLUMNS = ("LFW", "CPLFW", "AgeDB-30", "MegaFace Ver", "MegaFace Id(1)", "MegaFace Id(10)")
PAPER_TABLE: Dict[str, Tuple[float, ...]] = {
    "Teacher, CosFace": (0.9962, 0.9205, 0.9775, 0.9745, 0.9698, 0.9821),
    "Student, CosFace": (0.9943, 0.8928, 0.9665, 0.9497, 0.9380, 0.9663),
    "CosFace + RKD-D": (0.9947, 0.8895, 0.9633, 0.9430, 0.9281, 0.9632),
    "CosFace + RKD-A": (0.9945, 0.8867, 0.9652, 0.9417, 0.9287, 0.9619),
    "CosFace + RKD-DA": (0.9940, 0.8870, 0.9670, 0.9421, 0.9280, 0.9629),
    "CosFace + DarkRank": (0.9947, 0.8738, 0.9672, 0.9421, 0.9321, 0.9631),
    "CosFace + HKD": (0.9953, 0.8810, 0.9635, 0.9366, 0.9239, 0.9604),
    "CosFace + HKD + RKD-D": (0.9953, 0.8868, 0.9675, 0.9486, 0.9352, 0.9648),
    "CosFace + HKD + RKD-A": (0.9955, 0.8920, 0.9715, 0.9526, 0.9415, 0.9676),
    "CosFace + HKD + RKD-DA": (0.9958, 0.8928, 0.9688, 0.9528, 0.9404, 0.9680),
    "CosFace + HKD + DarkRank": (0.9953, 0.8737, 0.9690, 0.9400, 0.9294, 0.9618),
    "PWR-Diff (0.1)": (0.9948, 0.8865, 0.9715, 0.9502, 0.9393, 0.9675),
    "PWR-Diff (teacher-std)": (0.9945, 0.8885, 0.9727, 0.9540, 0.9433, 0.9695),
    "PWR-Diff (teacher-diff)": (0.9958, 0.8898, 0.9742, 0.9533, 0.9433, 0.9690),
    "PWR-Exp (0.1)": (0.9955, 0.8907, 0.9710, 0.9497, 0.9400, 0.9681),
    "PWR-Exp (teacher-std)": (0.9958, 0.8807, 0.9710, 0.9554, 0.9439, 0.9693),
    "PWR-Exp (teacher-diff)": (0.9963, 0.8942, 0.9728, 0.9538, 0.9433, 0.9695),
    "PWR-RankNet": (0.9953, 0.8870, 0.9715, 0.9508, 0.9402, 0.9674),
}
# recipe file stem (recipes/<stem>.py) or demo run name -> the paper's row it replicates
RECIPE_ROWS = {
    "teacher_r50": "Teacher, CosFace", "student_r18": "Student, CosFace", "rkd_d": "CosFace + RKD-D",
    "rkd_a": "CosFace + RKD-A", "rkd_da": "CosFace + RKD-DA", "darkrank": "CosFace + DarkRank",
    "hkd": "CosFace + HKD", "hkd_rkd_d": "CosFace + HKD + RKD-D", "hkd_rkd_a": "CosFace + HKD + RKD-A",
    "hkd_rkd_da": "CosFace + HKD + RKD-DA", "hkd_darkrank": "CosFace + HKD + DarkRank",
    "pwr_diff_m01": "PWR-Diff (0.1)", "pwr_diff_std": "PWR-Diff (teacher-std)", "pwr_diff": "PWR-Diff (teacher-diff)",
    "pwr_exp_m01": "PWR-Exp (0.1)", "pwr_exp_std": "PWR-Exp (teacher-std)", "pwr_exp": "PWR-Exp (teacher-diff)",
    "pwr_ranknet": "PWR-RankNet",
    # the demo's runs (insightface_pwr.demo.pipeline.RUNS): same methods at demo scale
    "teacher": "Teacher, CosFace", "student": "Student, CosFace",
}
# our set names -> the paper's column
SET_COLUMNS = {"lfw": "LFW", "cplfw": "CPLFW", "agedb_30": "AgeDB-30"}
_SEED = re.compile(r"^(?P<recipe>.+?)[_-]seed(?P<seed>\d+)$")


def split_seed(name: str) -> Tuple[str, Optional[int]]:
    """``("pwr_exp", 2)`` for ``pwr_exp_seed2`` (or ``pwr_exp-seed2``); ``(name, None)`` without a seed."""
    m = _SEED.match(name)
    return (m["recipe"], int(m["seed"])) if m else (name, None)


def evaluate_entry(store: EmbeddingStore, sets: Sequence[VerificationBin], folds: int = 10
                   ) -> Tuple[Dict[str, Dict], Dict[str, Tuple[List[float], List[float]]]]:
    """``(metrics per set, ROC per set as (fpr, tpr) lists)`` of one model."""
    metrics, rocs = {}, {}
    for vbin in sets:
        plain, flipped = store.embed(vbin.images, vbin.path, vbin.name)
        metrics[vbin.name] = evaluate_verification(vbin.name, plain, vbin.issame, flipped=flipped,
                                                   folds=folds).as_dict()
        dist = pair_distances(flip_sum(plain, flipped), vbin.issame)
        same = np.asarray(vbin.issame, bool)
        if same.any() and not same.all():
            order = np.argsort(dist, kind="stable")
            tpr = np.r_[0, np.cumsum(same[order])] / same.sum()
            fpr = np.r_[0, np.cumsum(~same[order])] / (~same).sum()
            keep = np.unique(np.linspace(0, len(fpr) - 1, min(len(fpr), 400)).astype(int))
            rocs[vbin.name] = (fpr[keep].tolist(), tpr[keep].tolist())
    return metrics, rocs


def aggregate(entries: Sequence[Dict], sets: Sequence[str]) -> List[Dict]:
    """Rows (one per recipe, in first-seen order) from entries ``{"name", "metrics", ...}``: per set the mean,
    std, min and max of ``accuracy_flip`` over the recipe's seeds, the seeds, and the paper's row if any."""
    groups: Dict[str, List[Dict]] = {}
    for e in entries:
        groups.setdefault(split_seed(e["name"])[0], []).append(e)
    rows = []
    for recipe, members in groups.items():
        cells = {}
        for s in sets:
            vals = [m["metrics"][s]["accuracy_flip"] for m in members if s in m["metrics"]]
            if vals:
                # sample standard deviation (ddof 1) over the seeds, as the benchmarks report it; 0 for one seed
                cells[s] = {"mean": float(np.mean(vals)), "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
                            "min": float(min(vals)),
                            "max": float(max(vals)), "n": len(vals)}
        paper = RECIPE_ROWS.get(recipe)
        label = members[0].get("label", recipe)
        if len(members) > 1 and label == members[0]["name"]:  # a work folder's name: the recipe, not its seed 0
            label = recipe
        rows.append({"recipe": recipe, "label": label, "paper_row": paper,
                     "paper": dict(zip(PAPER_COLUMNS, PAPER_TABLE[paper])) if paper else None,
                     "seeds": [split_seed(m["name"])[1] for m in members], "runs": [m["name"] for m in members],
                     "cells": cells})
    return rows


def _cell(c: Optional[Dict]) -> str:
    if not c:
        return "-"
    if c["n"] == 1:
        return f"{100 * c['mean']:.2f}"
    return f"{100 * c['mean']:.2f} ± {100 * c['std']:.2f} (n={c['n']})"


def format_markdown(rows: Sequence[Dict], sets: Sequence[str], title: str, notes: Sequence[str] = ()) -> str:
    """Table 1's layout: rows = recipes, our benchmark columns, then the paper's figures for the row."""
    head = ["recipe", *sets, "paper row", *[f"paper {c}" for c in PAPER_COLUMNS]]
    lines = [f"# {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        paper = [f"{100 * r['paper'][c]:.2f}" if r["paper"] else "-" for c in PAPER_COLUMNS]
        lines.append("| " + " | ".join([r["label"], *[_cell(r["cells"].get(s)) for s in sets],
                                        r["paper_row"] or "-", *paper]) + " |")
    lines += ["", "Cells: 10-fold verification accuracy (%) of flip-summed embeddings; with several seeds "
                  "mean ± sample std over the seeds (n = seeds). Paper: Nikitin et al., GraphiCon 2020, Table 1 "
                  "(ResNet50 teacher, ResNet18 student, MS1M)."]
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def roc_png(curves: Dict[str, Dict[str, Tuple[List[float], List[float]]]], sets: Sequence[str]) -> bytes:
    """One figure with a panel per set and a ROC curve per model (log FPR from 1e-4 to 1): drawn with Pillow (a
    dependency of the package), so every report has its plot."""
    from PIL import Image, ImageDraw, ImageFont
    colors = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
              (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
    pw, ph, left, top, bottom = 420, 320, 55, 30, 45
    legend = 14 * len(curves) + 10
    img = Image.new("RGB", (pw * max(len(sets), 1), ph + legend), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    lo = -4.0  # log10 of the smallest FPR shown
    for k, name in enumerate(sets):
        x0 = k * pw
        px = lambda f: x0 + left + (max(np.log10(max(f, 1e-12)), lo) - lo) / -lo * (pw - left - 15)  # noqa: E731
        py = lambda t: top + (1 - t) * (ph - top - bottom)  # noqa: E731
        d.text((x0 + left, 8), name, fill="black", font=font)
        for e in range(int(lo), 1):  # grid and axis labels
            d.line([(px(10.0 ** e), top), (px(10.0 ** e), py(0))], fill=(225, 225, 225))
            d.text((px(10.0 ** e) - 12, py(0) + 4), f"1e{e}", fill="black", font=font)
        for t in (0.0, 0.25, 0.5, 0.75, 1.0):
            d.line([(px(10.0 ** lo), py(t)), (px(1.0), py(t))], fill=(225, 225, 225))
            d.text((x0 + 8, py(t) - 6), f"{t:.2f}", fill="black", font=font)
        d.text((x0 + left + 80, ph - 18), "false positive rate (log)", fill="black", font=font)
        for j, per_set in enumerate(curves.values()):
            if name in per_set:
                fpr, tpr = per_set[name]
                points = [(px(f), py(t)) for f, t in zip(fpr, tpr) if f >= 10.0 ** lo]
                if len(points) > 1:
                    d.line(points, fill=colors[j % len(colors)], width=2)
    for j, label in enumerate(curves):
        y = ph + 5 + 14 * j
        d.rectangle([10, y + 2, 22, y + 10], fill=colors[j % len(colors)])
        d.text((28, y), label, fill="black", font=font)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_report(out: Path, entries: Sequence[Dict], sets: Sequence[str], title: str,
                 notes: Sequence[str] = ()) -> Dict[str, str]:
    """``OUT.md``, ``OUT.json`` and ``OUT.png`` (ROC curves), each written atomically."""
    rows = aggregate(entries, sets)
    curves = {}
    for e in entries:
        label = e.get("label", e["name"]) + ("" if split_seed(e["name"])[1] is None else f" ({e['name']})")
        curves[label] = e.get("roc", {})
    png = roc_png(curves, sets)
    paths = {"markdown": str(out.with_suffix(".md")), "json": str(out.with_suffix(".json"))}
    atomic_write_text(paths["markdown"], format_markdown(rows, sets, title, notes))
    atomic_write_text(paths["json"], json.dumps({"title": title, "sets": list(sets), "rows": rows,
                                                 "runs": [{k: v for k, v in e.items() if k != "roc"} for e in entries],
                                                 "notes": list(notes)}, indent=2, default=_json_default))
    paths["png"] = str(out.with_suffix(".png"))
    atomic_write_bytes(paths["png"], png)
    return paths


def _json_default(x):
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    raise TypeError(type(x).__name__)
