"""The full teacher check: ``insightface-pwr eval`` of the shared teacher on lfw_dev.bin, ONNX and TorchScript.

    OMP_NUM_THREADS=2 python benchmarks/eval_lfw_dev.py [--shared ../shared] [--threads 2]

Expected (measured independently, ../shared/README.md): accuracy with flip 0.9898 +- 0.003, for both exports
(input (pixel - 127.5) / 128). Prints the metrics and the wall time of each model; exits 1 when a model misses.
Too slow for the test suite on 2 CPU cores (5,660 images x 2); tests/data/test_evaluate.py checks a subset.
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from insightface_pwr.eval.embedding_models import load_embedding_model  # noqa: E402
from insightface_pwr.data.paths import shared_dir  # noqa: E402
from insightface_pwr.eval.evaluate import evaluate_bin, format_table  # noqa: E402

EXPECTED, TOLERANCE = 0.9898, 0.003


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=str(shared_dir()))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shared = Path(args.shared)
    bin_path = shared / "data" / "lfw" / "lfw_dev.bin"
    ok, results = True, []
    for suffix in ("onnx", "torchscript.pt"):
        model = load_embedding_model(shared / "models" / f"mbf_y1_ms1m_arcface_128d.{suffix}", 127.5, 128.0)
        start = time.perf_counter()
        r = evaluate_bin(model, str(bin_path), batch_size=64, progress=False)
        seconds = time.perf_counter() - start
        r.name = f"lfw_dev [{suffix}]"
        results.append(r)
        hit = abs(r.accuracy_flip - EXPECTED) <= TOLERANCE
        ok &= hit
        print(f"{suffix}: accuracy_flip {r.accuracy_flip:.4f} (expected {EXPECTED} +- {TOLERANCE}: "
              f"{'OK' if hit else 'MISS'}), {2 * 2 * r.pairs} images embedded in {seconds:.1f} s "
              f"({2 * 2 * r.pairs / seconds:.0f} img/s, {args.threads} threads)", flush=True)
    print(format_table(results))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
