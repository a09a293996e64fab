"""``insightface-pwr patch ARCFACE_DIR [--check] [--revert]``: patch arcface_torch for distillation, or undo it.

Exit status: 0 done (or, with --check, the action would succeed); 1 refused (the message says which file and
hunk differ, or why); 2 the patch files themselves are missing or malformed.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..integration.arcface_torch import patching


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("arcface_dir", metavar="ARCFACE_DIR", type=Path,
                        help="the recognition/arcface_torch folder of an insightface clone at the pinned commit")
    parser.add_argument("--check", action="store_true",
                        help="only check that the action would succeed (pristine pinned upstream for apply, "
                             "patched for --revert); writes nothing")
    parser.add_argument("--revert", action="store_true",
                        help="undo the patches, giving back the exact upstream bytes")
    parser.add_argument("--patches", metavar="DIR", type=Path, default=None,
                        help="folder with series, *.patch and upstream.sha256 (default: $INSIGHTFACE_PWR_PATCHES, "
                             "else the patches/ folder of this source checkout)")


def run(args: argparse.Namespace) -> int:
    directory = args.patches or patching.default_patches_dir()
    try:
        patch_set = patching.load_patch_set(directory)
    except (OSError, patching.PatchFileError) as exc:
        print(f"insightface-pwr patch: cannot read the patches in {directory}: {exc}\n"
              "(they ship with the source checkout: install with `pip install -e .` from a clone, or pass "
              "--patches DIR)", file=sys.stderr)
        return 2
    target = args.arcface_dir
    n_hunks = sum(len(f.hunks) for f in patch_set.files)
    listing = ", ".join(f"{f.path} (" + ("new file" if f.is_new else f"{len(f.hunks)} hunk" + "s" * (len(f.hunks) > 1))
                        + ")" for f in patch_set.files)
    try:
        if args.check:
            if not args.revert and patching.is_patched(target, patch_set):
                print(f"ok: {target} is patched, matches insightface-pwr's patches of {patching.PINNED}: {listing}")
                return 0
            patching.plan(target, patch_set, revert=args.revert)
            state = "patched; --revert would restore" if args.revert else "the pristine pinned upstream; the " \
                "patches apply to"
            print(f"ok: {target} is {state} {patching.PINNED}: {listing}")
            return 0
        if args.revert:
            patching.revert(target, patch_set)
            print(f"reverted {target} to {patching.PINNED} (exact bytes, sha256 checked): {listing}")
            return 0
        patching.apply(target, patch_set)
    except patching.PatchRefused as exc:
        print(f"insightface-pwr patch: refused: {exc}", file=sys.stderr)
        return 1
    except patching.PatchFileError as exc:
        print(f"insightface-pwr patch: the patch files are broken: {exc}", file=sys.stderr)
        return 2
    print(f"patched {target} ({n_hunks} hunks): {listing}\n"
          f"train with: cd {target} && torchrun --nproc_per_node=N train.py path/to/recipe.py\n"
          f"undo with: insightface-pwr patch --revert {target}")
    return 0
