"""Table 1, row "DarkRank": L = 1.0 * CosFace + 1 * DarkRank."""
from easydict import EasyDict as edict

from insightface_pwr.recipe import load_base

config = load_base(__file__, "_distill.py")
# hard DarkRank (ListMLE), alpha 3, beta 3, list length 4, euclidean: the PWR authors' config.py.example
config.distill.heads = [edict(name="darkrank", weight=1.0,
                              params=edict(alpha=3.0, beta=3.0, list_length=4, relation="euclidean", soft=False))]
