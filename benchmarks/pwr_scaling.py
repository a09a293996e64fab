"""PWR scaling: forward + backward time, peak memory and operation count of the ``pwr`` head by method, against
the floor.

For each N (M = N(N-1)/2 relations, M^2 pairs of pairs) the head (PWR-Exp teacher-diff, the paper's best, cosine
relations; float32 embeddings of 512 dims, student requires grad) runs ``method="fast"`` (exact, O(M log M)),
``"dense"`` (the O(M^2)-memory reference) where its estimated memory fits ``--dense-budget-gb``, and ``"tiled"``
(exact, O(M^2) time, O(M + tile^2) memory) where its estimated time fits ``--tiled-budget-s``.

Printed in the same run, per N:
- the FLOOR: one float64 sort of the M teacher relations plus the two N x N distance matrices (``torch.cdist``),
  what any exact ranking loss must at least do, and each method's time as a multiple of it (wall clock: "x floor";
  process CPU time, steadier on a shared machine: "x cpu");
- peak memory: resident set size above the level before the call (/proc/self/status VmHWM after a reset through
  /proc/self/clear_refs), in MB and in bytes per relation. With the default allocator, buffers above glibc's mmap
  threshold (at most 32 MB) go back to the system when freed, so large-N figures are exact, while small-N figures
  can read low (heap reused from the warm-up). ``--low-mmap`` re-executes with MALLOC_MMAP_THRESHOLD_=131072
  (every buffer above 128 kB is mmapped) for small-N memory, at some cost in time;
- ops: the number of torch function calls of one forward + backward (a ``TorchFunctionMode`` that stays active
  inside the backward), a CPU proxy for GPU kernel launches: metadata queries (``.shape``, ``.dim()``) are not
  counted, view-only calls (``view``, slicing, ``detach``) are counted apart ("views"). The autograd engine's own
  C++ kernels are not seen (the head's backward is one multiplication). On a CPU the fast path runs the compiled
  pass and sorts (``insightface_pwr/heads/pwr_cpu.py``; each call counted as one operation) where they are
  built: a "#" line then gives the count of the path a GPU runs (the vectorised one, unchunked).
Time: median over ``--repeats`` runs (wall clock, ``torch.set_num_threads(--threads)``, default one thread), and the
process CPU time (a loaded machine shows as wall >> cpu). ``--device cuda`` times with CUDA events and reports
torch.cuda.max_memory_allocated instead.

    python benchmarks/pwr_scaling.py                            # N = 92 .. 1024 (about a minute on one core)
    python benchmarks/pwr_scaling.py --sizes 92 1024 4096 --repeats 3
    python benchmarks/pwr_scaling.py --sizes 92 1024 --compare     # + the vectorised path, its variants
    python benchmarks/pwr_scaling.py --sizes 92 1024 --tensor-path # the vectorised path only (no compiled pass)
    python benchmarks/pwr_scaling.py --sizes 8 92 --loop 2          # + 2 s of back-to-back calls per N
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from typing import Callable, Optional, Tuple

if "--low-mmap" in sys.argv and os.environ.get("MALLOC_MMAP_THRESHOLD_") is None and __name__ == "__main__":
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "131072"
    os.execv(sys.executable, [sys.executable] + sys.argv)

import torch  # noqa: E402
from torch.overrides import TorchFunctionMode  # noqa: E402

from insightface_pwr.heads import pwr_cpu, pwr_small, pwr_tree  # noqa: E402
from insightface_pwr.heads.registry import create_head  # noqa: E402

_META = {"dim", "numel", "size", "data_ptr", "stride", "is_floating_point", "is_complex", "element_size",
         "storage_offset", "is_contiguous", "__len__", "__get__", "__set__"}
_VIEWS = {"view", "reshape", "t", "detach", "expand", "unsqueeze", "squeeze", "flatten", "narrow", "select",
          "view_as", "as_strided", "transpose", "permute", "movedim", "unflatten"}


def _is_view(name: str, args: tuple) -> bool:
    """A call that makes a view (no kernel): the names above, and indexing with ints and slices only."""
    if name in _VIEWS:
        return True
    if name == "__getitem__" and len(args) > 1:
        idx = args[1] if isinstance(args[1], tuple) else (args[1],)
        return not any(isinstance(i, torch.Tensor) for i in idx)
    return False


class OpCounter(TorchFunctionMode):
    """Counts torch function calls (not metadata queries), the backward's included: a mode is popped while it
    handles a call, so ``Tensor.backward`` is rerouted to the engine call with the mode pushed again."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.views = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.backward:
            loss = args[0]
            with self:
                torch.autograd.Variable._execution_engine.run_backward(
                    (loss,), (torch.ones_like(loss),), False, False, (), True, True)
            return None
        name = getattr(func, "__name__", "")
        if _is_view(name, args):
            self.views += 1
        elif name not in _META:
            self.count += 1
        return func(*args, **kwargs)


