"""Table 1, row "RKD-D": L = 1.0 * CosFace + 100 * RKD-D."""
from easydict import EasyDict as edict

from insightface_pwr.recipe import load_base

config = load_base(__file__, "_distill.py")
# relation and options as the PWR authors' config.py.example: metric "l2" (euclidean), no mean normalisation, Huber 1
config.distill.heads = [edict(name="rkd_d", weight=100.0,
                              params=edict(relation="euclidean", mean_normalize=False, huber_delta=1.0))]
