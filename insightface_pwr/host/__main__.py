"""``python -m insightface_pwr.host RECIPE --nproc N``: train on the CPU host."""
import argparse
import sys

from .launch import add_arguments, run

parser = argparse.ArgumentParser(prog="python -m insightface_pwr.host",
                                 description="Train a recipe on the CPU host (gloo, mirrors arcface_torch's loop).")
add_arguments(parser)
sys.exit(run(parser.parse_args()))
