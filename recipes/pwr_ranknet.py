"""Table 1, row "PWR-RankNet": L = 15 * PWR-RankNet, log(1 + exp(-beta (s_p - s_q)))."""
from easydict import EasyDict as edict

from insightface_pwr.recipe import load_base

config = load_base(__file__, "_distill.py")
# PWR alone (the paper: "demonstrates quality improvement when used alone"): CosFace weight 0.
# relation "cosine": the paper (section 3.1, footnote 3) found cosine slightly better than euclidean for PWR, so
# its Table 1 rows most likely used it; the authors' config.py.example says "l2". Both order the pairs of unit
# embeddings the same way, but the margins (teacher-diff, teacher-std) and the loss scale differ (recipes/README.md).
config.distill.classification_weight = 0.0
config.distill.heads = [edict(name="pwr", weight=15.0,
                              params=edict(relation="cosine", inversion="ranknet", beta=1.0))]
# beta = 1: the paper does not state it; the authors' config.py.example sets ranknet_beta = 1.0 (RankNet has no margin)
