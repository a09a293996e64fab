"""gpu_check.sh, last step: one markdown report from the training runs, the GPU tests and the timings.

    python benchmarks/gpu/summarize.py --work WORK --out REPORT.md

Reads ``WORK/runs.tsv`` (family, exit status, wall seconds, per line), each run's ``WORK/runs/<family>/training.log``
(upstream's log: the hooks' ``distill step N   classification x   <head> y ...   total z`` lines),
``WORK/pytest.txt`` and ``WORK/timing.md``. A run passes when it exited 0, logged its last step and every logged
term is finite. Exit status: 1 when a run or the GPU tests failed.
"""
from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

_DISTILL = re.compile(r"distill step (\d+)\s+(.*)$")


def last_terms(log: Path) -> Tuple[Optional[int], Dict[str, float]]:
    """(the last logged step, its terms) from a training.log; (None, {}) when none was logged."""
    step, terms = None, {}
    if log.is_file():
        for line in log.read_text(errors="replace").splitlines():
            m = _DISTILL.search(line)
            if m:
                parts = m.group(2).split()
                step, terms = int(m.group(1)), {k: float(v) for k, v in zip(parts[::2], parts[1::2])}
    return step, terms


def run_rows(work: Path, expected_steps: int) -> Tuple[List[str], bool]:
    rows = ["| head family | exit | steps | last logged terms | wall | verdict |", "|---|---|---|---|---|---|"]
    ok_all = True
    tsv = work / "runs.tsv"
    for line in (tsv.read_text().splitlines() if tsv.is_file() else []):
        family, rc, wall = line.split("\t")
        step, terms = last_terms(work / "runs" / family / "training.log")
        finite = bool(terms) and all(math.isfinite(v) for v in terms.values())
        ok = rc == "0" and step == expected_steps and finite
        ok_all &= ok
        shown = ", ".join(f"{k} {v:.4g}" for k, v in terms.items()) or "-"
        rows.append(f"| {family} | {rc} | {step if step is not None else '-'} | {shown} | {float(wall):.0f} s | "
                    f"{'ok' if ok else 'FAILED'} |")
    return rows, ok_all and len(rows) > 2


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, required=True, help="the steps every run must reach")
    p.add_argument("--title", default="gpu_check")
    args = p.parse_args(argv)
    rows, runs_ok = run_rows(args.work, args.steps)
    pytest_txt = args.work / "pytest.txt"
    pytest_lines = pytest_txt.read_text(errors="replace").strip().splitlines() if pytest_txt.is_file() else []
    pytest_summary = pytest_lines[-1] if pytest_lines else "not run"
    tests_ok = bool(pytest_lines) and not re.search(r"\b(failed|error)", pytest_summary)
    timing = (args.work / "timing.md").read_text() if (args.work / "timing.md").is_file() else "not run\n"
    text = (f"# {args.title}\n\n## patched upstream train.py, {args.steps} steps per head family (torchrun, 1 "
            f"process)\n\n" + "\n".join(rows) + f"\n\n## pytest tests/gpu\n\n    {pytest_summary}\n\n"
            f"## timings\n\n{timing}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0 if runs_ok and tests_ok else 1


if __name__ == "__main__":
    sys.exit(main())
