"""PWR scaling: forward + backward time and peak extra memory of the ``pwr`` head by method, side by side.

For N = 92, 128, 256, 512, 1024 (M = N(N-1)/2 relations, M^2 pairs of pairs) the head (PWR-Exp teacher-diff,
the paper's best, cosine relations; float32 embeddings of 512 dims, student requires grad) runs
``method="fast"`` (exact, O(M log M)), ``"dense"`` (the O(M^2)-memory reference) where its estimated memory fits
``--dense-budget-gb``, and ``"tiled"`` (exact, O(M^2) time, O(M + tile^2) memory) where its estimated time fits
``--tiled-budget-s``; the others print their estimate. Time: median over ``--repeats`` runs (wall clock,
``torch.set_num_threads(--threads)``). Memory: peak resident set size above the level before the call
(/proc/self/status VmHWM after resetting it through /proc/self/clear_refs), with glibc's mmap threshold lowered
(the script re-executes itself with MALLOC_MMAP_THRESHOLD_) so that freed buffers leave the RSS. CPU by default;
``--device cuda`` times with CUDA events and reports torch.cuda.max_memory_allocated instead.

    python benchmarks/pwr_scaling.py                     # the full table (a few minutes on 2 CPU cores)
    python benchmarks/pwr_scaling.py --sizes 92 128      # a quick look
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Callable, Optional, Tuple

if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None and __name__ == "__main__":
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "131072"
    os.execv(sys.executable, [sys.executable] + sys.argv)

import torch  # noqa: E402

from insightface_pwr.heads.registry import create_head  # noqa: E402


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def measure(fn: Callable[[], None], repeats: int, device: str) -> Tuple[float, Optional[float], float]:
    """(median wall seconds, peak extra MB, median process CPU seconds) of ``fn`` (one warm-up call first).
    CPU seconds (all threads) tell how much of the wall time a loaded machine took away."""
    fn()
    times, peaks, cpus = [], [], []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
            peaks.append((torch.cuda.max_memory_allocated() - base) / 2**20)
        else:
            ok = _reset_peak()
            base = _rss_kb("VmRSS")
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            times.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
            if ok:
                peaks.append((_rss_kb("VmHWM") - base) / 1024)
    return statistics.median(times), (max(peaks) if peaks else None), statistics.median(cpus or [float("nan")])


def fwd_bwd(method: str, student: torch.Tensor, teacher: torch.Tensor, **params) -> Callable[[], None]:
    head = create_head("pwr", method=method, **params)

    def run() -> None:
        x = student.detach().requires_grad_(True)
        head(student=x, teacher=teacher).backward()
        assert x.grad is not None

    return run


def main(argv: Optional[list] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[92, 128, 256, 512, 1024])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dense-budget-gb", type=float, default=4.0)
    ap.add_argument("--tiled-budget-s", type=float, default=60.0)
    ap.add_argument("--tile", type=int, default=2048)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    print(f"# load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cpu(s)")
    print(f"# pwr_scaling: PWR-Exp (teacher-diff), cosine, float32 embeddings {args.dim}-d, device {args.device}, "
          f"{torch.get_num_threads()} thread(s), torch {torch.__version__}")
    print(f"{'N':>5} {'M':>7} {'M^2':>9} | {'fast s':>8} {'cpu s':>7} {'fast MB':>8} | {'dense s':>9} {'cpu s':>8} "
          f"{'dense MB':>9} | {'tiled s':>9} {'tiled MB':>8} | {'dense/fast':>10}")
    tiled_rate = None  # seconds per pair of pairs, from the last tiled run
    for n in args.sizes:
        g = torch.Generator().manual_seed(n)
        student = torch.randn(n, args.dim, generator=g).to(dev)
        teacher = torch.randn(n, args.dim, generator=g).to(dev)
        m = n * (n - 1) // 2
        params = dict(inversion="exp", margin="teacher_diff", relation="cosine")
        t_fast, mb_fast, c_fast = measure(fwd_bwd("fast", student, teacher, **params), args.repeats, args.device)
        dense_gb = 6 * 4 * m * m / 2**30  # about six float32 M x M buffers (ds, dt, mask, terms, grads)
        if dense_gb <= args.dense_budget_gb:
            t_dense, mb_dense, c_dense = measure(fwd_bwd("dense", student, teacher, **params),
                                                 max(1, args.repeats // 2), args.device)
            dense_cell = f"{t_dense:9.4f} {c_dense:8.3f} {mb_dense if mb_dense is not None else float('nan'):9.1f}"
            ratio = f"{t_dense / t_fast:10.1f}"
        else:
            dense_cell, ratio = f"{'(~%.0f GB)' % dense_gb:>28}", f"{'n/a':>10}"
        est = tiled_rate * m * m if tiled_rate is not None else 0.0
        if args.tiled_budget_s > 0 and est <= args.tiled_budget_s:
            t_tiled, mb_tiled, _ = measure(fwd_bwd("tiled", student, teacher, tile=args.tile, **params), 1,
                                           args.device)
            tiled_rate = t_tiled / (m * m)
            tiled_cell = f"{t_tiled:9.3f} {mb_tiled if mb_tiled is not None else float('nan'):8.1f}"
        else:
            tiled_cell = f"{('(est %.0f s)' % est) if tiled_rate is not None else '(skipped)':>18}"
        print(f"{n:5d} {m:7d} {m * m:9.2e} | {t_fast:8.4f} {c_fast:7.3f} "
              f"{mb_fast if mb_fast is not None else float('nan'):8.1f}"
              f" | {dense_cell} | {tiled_cell} | {ratio}", flush=True)
    n = args.sizes[-1]
    g = torch.Generator().manual_seed(n)
    student, teacher = torch.randn(n, args.dim, generator=g).to(dev), torch.randn(n, args.dim, generator=g).to(dev)
    for inv, extra in (("diff", dict(margin=0.1)), ("power", dict(p=2.0, margin="teacher_std")),
                       ("power", dict(p=3.0, margin="teacher_diff"))):
        t_fast, mb_fast, c_fast = measure(fwd_bwd("fast", student, teacher, inversion=inv, relation="cosine",
                                                  **extra), args.repeats, args.device)
        print(f"# fast {inv} {extra}: N = {n}: {t_fast:.4f} s wall, {c_fast:.3f} s cpu, "
              f"{mb_fast if mb_fast is not None else float('nan'):.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
