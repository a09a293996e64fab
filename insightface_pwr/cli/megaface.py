"""``insightface-pwr megaface``: MegaFace-style identification (rank-1, rank-10 against D distractors) and
verification (TPR at FPR 1e-6 ...) on a probe/distractor layout of aligned faces
(:mod:`insightface_pwr.eval.megaface`)."""
from __future__ import annotations

import argparse
import json

from .eval import add_model_arguments, per_model

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", help="folder with probe/ (<identity>/<image> or RecordIO) and distractors/ (images "
                                     "or RecordIO)")
    parser.add_argument("--model", required=True, action="extend", nargs="+", dest="models", metavar="MODEL",
                        help="model(s), as for `insightface-pwr eval`")
    parser.add_argument("--rank", type=int, nargs="+", default=[1, 10], help="ranks k (default 1 10)")
    parser.add_argument("--fpr", type=float, nargs="+", default=[1e-6, 1e-5, 1e-4],
                        help="verification FPRs (default 1e-6 1e-5 1e-4; those below 1/negatives are left out)")
    parser.add_argument("--max-distractors", type=int, default=None, help="use only the first D distractors")
    parser.add_argument("--json", action="store_true", help="print a JSON list, one object per model")
    add_model_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from ..eval.megaface import evaluate_megaface

    rows = per_model(args, lambda store: evaluate_megaface(store, args.root, args.rank, args.fpr, args.max_distractors))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    fprs = sorted({f for r in rows for f in r["tpr_at_fpr"]}, key=float)
    head = ["model", "probes", "distractors", *[f"rank-{k} %" for k in args.rank], *[f"TPR@FPR={f} %" for f in fprs]]
    cells = [[r["model"], str(r["probes"]), str(r["distractors"]),
              *[f"{100 * r['rank'][str(k)]:.2f}" for k in args.rank],
              *[f"{100 * r['tpr_at_fpr'][f]:.2f}" if f in r["tpr_at_fpr"] else "-" for f in fprs]] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *cells)]
    for line in [head, ["-" * w for w in widths], *cells]:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip())
    return 0
