"""Table 1, row "PWR-Exp (teacher-diff)": L = 100 * PWR-Exp, margin m_pq = t_p - t_q: the paper's best."""
from easydict import EasyDict as edict

from insightface_pwr.recipe import load_base

config = load_base(__file__, "_distill.py")
# PWR alone (the paper: "demonstrates quality improvement when used alone"): CosFace weight 0.
# relation "euclidean": the PWR authors' config.py.example uses metric "l2" (the paper does not name it here; the
# ranking of pairs is the same under cosine distance, only the teacher-diff margins change).
config.distill.classification_weight = 0.0
config.distill.heads = [edict(name="pwr", weight=100.0,
                              params=edict(relation="euclidean", inversion="exp", margin="teacher_diff", beta=1.0))]
# beta = 1: the paper does not state it; the authors' config.py.example sets diff_exp_beta = 1.0
