"""``insightface-pwr cache-teacher``: a frozen teacher's embeddings of every image of a RecordIO set, once.

    insightface-pwr cache-teacher --teacher mbf.onnx --rec data/ms1m --out work_dirs/mbf_ms1m.f16.npy

writes ``OUT`` (float16 ``.npy``, records x flips x D) and ``OUT.json`` (metadata and progress); re-running the
same command after an interruption resumes it. Train with ``config.distill.teacher.cache = OUT`` (and the same
``weights``). See :mod:`insightface_pwr.distill.teacher_cache`.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--teacher", required=True,
                        help="teacher file: ONNX, TorchScript, or an arcface_torch model.pt/checkpoint (+ --network)")
    parser.add_argument("--network", default=None,
                        help="backbone name for a state_dict teacher (arcface_torch's get_model when run inside "
                             "arcface_torch, else the CPU host's backbones)")
    parser.add_argument("--embedding-size", type=int, default=None, help="num_features of a state_dict teacher")
    parser.add_argument("--format", default="auto", choices=("auto", "state_dict", "torchscript", "onnx"),
                        help="teacher file format (default: detected)")
    parser.add_argument("--input-mean", type=float, default=None,
                        help="the teacher's input normalisation (pixel - mean) / std, as `insightface-pwr eval`: "
                             "default read from an ONNX graph (InsightFace's rule: 0/1 if the graph normalises "
                             "itself, else 127.5/127.5), 127.5 for other formats; the cached images are converted "
                             "from the training convention (127.5/127.5)")
    parser.add_argument("--input-std", type=float, default=None, help="see --input-mean")
    parser.add_argument("--rec", required=True, help="RecordIO folder with train.rec and train.idx (config.rec)")
    parser.add_argument("--out", required=True, help="cache array to write (.npy); metadata goes to OUT.json")
    parser.add_argument("--flip", choices=("both", "none"), default="both",
                        help="also cache each image's horizontal mirror (default both: the training transform "
                             "flips at random)")
    parser.add_argument("--batch-size", type=int, default=64, help="teacher batch size (default 64)")
    parser.add_argument("--chunk-batches", type=int, default=16,
                        help="batches per committed chunk (the unit of resumption; default 16)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--overwrite", action="store_true", help="start over even if OUT is another run's cache")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from ..distill.teacher_cache import build_cache, sha256_file
    from ..distill.teachers import detect_format, load_teacher

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"error: --device {args.device}: CUDA is not available", file=sys.stderr)
        return 2
    from ..eval.model_packs import resolve_model
    from ..models.runners import Renormalised, onnx_input_normalisation
    path = Path(resolve_model(args.teacher))  # a file, or an InsightFace pack (folder or name)
    fmt = detect_format(path) if args.format == "auto" else args.format
    mean, std = args.input_mean, args.input_std
    if mean is None or std is None:
        detected = onnx_input_normalisation(path)[:2] if fmt == "onnx" else (127.5, 127.5)
        mean = detected[0] if mean is None else mean
        std = detected[1] if std is None else std
    factory = None
    if fmt == "state_dict":
        from ..integration.arcface_torch.upstream import model_factory
        factory = model_factory()
    teacher = load_teacher({"weights": str(path), "format": fmt, "network": args.network,
                            "embedding_size": args.embedding_size, "fp16": False}, factory, device)
    teacher = Renormalised(teacher, mean, std)
    info = {"path": str(path), "sha256": sha256_file(path), "format": fmt, "network": args.network}
    if (mean, std) != (127.5, 127.5):
        info.update(input_mean=mean, input_std=std)
    t0 = time.monotonic()
    meta = build_cache(teacher, info, args.rec, args.out, flip=args.flip, batch_size=args.batch_size,
                       chunk_batches=args.chunk_batches, device=device, progress=not args.no_progress,
                       overwrite=args.overwrite)
    print(f"{args.out}: {meta['count']} records x {len(meta['flips'])} flip(s) x {meta['embedding_size']} "
          f"float16 ({'complete' if meta['complete'] else 'INCOMPLETE'}) in {time.monotonic() - t0:.1f} s; "
          f"train with config.distill.teacher.cache = {args.out!r}")
    return 0
