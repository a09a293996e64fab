"""Table 1, row "RKD-DA": L = 1.0 * CosFace + 100 * RKD-D + 200 * RKD-A."""
from easydict import EasyDict as edict

from insightface_pwr.recipe import load_base

config = load_base(__file__, "_distill.py")
# rkd_da = rkd_d + 2 * rkd_a, so weight 100 gives 100 * RKD-D + 200 * RKD-A (the paper's two weights)
config.distill.heads = [edict(name="rkd_da", weight=100.0,
                              params=edict(relation="euclidean", mean_normalize=False, huber_delta=1.0))]
