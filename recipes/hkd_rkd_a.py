"""Table 1, row "HKD + RKD-A": L = 0.7 * CosFace + 0.3 * HKD(T = 4) + 200 * RKD-A."""
from easydict import EasyDict as edict

from insightface_pwr.recipe import load_base

config = load_base(__file__, "hkd.py")
config.distill.heads.append(edict(name="rkd_a", weight=200.0, params=edict(huber_delta=1.0)))
