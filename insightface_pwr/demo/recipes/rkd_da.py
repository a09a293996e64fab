"""Demo of Table 1's RKD-DA row: L = 1.0 * CosFace + 100 * RKD-D + 200 * RKD-A (as recipes/rkd_da.py)."""
from pathlib import Path

from easydict import EasyDict as edict

from insightface_pwr.recipe import load_base

config = load_base(__file__, "_distill.py")
config.distill.heads = [edict(name="rkd_da", weight=100.0,      # rkd_d + 2 * rkd_a
                              params=edict(relation="euclidean", mean_normalize=False, huber_delta=1.0))]
config.output = str(Path(__file__).resolve().parents[1] / "runs" / "rkd_da")
