"""Table 1, row "HKD + DarkRank": L = 0.7 * CosFace + 0.3 * HKD(T = 4) + 1 * DarkRank."""
from easydict import EasyDict as edict

from insightface_pwr.recipe import load_base

config = load_base(__file__, "hkd.py")
config.distill.heads.append(edict(name="darkrank", weight=1.0,
                                  params=edict(alpha=3.0, beta=3.0, list_length=4, relation="euclidean", soft=False)))
