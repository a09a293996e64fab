"""The demo's steps (``insightface-pwr demo``, :mod:`insightface_pwr.cli.demo`): the paper's comparison at laptop scale, with no data and no GPU, in minutes.

It generates a synthetic face-like identity set as InsightFace RecordIO (or uses ``--data DIR``), trains a teacher,
a baseline student, a control (the baseline trained further with CosFace alone) and the PWR-Exp (teacher-diff) and
RKD-DA students through the CPU host with the package's recipes and hooks, evaluates every model on a verification
``.bin`` of unseen identities (10-fold accuracy, TPR@FPR, AUC) and rank-1 identification, and prints a
Table-1-like comparison (also ``OUT/table.md``, ``OUT/table.png``, ``OUT/results.json``).
"""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Dict, List, Optional

__all__ = ["run_demo"]


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
    if scale.max_steps_per_epoch:
        spe = min(spe, scale.max_steps_per_epoch)
    rows = []
    say(f"[3/4] training through the CPU host (insightface-pwr train --nproc {nproc})")
    for name, label, _network in RUNS:
        total = spe * epochs.get(name, scale.distill_epochs)
        rows.append({"run": name, "label": label,
                     "train_s": train_run(recipes / f"{name}.py", total, f"{name:>10}", progress, nproc)})
    say("[4/4] evaluating on unseen identities")
    for row, (name, _label, network) in zip(rows, RUNS):
        row.update(evaluate_run(out / "runs" / name, network, info, progress,
                                scale.eval_pairs if data else None))
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
