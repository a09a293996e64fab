"""The ``insightface-pwr`` command line (also ``python -m insightface_pwr``): the one place of every subcommand.

``SUBCOMMANDS`` maps a name to its module under ``insightface_pwr.cli`` (which defines ``add_arguments(parser)``
and ``run(args) -> int``) and its one-line help. Only the module of the subcommand being run is imported (``--help``
imports none), so the command starts fast and a subcommand never pays for another's imports.

Errors: a mistake in what the user gave (an error deriving from :class:`insightface_pwr.infra.errors.UserError`,
or a missing or unreadable file) is printed as one line ``error: ...`` with exit status 1; ``--debug`` shows the
traceback instead. Ctrl-C exits with status 130 and one line.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import List, Optional

__all__ = ["main", "build_parser", "SUBCOMMANDS"]

# name -> (module under insightface_pwr.cli, help)
SUBCOMMANDS = {
    "heads": ("heads", "list the registered distillation heads with their parameters"),
    "check": ("check", "validate a recipe (no GPU, data or teacher needed): effective config and loss formula"),
    "train": ("train", "train a recipe on the CPU host (gloo processes; mirrors train_v2.py)"),
    "patch": ("patch", "patch arcface_torch for distillation (--check, --revert)"),
    "eval": ("eval", "verification accuracy of an embedding model on InsightFace .bin files"),
    "megaface": ("megaface", "MegaFace-style rank-1/rank-10 and TPR@FPR on a probe/distractor layout of aligned faces"),
    "ijb": ("ijb", "IJB-B/IJB-C 1:1 template verification (TPR at FPR 1e-6..1e-1) on aligned crops"),
    "report": ("report", "evaluate trained recipe folders and write the Table-1 layout (markdown, JSON, ROC PNG)"),
    "build-rec": ("build_rec", "build an InsightFace RecordIO set from an image folder"),
    "cache-teacher": ("cache_teacher", "cache a frozen teacher's embeddings of a RecordIO set (float16)"),
    "demo": ("demo", "the paper's comparison on synthetic faces, CPU only (minutes): teacher, baseline, PWR-Exp, "
                     "RKD-DA"),
}


def _version() -> str:
    from .. import __version__
    return __version__


def _chosen(argv: List[str]) -> Optional[str]:
    """The subcommand named in ``argv`` (the first word that is one), or None."""
    for word in argv:
        if word in SUBCOMMANDS:
            return word
        if not word.startswith("-"):
            return None
    return None


def build_parser(argv: Optional[List[str]] = None) -> argparse.ArgumentParser:
    """The parser; only the subcommand named in ``argv`` gets its arguments (all of them when ``argv`` is None)."""
    parser = argparse.ArgumentParser(prog="insightface-pwr",
                                     description="Knowledge distillation for InsightFace's arcface_torch.")
    parser.add_argument("--version", action="version", version=f"insightface-pwr {_version()}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks (and check every head input's values)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = _chosen(argv) if argv is not None else None
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        if argv is None or name == chosen:
            importlib.import_module(f"{__name__}.{module}").add_arguments(p)
    return parser


def _is_user_error(e: BaseException) -> bool:
    from ..infra.errors import UserError
    return isinstance(e, (UserError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError))


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    if not getattr(args, "command", None):
        build_parser([]).print_help()
        return 2
    if args.debug:
        os.environ["INSIGHTFACE_PWR_DEBUG"] = "1"
        from ..heads.base import set_debug_checks
        set_debug_checks(True)
    try:
        return int(importlib.import_module(f"{__name__}.{args._module}").run(args) or 0)
    except KeyboardInterrupt:
        print(f"insightface-pwr {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001  (sorted into the user's mistakes and bugs right here)
        if args.debug or not _is_user_error(e):
            raise
        msg = str(e) if not isinstance(e, OSError) or not e.filename else \
            f"{e.strerror or type(e).__name__}: {os.path.abspath(os.fsdecode(e.filename))!r}"
        print(f"error: {' '.join(msg.split())}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
