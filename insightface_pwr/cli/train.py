"""``insightface-pwr train RECIPE [--nproc N]``: train a recipe on the CPU host (gloo processes on 127.0.0.1,
mirroring arcface_torch's ``train_v2.py``; :mod:`insightface_pwr.host`)."""
from __future__ import annotations

import argparse

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="recipe file (arcface_torch-style config, config.rec='synthetic' or a folder)")
    parser.add_argument("--nproc", type=int, default=1, help="number of gloo processes (default 1)")
    parser.add_argument("--port", type=int, default=None, help="TCP port of the rendezvous (default: a free one)")
    parser.add_argument("--start-method", choices=("fork", "spawn"), default=None,
                        help="how to start the processes (default: fork where available)")


def run(args: argparse.Namespace) -> int:
    from ..host.launch import launch

    launch(args.recipe, args.nproc, args.port, start_method=args.start_method)
    return 0
