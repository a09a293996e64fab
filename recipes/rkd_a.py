"""Table 1, row "RKD-A": L = 1.0 * CosFace + 200 * RKD-A."""
from easydict import EasyDict as edict

from insightface_pwr.recipe import load_base

config = load_base(__file__, "_distill.py")
config.distill.heads = [edict(name="rkd_a", weight=200.0, params=edict(huber_delta=1.0))]
