"""``insightface-pwr demo``: the paper's comparison at laptop scale, with no data and no GPU, in minutes.

It generates a synthetic face-like identity set as InsightFace RecordIO (or uses ``--data DIR``), trains a teacher,
a baseline student, a control (the baseline trained further with CosFace alone) and the PWR-Exp (teacher-diff) and
RKD-DA students through the CPU host with the package's recipes and hooks, evaluates every model on a verification
``.bin`` of unseen identities (10-fold accuracy, TPR@FPR, AUC) and rank-1 identification, and prints a
Table-1-like comparison (also ``OUT/table.md``, ``OUT/table.png``, ``OUT/results.json``).
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

__all__ = ["add_arguments", "run", "run_demo"]


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


def run_demo(out: Path, size: str = "full", data: Optional[str] = None, bins: Optional[List[str]] = None,
             threads: Optional[int] = None, seed: int = 0, progress: bool = True, nproc: int = 2) -> Dict:
    """Run every step into ``out``; returns ``{"rows": [...], "meta": {...}, "paths": {...}}``."""
    import torch

    from ..host.data import steps_per_epoch
    from .pipeline import RUNS, SCALES, evaluate_run, prepare_real, prepare_synthetic, train_run, write_recipes
    from .report import format_table, write_reports

    start = time.perf_counter()
    scale = SCALES[size]
    threads = threads or 1
    torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    say = (lambda msg: print(msg, flush=True))
    if data:
        info = prepare_real(Path(data), bins or [])
        say(f"data: {info.rec} ({info.num_image} images, {info.num_classes} identities, {info.image_size}px)")
    else:
        say(f"[1/4] synthetic faces: {scale.identities} identities x {scale.per_identity} images for training; "
            f"{scale.test_identities} unseen identities for {scale.pairs} verification pairs and rank-1")
        info = prepare_synthetic(out, scale, seed, progress)
    gen_s = time.perf_counter() - start
    recipes = write_recipes(out, info, scale, threads, nproc)
    say(f"[2/4] recipes in {recipes} (the paper's recipes at demo scale; `insightface-pwr check` them)")
    epochs = {"teacher": scale.teacher_epochs, "student": scale.student_epochs}
    spe = steps_per_epoch(info.num_image, nproc, scale.batch_size // nproc)
    rows = []
    say(f"[3/4] training through the CPU host (insightface-pwr train --nproc {nproc})")
    for name, label, _network in RUNS:
        total = spe * epochs.get(name, scale.distill_epochs)
        rows.append({"run": name, "label": label,
                     "train_s": train_run(recipes / f"{name}.py", total, f"{name:>10}", progress, nproc)})
    say("[4/4] evaluating on unseen identities")
    for row, (name, _label, network) in zip(rows, RUNS):
        row.update(evaluate_run(out / "runs" / name, network, info, progress))
    total_s = time.perf_counter() - start
    meta = {"title": f"insightface-pwr demo ({'synthetic faces' if not data else Path(data).name}, {size})",
            "size": size, "scale": scale.__dict__, "data": info.__dict__, "seed": seed, "threads": threads,
            "nproc": nproc, "generate_s": gen_s, "total_s": total_s, "python": platform.python_version(),
            "torch": torch.__version__, "cpu_count": os.cpu_count()}
    paths = write_reports(out, rows, meta)
    say("\n" + format_table(rows))
    say(f"\naccuracy: 10-fold, flip-summed embeddings, {Path(info.bins[0]).name}; rank-1: each image of the unseen "
        f"identities against all others. Wall time {total_s:.0f} s ({nproc} process(es) x {threads} "
        f"thread(s)).")
    return {"rows": rows, "meta": meta, "paths": paths}


def run(args: argparse.Namespace) -> int:
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


if __name__ == "__main__":  # pragma: no cover
    parser = argparse.ArgumentParser(prog="python -m insightface_pwr.demo.cli")
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
