"""``insightface-pwr eval``: verification accuracy of an embedding model on InsightFace ``.bin`` files
(:mod:`insightface_pwr.eval`)."""
from __future__ import annotations

import argparse
import json
import os
import sys

KNOWN_SETS = ("lfw", "cfp_fp", "cfp_ff", "agedb_30", "calfw", "cplfw", "vgg2_fp")  # = eval.evaluate.KNOWN_SETS

__all__ = ["add_arguments", "run", "add_model_arguments", "load_model", "make_store"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, action="extend", nargs="+", dest="models", metavar="MODEL",
                        help="ONNX file, TorchScript file, InsightFace pack (name under $INSIGHTFACE_HOME/models or "
                             "folder), or arcface_torch checkpoint (with --network); several give a models x sets "
                             "table")
    parser.add_argument("--bin", required=True, action="extend", nargs="+", dest="bins", metavar="SET",
                        help="verification sets: a .bin path, or a name (" + ", ".join(KNOWN_SETS) + ", ...) meaning "
                             "DATA_DIR/NAME.bin; all are checked before the first is evaluated")
    parser.add_argument("--data-dir", default=None, help="folder of the named .bin sets (e.g. the training rec folder)")
    add_model_arguments(parser)
    parser.add_argument("--folds", type=int, default=10)
    parser.add_argument("--limit-pairs", type=int, default=None, help="use only the first N pairs of each .bin")
    parser.add_argument("--json", action="store_true", help="print a JSON list, one object per model and set")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of how a model is loaded and run (shared by eval, megaface, ijb and report)."""
    parser.add_argument("--input-mean", type=float, default=None,
                        help="input = (pixel - mean) / std; default: read from an ONNX graph (InsightFace's rule: "
                             "0/1 if the graph normalises itself, else 127.5/127.5), 127.5 for other formats")
    parser.add_argument("--input-std", type=float, default=None, help="see --input-mean")
    parser.add_argument("--network", default=None, help="arcface_torch backbone name for a checkpoint (e.g. r50, mbf)")
    parser.add_argument("--num-features", type=int, default=512, help="embedding size of --network (default 512)")
    parser.add_argument("--arcface-root", default=None, help="arcface_torch directory (for --network)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per model call (x2 with their mirrors)")
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--resize", action="store_true",
                        help="resize the faces to --image-size (PIL bilinear, antialiased) instead of refusing "
                             "another size: for students trained at a lower resolution")
    parser.add_argument("--device", default="cpu", help="torch device (cuda[:N] also selects onnxruntime's CUDA "
                                                        "provider; default cpu)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads of the model (default: torch's)")
    parser.add_argument("--decode-threads", type=int, default=None,
                        help="threads decoding the next batches while the model runs (default: cores/2, 1..4)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def load_model(spec: str, args: argparse.Namespace):
    """The embedding model of one ``--model`` value."""
    from ..eval.embedding_models import load_embedding_model
    from ..eval.evaluate import load_checkpoint_model
    if args.network:
        mean = 127.5 if args.input_mean is None else args.input_mean
        std = 127.5 if args.input_std is None else args.input_std
        from ..integration.arcface_torch.upstream import model_factory
        # upstream's get_model (--arcface-root, or arcface_torch on sys.path), else the package's own backbones
        # (a model trained on the CPU host: tiny_cnn, tiny_mbf, ...)
        model = load_checkpoint_model(spec, args.network, model_factory(args.arcface_root), args.num_features,
                                      mean, std, args.device)
        model.name = spec
        return model
    return load_embedding_model(spec, args.input_mean, args.input_std, args.device, args.threads)


def make_store(model, args: argparse.Namespace):
    """The embedding store (each distinct image once, decoding overlapped) of ``model`` with ``args``' options."""
    from ..eval.embedding_store import EmbeddingStore
    return EmbeddingStore(model, args.image_size, args.batch_size, args.decode_threads, not args.no_progress,
                          resize=getattr(args, "resize", False))


def timing_line(spec: str, model, store) -> str:
    return (f"{spec}: mean {model.input_mean:g}, std {model.input_std:g}; {store.embedded} distinct images "
            f"(+ mirrors) in {store.wall_seconds:.1f} s wall; model alone {store.model_seconds:.1f} s "
            f"(wall / model {store.wall_seconds / max(store.model_seconds, 1e-9):.2f})")


def per_model(args: argparse.Namespace, evaluate) -> list:
    """``{"model": spec, **evaluate(store).as_dict()}`` for each ``--model`` (the models' protocol loop of
    ``megaface`` and ``ijb``), the timing line of each on stderr."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for spec in args.models:
        model = load_model(spec, args)
        store = make_store(model, args)
        r = evaluate(store)
        print(timing_line(spec, model, store), file=sys.stderr)
        rows.append({"model": spec, **r.as_dict()})
    return rows


def run(args: argparse.Namespace) -> int:
    import torch

    from ..eval.evaluate import format_matrix, format_table, evaluate_set, load_sets

    if args.threads:
        torch.set_num_threads(args.threads)
    # a path (not a set's name) is resolved, so that an error names the absolute path
    bins = [os.path.abspath(b) if b.endswith(".bin") or os.sep in b else b for b in args.bins]
    sets = load_sets(bins, args.data_dir, args.limit_pairs)  # every set checked before the first model runs
    names = [s.name for s in sets]
    if len(set(names)) != len(names):
        names = [s.path for s in sets]
    results, out_json = {}, []
    for spec in args.models:
        missing_file = not os.path.exists(spec) and os.path.splitext(spec)[1] in (".onnx", ".pt", ".pth", ".jit")
        model = load_model(os.path.abspath(spec) if missing_file else spec, args)
        store = make_store(model, args)
        results[spec] = {}
        for name, vbin in zip(names, sets):
            results[spec][name] = r = evaluate_set(store, vbin, args.folds)
            out_json.append({"model": spec, **r.as_dict()})
        print(timing_line(spec, model, store) + f" [{sum(2 * s.pairs for s in sets)} images in the sets]",
              file=sys.stderr)
        for row in out_json[-len(sets):]:
            row["timing"] = {"wall_s": store.wall_seconds, "model_s": store.model_seconds,
                             "distinct_images": store.embedded}
    if args.json:
        print(json.dumps(out_json, indent=2))
        return 0
    for spec in args.models:
        if len(args.models) > 1:
            print(f"\n{spec}")
        print(format_table([results[spec][n] for n in names]))
    if len(args.models) > 1:
        print("\naccuracy with flip, %\n" + format_matrix(args.models, names, results))
    return 0
