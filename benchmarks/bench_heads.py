"""Forward + backward time of the distillation heads on one batch (CPU or CUDA), printed as a table.

    python benchmarks/bench_heads.py --n 92 552 --dim 512 --threads 2

Each head runs with its defaults on random student/teacher embeddings (N x D) or logits (N x C); the figure is the
median over ``--repeat`` runs after one warm-up. ``pwr`` is left out by default (it has its own benchmark).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from insightface_pwr.heads.registry import create_head, get_head_spec, list_heads


def bench(name: str, n: int, dim: int, classes: int, dtype: torch.dtype, device: str, repeat: int) -> float:
    spec = get_head_spec(name)
    g = torch.Generator().manual_seed(0)
    if spec.consumes == "logits":
        s, t = (10 * torch.randn(n, classes, generator=g) for _ in range(2))
        keys = ("student_logits", "teacher_logits")
    else:
        s, t = (torch.randn(n, dim, generator=g) for _ in range(2))
        keys = ("student", "teacher")
    s, t = s.to(device, dtype).requires_grad_(True), t.to(device, dtype)
    head = create_head(name)
    times = []
    for _ in range(repeat + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        head(**{keys[0]: s, keys[1]: t}).backward()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        s.grad = None
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", nargs="*", default=None, help="default: every registered head except pwr")
    parser.add_argument("--n", type=int, nargs="+", default=[92, 552])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=10000, help="logit columns for logit heads")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    heads = args.heads or [h for h in list_heads() if h != "pwr"]
    dtype = getattr(torch, args.dtype)
    print(f"device={args.device} threads={args.threads} dtype={args.dtype} D={args.dim} C={args.classes} "
          f"(median of {args.repeat}, forward+backward, ms)")
    print(f"{'head':<10}" + "".join(f"{'N=' + str(n):>12}" for n in args.n))
    for name in heads:
        row = [bench(name, n, args.dim, args.classes, dtype, args.device, args.repeat) * 1e3 for n in args.n]
        print(f"{name:<10}" + "".join(f"{v:>12.2f}" for v in row), flush=True)


if __name__ == "__main__":
    main()
