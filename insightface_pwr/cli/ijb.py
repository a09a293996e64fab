"""``insightface-pwr ijb``: IJB-B / IJB-C 1:1 template verification (TPR at FPR 1e-6 ... 1e-1) on the layout
upstream's eval_ijbc.py reads, with already-aligned crops (:mod:`insightface_pwr.eval.ijb`)."""
from __future__ import annotations

import argparse
import json

from .eval import add_model_arguments, per_model

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", help="IJB folder with meta/<target>_face_tid_mid.txt, "
                                     "meta/<target>_template_pair_label.txt and the aligned crops in loose_crop/")
    parser.add_argument("--target", default="IJBC", help="IJBB or IJBC (default IJBC), as upstream")
    parser.add_argument("--images", default=None, help="folder of the aligned crops (default ROOT/loose_crop)")
    parser.add_argument("--model", required=True, action="extend", nargs="+", dest="models", metavar="MODEL",
                        help="model(s), as for `insightface-pwr eval`")
    parser.add_argument("--no-faceness", action="store_true",
                        help="ignore the detector scores of meta/<target>_name_5pts_score.txt")
    parser.add_argument("--json", action="store_true", help="print a JSON list, one object per model")
    add_model_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from ..eval.ijb import IJB_FPRS, evaluate_ijb

    rows = per_model(args, lambda store: evaluate_ijb(store, args.root, args.target, args.images, use_faceness=not args.no_faceness))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    fprs = [f"{f:.0e}" for f in IJB_FPRS]
    head = ["model", "templates", "pairs", *[f"TPR@FPR={f} %" for f in fprs], "AUC"]
    cells = [[r["model"], str(r["templates"]), str(r["pairs"]),
              *[f"{100 * r['tpr_at_fpr'][f]:.2f}" if f in r["tpr_at_fpr"] else "-" for f in fprs],
              f"{r['auc']:.4f}"] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *cells)]
    for line in [head, ["-" * w for w in widths], *cells]:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip())
    return 0
