"""``insightface-pwr ijb``: IJB-B / IJB-C 1:1 template verification (TPR at FPR 1e-6 ... 1e-1) on the layout
upstream's eval_ijbc.py reads, and 1:N identification (``--protocol 1:N``: rank-1/5/10, TPIR at FPIR 0.01 / 0.1),
on loose crops aligned with their five landmarks (:mod:`insightface_pwr.eval.ijb`)."""
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
    parser.add_argument("--already-aligned", action="store_true",
                        help="the crops are aligned S x S faces (default: loose crops, aligned with the landmarks of "
                             "meta/<target>_name_5pts_score.txt as upstream does)")
    parser.add_argument("--no-faceness", action="store_true",
                        help="ignore the detector scores of meta/<target>_name_5pts_score.txt")
    parser.add_argument("--protocol", choices=("1:1", "1:N"), default="1:1",
                        help="1:1 template verification (default) or 1:N identification (gallery "
                             "meta/<target>_1N_gallery_G1/G2.csv, IJB-B S1/S2; probes meta/<target>_1N_probe_mixed.csv)")
    parser.add_argument("--json", action="store_true", help="print a JSON list, one object per model")
    add_model_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from ..eval.ijb import IJB_FPIRS, IJB_FPRS, IJB_RANKS, evaluate_ijb, evaluate_ijb_1n

    faceness = not args.no_faceness
    if args.protocol == "1:N":
        rows = per_model(args, lambda store: evaluate_ijb_1n(store, args.root, args.target, args.images, faceness,
                                                               not args.already_aligned))
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        fpirs = [f"{f:g}" for f in IJB_FPIRS]
        head = ["model", "gallery", "probes", *[f"rank-{k} %" for k in IJB_RANKS],
                *[f"TPIR@FPIR={f} %" for f in fpirs]]
        cells = [[r["model"], str(r["gallery_templates"]), str(r["probe_templates"]),
                  *[f"{100 * r['rank'][str(k)]:.2f}" for k in IJB_RANKS],
                  *[f"{100 * r['tpir_at_fpir'][f]:.2f}" if f in r["tpir_at_fpir"] else "-" for f in fpirs]]
                 for r in rows]
        _print_table(head, cells)
        return 0
    rows = per_model(args, lambda store: evaluate_ijb(store, args.root, args.target, args.images, use_faceness=faceness,
                                                            align=not args.already_aligned))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    fprs = [f"{f:.0e}" for f in IJB_FPRS]
    head = ["model", "templates", "pairs", *[f"TPR@FPR={f} %" for f in fprs], "AUC"]
    cells = [[r["model"], str(r["templates"]), str(r["pairs"]),
              *[f"{100 * r['tpr_at_fpr'][f]:.2f}" if f in r["tpr_at_fpr"] else "-" for f in fprs],
              f"{r['auc']:.4f}"] for r in rows]
    _print_table(head, cells)
    return 0


def _print_table(head: list, cells: list) -> None:
    widths = [max(len(x) for x in col) for col in zip(head, *cells)]
    for line in [head, ["-" * w for w in widths], *cells]:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip())
