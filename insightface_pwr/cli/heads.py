"""``insightface-pwr heads``: the registered heads, their parameters and defaults."""
from __future__ import annotations

import argparse
import json

from ..heads.registry import get_head_spec, list_heads
from ..infra.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("filter", nargs="?", default="", help="show only heads whose name contains this")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _cpu_pass() -> str:
    """What pwr's exact fast path runs on a CPU here: the compiled pass, or why not."""
    import torch

    from ..heads import pwr_cpu

    if pwr_cpu.enabled(torch.device("cpu")):
        return f"compiled exact pass ({pwr_cpu.library_path().name})"
    if pwr_cpu.available():
        return f"vectorised exact path ({pwr_cpu.ENV}=0 switches the compiled pass off)"
    return ("vectorised exact path, 2-5x slower than the compiled pass, which is not built (no C compiler when the "
            "package was installed; install one and reinstall)")


def run(args: argparse.Namespace) -> int:
    names = list_heads(args.filter)
    if not names:
        raise UserError(f"no registered head matches {args.filter!r}; the registered heads: "
                        f"{', '.join(list_heads(''))}")
    specs = [get_head_spec(n) for n in names]
    if args.json:
        print(json.dumps([{"name": s.name, "consumes": s.consumes, "paper": s.paper, "summary": s.summary,
                           "params": {k: repr(v) for k, v in s.defaults().items()},
                           **({"cpu": _cpu_pass()} if s.name == "pwr" else {})} for s in specs], indent=2))
        return 0
    for s in specs:
        print(f"{s.name}  [{s.consumes}]  {s.summary}")
        print(f"    params: {s.describe_params() or '(none)'}")
        if s.paper:
            print(f"    paper:  {s.paper}")
        if s.name == "pwr":
            print(f"    cpu:    {_cpu_pass()}")
    return 0