def count_ops(fn: Callable[[], None]) -> Tuple[int, int]:
    """(operations, view-only calls) of one call of ``fn``; a call of the compiled CPU pass or sort (ctypes, not
    seen by the mode) counts as one operation."""
    counter = OpCounter()
    compiled = pwr_cpu.call_count()
    with counter:
        fn()
    return counter.count + pwr_cpu.call_count() - compiled, counter.views


@contextlib.contextmanager
def tensor_path(chunks: bool = True):
    """The vectorised path (the one a GPU runs) on a CPU: the compiled pass off (``INSIGHTFACE_PWR_CPU_KERNEL=0``)
    and, with ``chunks`` False, the tree unchunked as off a CPU."""
    saved_env, saved_chunk = os.environ.get(pwr_cpu.ENV), pwr_tree.CHUNK_LEVELS
    os.environ[pwr_cpu.ENV] = "0"
    if not chunks:
        pwr_tree.CHUNK_LEVELS = 64
    try:
        yield
    finally:
        pwr_tree.CHUNK_LEVELS = saved_chunk
        if saved_env is None:
            os.environ.pop(pwr_cpu.ENV, None)
        else:
            os.environ[pwr_cpu.ENV] = saved_env


def floor_fn(student: torch.Tensor, teacher: torch.Tensor) -> Callable[[], None]:
    """One float64 sort of the M teacher relations and the two N x N distance matrices."""
    n = student.shape[0]
    iu = torch.triu_indices(n, n, offset=1, device=student.device)
    t_rel = torch.cdist(teacher, teacher)[iu[0], iu[1]].to(torch.float64)

    def run() -> None:
        torch.cdist(student, student)
        torch.cdist(teacher, teacher)
        torch.sort(t_rel)

    return run


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
    CPU seconds (all threads) tell how much of the wall time a loaded machine took away. The timed calls run
    back to back with nothing else measured; the peak memory comes from two more calls (resetting the peak
    through /proc/self/clear_refs costs the next call page-table work: ~0.1 ms at N = 8, ~0.3 ms at N = 92)."""
    fn()
    times, peaks, cpus = [], [], []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            times.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
    for _ in range(2):
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            fn()
            torch.cuda.synchronize()
            peaks.append((torch.cuda.max_memory_allocated() - base) / 2**20)
        elif _reset_peak():
            base = _rss_kb("VmRSS")
            fn()
            peaks.append((_rss_kb("VmHWM") - base) / 1024)
    return statistics.median(times), (max(peaks) if peaks else None), statistics.median(cpus or [float("nan")])


def loop_stats(fn: Callable[[], None], seconds: float, device: str) -> Tuple[float, float, float, int]:
    """(min, 10th percentile, median) wall seconds of ``fn`` called back to back for ``seconds`` (after 20 warm-up
    calls), and the number of calls."""
    for _ in range(20):
        fn()
    times: list = []
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop or len(times) < 3:
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[0], times[len(times) // 10], times[len(times) // 2], len(times)


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
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dense-budget-gb", type=float, default=4.0)
    ap.add_argument("--tiled-budget-s", type=float, default=30.0)
    ap.add_argument("--tile", type=int, default=2048)
    ap.add_argument("--low-mmap", action="store_true", help="re-execute with MALLOC_MMAP_THRESHOLD_=131072")
    ap.add_argument("--no-variants", action="store_true",
                    help="skip the lines of the other Table 1 rows (diff, exp with other margins) at the last N")
    ap.add_argument("--loop", type=float, default=0.0, metavar="S",
                    help="also run the fast path back to back for S seconds per N and print the min, 10th "
                         "percentile and median of its calls (steadier than a median of --repeats on a noisy host)")
    ap.add_argument("--compare", action="store_true",
                    help="also time the vectorised path (compiled pass off), and that path with the blocks off (the "
                         "tree) and with the tree's lowest levels by blocks")
    ap.add_argument("--tensor-path", action="store_true",
                    help=f"time the vectorised path only (the compiled CPU pass off: {pwr_cpu.ENV}=0)")
    args = ap.parse_args(argv)
    if args.tensor_path:
        os.environ[pwr_cpu.ENV] = "0"
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    print(f"# load average before: {' '.join('%.2f' % x for x in os.getloadavg())} on {os.cpu_count()} cpu(s); "
          f"MALLOC_MMAP_THRESHOLD_={os.environ.get('MALLOC_MMAP_THRESHOLD_', 'default')}")
    print(f"# pwr_scaling: PWR-Exp (teacher-diff), cosine, float32 embeddings {args.dim}-d, device {args.device}, "
          f"{torch.get_num_threads()} thread(s), torch {torch.__version__}; compiled CPU pass: "
          f"{'on' if pwr_cpu.enabled(dev) else 'off'} ({pwr_cpu.library_path() or 'not built'})")
    print(f"{'N':>5} {'M':>8} | {'floor ms':>9} {'cpu ms':>8} | {'fast ms':>9} {'cpu ms':>8} {'x floor':>7} {'x cpu':>6} "
          f"{'MB':>7} {'B/rel':>6} {'ops':>5} {'views':>5} | {'dense ms':>9} {'x floor':>7} {'B/rel':>6} | "
          f"{'tiled ms':>9} {'x floor':>7} {'B/rel':>6}")
    tiled_rate = None  # seconds per pair of pairs, from the last tiled run
    params = dict(inversion="exp", margin="teacher_diff", relation="cosine")
    for n in args.sizes:
        g = torch.Generator().manual_seed(n)
        student = torch.randn(n, args.dim, generator=g).to(dev)
        teacher = torch.randn(n, args.dim, generator=g).to(dev)
        m = n * (n - 1) // 2
        t_floor, _, c_floor = measure(floor_fn(student, teacher), args.repeats, args.device)
        fast = fwd_bwd("fast", student, teacher, **params)
        t_fast, mb_fast, c_fast = measure(fast, args.repeats, args.device)
        ops, views = count_ops(fast)

        def cell(t: float, mb: Optional[float]) -> str:
            per = mb * 2**20 / m if mb is not None else float("nan")
            return f"{t * 1e3:9.2f} {t / t_floor:7.2f} {per:6.0f}"

        dense_gb = 6 * 4 * m * m / 2**30  # about six float32 M x M buffers (ds, dt, mask, terms, grads)
        if dense_gb <= args.dense_budget_gb:
            t_dense, mb_dense, _ = measure(fwd_bwd("dense", student, teacher, **params),
                                           max(1, args.repeats // 2), args.device)
            dense_cell = cell(t_dense, mb_dense)
        else:
            dense_cell = f"{'(~%.0f GB)' % dense_gb:>24}"
        est = tiled_rate * m * m if tiled_rate is not None else 0.0
        if args.tiled_budget_s > 0 and est <= args.tiled_budget_s:
            t_tiled, mb_tiled, _ = measure(fwd_bwd("tiled", student, teacher, tile=args.tile, **params), 1,
                                           args.device)
            tiled_rate = t_tiled / (m * m)
            tiled_cell = cell(t_tiled, mb_tiled)
        else:
            tiled_cell = f"{'(est %.0f s)' % est:>24}"
        mb = mb_fast if mb_fast is not None else float("nan")
        device_ops = ops
        if args.device == "cpu":  # what a GPU would launch: the vectorised path, no chunks
            with tensor_path(chunks=False):
                fast()  # (its kept buffers made first, as in training)
                device_ops = count_ops(fast)[0]
        print(f"{n:5d} {m:8d} | {t_floor * 1e3:9.2f} {c_floor * 1e3:8.2f} | {t_fast * 1e3:9.2f} {c_fast * 1e3:8.2f} "
              f"{t_fast / t_floor:7.2f} {c_fast / c_floor:6.2f} {mb:7.1f} {mb * 2**20 / m:6.0f} {ops:5d} {views:5d} | "
              f"{dense_cell} | {tiled_cell}", flush=True)
        if args.loop > 0:
            lo, p10, med, calls = loop_stats(fast, args.loop, args.device)
            print(f"#   N = {n}: fast, {calls} calls back to back: min {lo * 1e3:.3f} ms, 10th percentile "
                  f"{p10 * 1e3:.3f} ms, median {med * 1e3:.3f} ms", flush=True)
        if device_ops != ops:
            print(f"#   N = {n}: {device_ops} ops on a GPU's path (the vectorised path, unchunked; the CPU "
                  f"{'runs the compiled pass' if pwr_cpu.enabled(dev) else 'chunks the tree'}: {ops})", flush=True)
        if args.compare and args.device == "cpu":  # the fast path's alternatives, same run
            with tensor_path():
                t_alt, _, c_alt = measure(fast, args.repeats, args.device)
                print(f"#   N = {n}: fast, vectorised path (compiled pass off): {t_alt * 1e3:.2f} ms wall, "
                      f"{c_alt * 1e3:.2f} ms cpu ({c_alt / c_floor:.2f} x floor cpu), {count_ops(fast)[0]} ops",
                      flush=True)
            for label, attr, value in (("vectorised, tree (blocks off)", "SMALL_M", 0),
                                       ("vectorised, tree, lowest 10 levels by blocks", "DENSE_LEVELS", 10)):
                if attr == "SMALL_M" and m > pwr_small.SMALL_M:
                    continue
                saved = getattr(pwr_small, attr)
                setattr(pwr_small, attr, value)
                if attr == "DENSE_LEVELS":
                    pwr_small.SMALL_M, saved_small = 0, pwr_small.SMALL_M
                try:
                    with tensor_path():
                        t_alt, _, c_alt = measure(fast, args.repeats, args.device)
                        alt_ops = count_ops(fast)[0]
                    print(f"#   N = {n}: fast, {label}: {t_alt * 1e3:.2f} ms wall, {c_alt * 1e3:.2f} ms cpu "
                          f"({c_alt / c_floor:.2f} x floor cpu), {alt_ops} ops", flush=True)
                finally:
                    setattr(pwr_small, attr, saved)
                    if attr == "DENSE_LEVELS":
                        pwr_small.SMALL_M = saved_small
    if not args.no_variants:
        n = args.sizes[-1]
        g = torch.Generator().manual_seed(n)
        student, teacher = torch.randn(n, args.dim, generator=g).to(dev), torch.randn(n, args.dim, generator=g).to(dev)
        # the other PWR rows of the paper's Table 1 (RankNet aside: tiled), then two powers
        for inv, extra in (("diff", dict(margin=0.1)), ("diff", dict(margin="teacher_std")),
                           ("diff", dict(margin="teacher_diff")), ("exp", dict(margin=0.1)),
                           ("exp", dict(margin="teacher_std")), ("power", dict(p=2.0, margin="teacher_std")),
                           ("power", dict(p=3.0, margin="teacher_diff"))):
            fn = fwd_bwd("fast", student, teacher, inversion=inv, relation="cosine", **extra)
            t_fast, mb_fast, c_fast = measure(fn, args.repeats, args.device)
            mb = mb_fast if mb_fast is not None else float("nan")
            print(f"# fast {inv} {extra}: N = {n}: {t_fast * 1e3:.1f} ms wall ({t_fast / t_floor:.2f} x floor), "
                  f"{c_fast * 1e3:.1f} ms cpu, {mb:.1f} MB ({mb * 2**20 / m:.0f} B/rel), {count_ops(fn)[0]} ops")
    print(f"# load average after: {' '.join('%.2f' % x for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
