"""``insightface-pwr build-rec ROOT OUT``: an image folder (<root>/<identity>/<image>) to an InsightFace RecordIO
set (train.rec, train.idx, property); hidden folders and files are skipped and every image is decoded (a truncated
one is an error naming it); see :mod:`insightface_pwr.data.build`."""
from __future__ import annotations

import argparse
import json
import os

from ..data.build import build_recordio


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", help="image folder: <root>/<identity>/<image>; hidden folders and files (names "
                                     "starting with '.', e.g. .ipynb_checkpoints) are skipped; every image is "
                                     "decoded, a truncated one is refused")
    parser.add_argument("out", help="output folder for train.rec, train.idx and property")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    counts = build_recordio(os.path.abspath(args.root), os.path.abspath(args.out), progress=not args.no_progress)
    print(json.dumps(counts))
    return 0
