"""Table 1, row "HKD + RKD-D": L = 0.7 * CosFace + 0.3 * HKD(T = 4) + 100 * RKD-D."""
from easydict import EasyDict as edict

from insightface_pwr.recipe import load_base

config = load_base(__file__, "hkd.py")
config.distill.heads.append(edict(name="rkd_d", weight=100.0,
                                  params=edict(relation="euclidean", mean_normalize=False, huber_delta=1.0)))
