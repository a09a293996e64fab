"""CoupleFace (Liu et al., ECCV 2022), PROVISIONAL: L = ArcFace(m 0.5, s 64) + FCD + RAD; r50 -> mbf.

Only the paper's abstract was read (shared/spec/HEADS_FR.md): the objective adds Mutual Relation Distillation
(mined informative relations, a Relation-Aware Distillation loss) to Feature Consistency Distillation. No code is
public. The head ``coupleface_provisional`` and every value below are choices, not the paper's; rename and fix
them once sections 3-4 of the paper are read.
"""
from easydict import EasyDict as edict

from insightface_pwr.recipe import load_base

config = load_base(__file__, "_fr_base.py")
config.margin_list = (1.0, 0.5, 0.0)       # choice: ArcFace m 0.5, s 64 (arcface_torch's MS1MV2 default)
config.batch_size = 128                    # choice: 128 per GPU
config.num_epoch = 26                      # choice: the EKD / AdaDistill schedule length
config.lr_schedule = edict(kind="multistep", milestones=[10, 18, 22], factor=0.1)   # choice: EKD's
config.distill.classification_weight = 1.0
# choice: L_FCD (squared L2 of normalised embeddings) + L_RAD (squared error of the cosine relations of every
# positive pair and, per sample, its k = 10 hardest teacher negatives), both weight 1; needs equal sizes
config.distill.heads = [edict(name="coupleface_provisional", weight=1.0, params=edict())]
