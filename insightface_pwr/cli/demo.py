"""``insightface-pwr demo``: the paper's comparison at laptop scale, with no data and no GPU, in minutes
(:func:`insightface_pwr.demo.run.run_demo` does the work)."""
from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=None, help="keep everything (data, recipes, models) in this folder "
                                                    "(default: a temporary folder, removed at the end)")
    parser.add_argument("--report-dir", default="insightface_pwr_demo",
                        help="without --out, where the table (.md, .png) and results.json are saved "
                             "(default ./insightface_pwr_demo)")
    parser.add_argument("--data", default=None, help="a real InsightFace RecordIO folder (train.rec, train.idx, "
                                                     "property) instead of the synthetic faces")
    parser.add_argument("--bin", action="append", default=[], dest="bins", metavar="PATH",
                        help="verification .bin for --data (default: the *.bin in and beside the folder)")
    parser.add_argument("--size", choices=("full", "tiny"), default="full",
                        help="full: the demo (5-8 minutes measured on 2 busy cores); tiny: a smoke run of every step "
                             "(seconds)")
    parser.add_argument("--nproc", type=int, default=2,
                        help="training processes (gloo, 1 thread each by default; default 2: a 2-core laptop)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per training process (default 1: more threads than free cores can be 10x "
                             "slower)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic population (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from ..demo.run import run_demo

    keep = args.out is not None
    out = Path(args.out) if keep else Path(tempfile.mkdtemp(prefix="insightface_pwr_demo_"))
    try:
        result = run_demo(out, args.size, args.data, args.bins, args.threads, args.seed, not args.no_progress,
                          args.nproc)
        if keep:
            print(f"saved: {', '.join(str(p) for p in result['paths'].values())}; models in {out / 'runs'}")
        else:
            report = Path(args.report_dir)
            report.mkdir(parents=True, exist_ok=True)
            for p in result["paths"].values():
                shutil.copyfile(p, report / p.name)
            print(f"saved: {', '.join(str(report / p.name) for p in result['paths'].values())} "
                  f"(--out DIR keeps the data and the models too)")
    finally:
        if not keep:
            shutil.rmtree(out, ignore_errors=True)
    return 0
