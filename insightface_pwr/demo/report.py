"""The demo's Table-1-like comparison: a text table, ``results.json``, ``table.md`` and a bar chart PNG.

A row is ``{"run", "label", "train_s", "verification": [VerificationResult.as_dict(), ...], "rank1"}``;
accuracies are fractions in [0, 1] and are shown in percent.
"""
from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Tuple, Dict, List, Optional, Sequence

from ..infra.atomic import atomic_write_bytes

__all__ = ["table_rows", "format_table", "write_reports", "plot_png", "bar_values", "CHANCE"]

HEAD = ["model", "accuracy %", "TPR@FPR=1e-2 %", "AUC", "rank-1 %", "train s"]


def _pct(x: Optional[float]) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def table_rows(rows: Sequence[Dict]) -> List[List[str]]:
    """One list of cells per row (first .bin's metrics; accuracy of flip-summed embeddings, +- fold std)."""
    out = []
    for r in rows:
        v = r["verification"][0] if r.get("verification") else {}
        acc = f"{_pct(v.get('accuracy_flip'))} +- {_pct(v.get('accuracy_flip_std'))}" if v else "-"
        out.append([r["label"], acc, _pct(v.get("tpr_at_fpr", {}).get("1e-02")),
                    "-" if not v else f"{v['auc']:.4f}", _pct(r.get("rank1")), f"{r.get('train_s', 0.0):.0f}"])
    return out


def format_table(rows: Sequence[Dict], markdown: bool = False) -> str:
    cells = table_rows(rows)
    if markdown:
        lines = ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
        return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in cells])
    widths = [max(len(x) for x in col) for col in zip(HEAD, *cells)]
    fmt = lambda cs: "  ".join(c.ljust(w) for c, w in zip(cs, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(HEAD), fmt(["-" * w for w in widths])] + [fmt(c) for c in cells])


CHANCE = 0.5  # verification accuracy of a guess (the .bin's pairs are half same, half different)


def _metric_values(r: Dict) -> List[Optional[float]]:
    acc = r["verification"][0]["accuracy_flip"] if r.get("verification") else None
    return [acc, r.get("rank1")]


def bar_values(r: Dict) -> List[Optional[Tuple[float, float]]]:
    """(value, spread) per metric (accuracy, rank-1) of a row: with ``r["seeds"]`` (the row of each seed, several),
    the mean over the seeds and their sample standard deviation; else the row's value and 0."""
    seeds = r.get("seeds") or []
    if len(seeds) < 2:
        return [None if v is None else (float(v), 0.0) for v in _metric_values(r)]
    out: List[Optional[Tuple[float, float]]] = []
    for vs in zip(*(_metric_values(s) for s in seeds)):
        vals = [float(v) for v in vs if v is not None]
        if not vals:
            out.append(None)
            continue
        mean = sum(vals) / len(vals)
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
        out.append((mean, std))
    return out


def plot_png(rows: Sequence[Dict], title: str) -> bytes:
    """A bar chart (verification accuracy and rank-1 per model) as PNG bytes, drawn with Pillow: where a row has
    several seeds (``row["seeds"]``), the bar is their mean with an error bar of +-1 standard deviation; a dashed
    line marks chance (50% verification accuracy)."""
    from PIL import Image, ImageDraw, ImageFont
    colors = [(66, 114, 196), (237, 125, 49)]
    metrics = [("accuracy", colors[0]), ("rank-1", colors[1])]
    values = [bar_values(r) for r in rows]
    present = [v[0] - v[1] for vs in values for v in vs if v is not None] + [CHANCE]
    lo = max(0.0, math.floor((min(present) - 0.05) * 20) / 20)
    w, h, left, bottom, top = 120 + 150 * len(rows), 420, 60, 110, 50
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    d.text((left, 15), title, fill="black", font=font)
    y = lambda v: top + (1 - (min(v, 1.0) - lo) / (1 - lo)) * (h - top - bottom)  # noqa: E731
    for k in range(6):  # grid
        v = lo + k * (1 - lo) / 5
        d.line([(left, y(v)), (w - 20, y(v))], fill=(220, 220, 220))
        d.text((5, y(v) - 6), f"{100 * v:.1f}%", fill="black", font=font)
    for i, (r, vs) in enumerate(zip(rows, values)):
        x0 = left + 20 + 150 * i
        for j, (v, (_, color)) in enumerate(zip(vs, metrics)):
            if v is not None:
                mean, std = v
                d.rectangle([x0 + 50 * j, y(mean), x0 + 50 * j + 44, y(lo)], fill=color)
                label = f"{100 * mean:.1f}" + (f"±{100 * std:.1f}" if std else "")
                if std:  # the seeds' spread
                    xc = x0 + 50 * j + 22
                    d.line([(xc, y(mean + std)), (xc, y(mean - std))], fill="black", width=2)
                    for e in (mean + std, mean - std):
                        d.line([(xc - 6, y(e)), (xc + 6, y(e))], fill="black", width=2)
                d.text((x0 + 50 * j, y(mean + std) - 14), label, fill="black", font=font)
        for k, part in enumerate(_wrap(r["label"], 22)):
            d.text((x0, h - bottom + 8 + 13 * k), part, fill="black", font=font)
    yc = y(CHANCE)
    for x in range(left, w - 20, 12):  # chance, dashed
        d.line([(x, yc), (min(x + 7, w - 20), yc)], fill=(200, 0, 0), width=1)
    d.text((w - 110, yc - 14), "chance (50%)", fill=(200, 0, 0), font=font)
    for j, (name, color) in enumerate(metrics):
        d.rectangle([w - 200 + 95 * j, 15, w - 190 + 95 * j, 25], fill=color)
        d.text((w - 185 + 95 * j, 13), name, fill="black", font=font)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _wrap(text: str, width: int) -> List[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + [line] if line else lines


def write_reports(out: Path, rows: Sequence[Dict], meta: Dict) -> Dict[str, Path]:
    """``results.json`` (rows + meta), ``table.md`` and ``table.png`` in ``out``, each written atomically."""
    paths = {"json": out / "results.json", "markdown": out / "table.md", "png": out / "table.png"}
    atomic_write_bytes(paths["json"], json.dumps({"meta": meta, "rows": list(rows)}, indent=1).encode())
    atomic_write_bytes(paths["markdown"], (format_table(rows, markdown=True) + "\n").encode())
    atomic_write_bytes(paths["png"], plot_png(rows, meta.get("title", "insightface-pwr demo")))
    return paths
