"""The ``insightface-pwr`` command line (also ``python -m insightface_pwr``).

Each subcommand lives in the module that owns it; ``_SUBCOMMANDS`` maps the name to ``module:function`` pairs
(``add_arguments(parser)`` and ``run(args) -> int``), imported only when that subcommand is used.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

# name -> (module, help). The module defines add_arguments(parser) and run(args) -> int.
_SUBCOMMANDS = {
    "heads": ("insightface_pwr.cli_heads", "list the registered distillation heads with their parameters"),
    "eval": ("insightface_pwr.evaluate", "verification accuracy of an embedding model on InsightFace .bin files"),
    "build-rec": ("insightface_pwr.data.cli_build", "build an InsightFace RecordIO set from an image folder"),
    "patch": ("insightface_pwr.cli_patch", "patch arcface_torch for distillation (--check, --revert)"),
    "train": ("insightface_pwr.host.launch", "train a recipe on the CPU host (gloo processes; mirrors train_v2.py)"),
    "cache-teacher": ("insightface_pwr.cli_cache", "cache a frozen teacher's embeddings of a RecordIO set (float16)"),
    "demo": ("insightface_pwr.demo.cli", "the paper's comparison on synthetic faces, CPU only (minutes): teacher, baseline, PWR-Exp, RKD-DA"),
    "check": ("insightface_pwr.cli_check", "validate a recipe (no GPU, data or teacher needed): effective config and loss formula"),
}


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="insightface-pwr",
                                     description="Knowledge distillation for InsightFace's arcface_torch.")
    parser.add_argument("--version", action="version", version=f"insightface-pwr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in _SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    return int(importlib.import_module(args._module).run(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
