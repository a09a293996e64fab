"""``insightface-pwr eval``: verification accuracy of an embedding model on InsightFace ``.bin`` files
(:mod:`insightface_pwr.eval`)."""
from __future__ import annotations

import argparse
import json
import sys
import time

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="ONNX file, TorchScript file, or arcface_torch checkpoint "
                                                        "(with --network)")
    parser.add_argument("--bin", required=True, action="append", dest="bins", metavar="PATH",
                        help="an InsightFace verification .bin (repeat for several)")
    parser.add_argument("--input-mean", type=float, default=127.5, help="input = (pixel - mean) / std (default 127.5)")
    parser.add_argument("--input-std", type=float, default=127.5, help="(default 127.5, arcface_torch's)")
    parser.add_argument("--network", default=None, help="arcface_torch backbone name for a checkpoint (e.g. r50, mbf)")
    parser.add_argument("--num-features", type=int, default=512, help="embedding size of --network (default 512)")
    parser.add_argument("--arcface-root", default=None, help="arcface_torch directory (for --network)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--folds", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--limit-pairs", type=int, default=None, help="use only the first N pairs of each .bin")
    parser.add_argument("--device", default="cpu", help="torch device for TorchScript/checkpoints (default cpu)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's setting)")
    parser.add_argument("--json", action="store_true", help="print a JSON list, one object per .bin")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..eval.embedding_models import load_embedding_model
    from ..eval.evaluate import evaluate_bin, format_table, load_checkpoint_model

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.network:
        model = load_checkpoint_model(args.model, args.network, args.num_features, args.arcface_root,
                                      args.input_mean, args.input_std, args.device)
    else:
        model = load_embedding_model(args.model, args.input_mean, args.input_std, args.device)
    results = []
    for path in args.bins:
        start = time.perf_counter()
        results.append(evaluate_bin(model, path, args.batch_size, args.folds, args.image_size, args.limit_pairs,
                                    progress=not args.no_progress))
        print(f"{path}: {results[-1].pairs} pairs in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    if args.json:
        print(json.dumps([r.as_dict() for r in results], indent=2))
    else:
        print(format_table(results))
    return 0
