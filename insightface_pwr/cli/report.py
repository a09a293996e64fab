"""``insightface-pwr report WORK_DIR... --out PREFIX``: evaluate the ``model.pt`` of trained recipe folders and write
Table 1's layout (rows = recipes, columns = benchmarks, the paper's figures beside) as PREFIX.md, PREFIX.json and
PREFIX.png (ROC curves; needs matplotlib) (:mod:`insightface_pwr.eval.report`).

A WORK_DIR is one of:
- a training output folder with ``model.pt``; its network comes from ``--network`` or from the recipe
  ``<WORK_DIR>/recipe.py`` or ``<--recipes>/<recipe>.py`` (``config.network``, ``config.embedding_size``);
- a demo output folder (``insightface-pwr demo --out DIR``): every ``runs/<name>/model.pt`` with the demo's
  networks, evaluated on the demo's verification set unless ``--bin`` is given.
Seeds: folders named ``<recipe>_seed<k>`` are one row (mean ± std over the seeds).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List

from ..infra.errors import UserError
from .eval import add_model_arguments, make_store, timing_line

__all__ = ["add_arguments", "run", "ReportError"]


class ReportError(UserError, ValueError):
    """A WORK_DIR the report cannot use."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("work_dirs", nargs="+", metavar="WORK_DIR", help="training output or demo output folders")
    parser.add_argument("--out", required=True, help="output prefix: writes OUT.md, OUT.json, OUT.png")
    parser.add_argument("--bin", action="extend", nargs="+", dest="bins", default=None, metavar="SET",
                        help="verification sets (names under --data-dir or paths; default for a demo folder: its set)")
    parser.add_argument("--data-dir", default=None, help="folder of the named .bin sets")
    parser.add_argument("--recipes", default=None, help="folder of the recipe files (to find a run's network)")
    parser.add_argument("--folds", type=int, default=10)
    parser.add_argument("--title", default="insightface-pwr report (Table 1 layout)")
    add_model_arguments(parser)


def _runs(work_dir: Path, args: argparse.Namespace) -> List[Dict]:
    """``[{"name", "label", "model_path", "network", "embedding_size"}]`` and, for a demo folder, its sets."""
    if (work_dir / "runs").is_dir() and (work_dir / "results.json").is_file():
        from ..demo import backbones  # noqa: F401  (registers the demo's networks)
        from ..demo.pipeline import EMBEDDING_SIZE, RUNS
        meta = json.loads((work_dir / "results.json").read_text())["meta"]
        out = []
        for name, label, network in RUNS:
            if (work_dir / "runs" / name / "model.pt").is_file():
                out.append({"name": name, "label": label, "model_path": work_dir / "runs" / name / "model.pt",
                            "network": network, "embedding_size": EMBEDDING_SIZE, "bins": meta["data"]["bins"],
                            "image_size": meta["data"]["image_size"]})
        if not out:
            raise ReportError(f"{str(work_dir)!r}: a demo folder without any runs/<name>/model.pt")
        return out
    if not (work_dir / "model.pt").is_file():
        raise ReportError(f"{str(work_dir)!r}: no model.pt (expected a training output folder or a demo output "
                          f"folder with runs/ and results.json)")
    network, size = args.network, args.num_features
    if network is None:
        from ..eval.report import split_seed
        recipe = split_seed(work_dir.name)[0]
        candidates = [work_dir / "recipe.py"] + ([Path(args.recipes) / f"{recipe}.py"] if args.recipes else [])
        found = [c for c in candidates if c.is_file()]
        if not found:
            raise ReportError(f"{str(work_dir)!r}: which network? pass --network, or put the recipe at "
                              f"{str(candidates[0])!r} or under --recipes as {recipe}.py")
        from ..distill.recipe import load_recipe
        cfg = load_recipe(found[0])
        network, size = cfg.network, cfg.embedding_size
    return [{"name": work_dir.name, "label": work_dir.name, "model_path": work_dir / "model.pt", "network": network,
             "embedding_size": size}]


def run(args: argparse.Namespace) -> int:
    import torch

    from ..eval.evaluate import load_checkpoint_model, load_sets
    from ..integration.arcface_torch.upstream import model_factory
    from ..eval.report import evaluate_entry, split_seed, write_report

    if args.threads:
        torch.set_num_threads(args.threads)
    runs = [r for d in args.work_dirs for r in _runs(Path(d), args)]  # every folder checked before evaluating
    bins = args.bins or sorted({b for r in runs for b in r.get("bins", [])})
    if not bins:
        raise ReportError("no verification sets: pass --bin (names under --data-dir, or paths)")
    sets = load_sets(bins, args.data_dir)
    names = [s.name for s in sets]
    entries = []
    for r in runs:
        if "image_size" in r:
            args.image_size = r["image_size"]
        model = load_checkpoint_model(Path(r["model_path"]), r["network"], model_factory(), r["embedding_size"])
        store = make_store(model, args)
        metrics, roc = evaluate_entry(store, sets, args.folds)
        print(timing_line(r["name"], model, store), file=sys.stderr)
        entries.append({"name": r["name"], "label": r["label"], "network": r["network"],
                        "model": str(r["model_path"]), "seed": split_seed(r["name"])[1], "metrics": metrics,
                        "roc": roc})
    notes = [f"work dirs: {', '.join(args.work_dirs)}; sets: {', '.join(bins)}"]
    paths = write_report(Path(args.out), entries, names, args.title, notes)
    print(Path(paths["markdown"]).read_text())
    print("saved: " + ", ".join(paths.values()))
    return 0
