"""The demo's Table-1-like comparison: a text table, ``results.json``, ``table.md`` and a bar chart PNG.

A row is ``{"run", "label", "train_s", "verification": [VerificationResult.as_dict(), ...], "rank1"}``;
accuracies are fractions in [0, 1] and are shown in percent.
"""
from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..infra.atomic import atomic_write_bytes

__all__ = ["table_rows", "format_table", "write_reports", "plot_png"]

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


def plot_png(rows: Sequence[Dict], title: str) -> bytes:
    """A bar chart (verification accuracy and rank-1 per model) as PNG bytes, drawn with Pillow."""
    from PIL import Image, ImageDraw, ImageFont
    metrics = [("accuracy", lambda r: r["verification"][0]["accuracy_flip"] if r.get("verification") else None,
                (66, 114, 196)),
               ("rank-1", lambda r: r.get("rank1"), (237, 125, 49))]
    values = [[m(r) for _, m, _ in metrics] for r in rows]
    present = [v for vs in values for v in vs if v is not None]
    lo = max(0.0, math.floor((min(present, default=0.0) - 0.05) * 20) / 20)
    w, h, left, bottom, top = 120 + 150 * len(rows), 420, 60, 110, 50
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    d.text((left, 15), title, fill="black", font=font)
    y = lambda v: top + (1 - (v - lo) / (1 - lo)) * (h - top - bottom)  # noqa: E731
    for k in range(6):  # grid
        v = lo + k * (1 - lo) / 5
        d.line([(left, y(v)), (w - 20, y(v))], fill=(220, 220, 220))
        d.text((5, y(v) - 6), f"{100 * v:.1f}%", fill="black", font=font)
    for i, (r, vs) in enumerate(zip(rows, values)):
        x0 = left + 20 + 150 * i
        for j, (v, (_, _, color)) in enumerate(zip(vs, metrics)):
            if v is not None:
                d.rectangle([x0 + 50 * j, y(v), x0 + 50 * j + 44, y(lo)], fill=color)
                d.text((x0 + 50 * j, y(v) - 14), f"{100 * v:.1f}", fill="black", font=font)
        for k, part in enumerate(_wrap(r["label"], 22)):
            d.text((x0, h - bottom + 8 + 13 * k), part, fill="black", font=font)
    for j, (name, _, color) in enumerate(metrics):
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
