"""ProxylessKD (Shi et al., arXiv 2011.00265): the student learns through the teacher's frozen classifier;
L = ArcFace(m 0.5, s 64) over the teacher's classifier, no KD term; r50 -> mbf.

``method="proxylesskd"`` (the older ``inherit_classifier=True``): partial FC's weight is the teacher's classifier
(its checkpoint_gpu_*.pt shards, re-sliced to this run's GPUs), frozen; the student's embeddings are pulled into
the teacher's space (a gallery encoded by the teacher, queries by the student). Needs equal embedding sizes.
The paper's own margins and schedule were not read (shared/spec/HEADS_FR.md): choices, marked below.
"""
from easydict import EasyDict as edict

from insightface_pwr.recipe import load_base

config = load_base(__file__, "_fr_base.py")
config.margin_list = (1.0, 0.5, 0.0)       # choice: the teacher's own ArcFace (m 0.5, s 64), arcface_torch's default
# choice: AdaDistill's setup for the same formulation (its "ArcDistill", train_AMLDistill.py), 4 GPUs x 128
config.batch_size = 128
config.num_epoch = 26
config.lr_schedule = edict(kind="multistep", milestones=[8, 14, 20, 25], factor=0.1)
config.distill.method = "proxylesskd"
config.distill.teacher.classifier = "work_dirs/ms1mv2_r50"   # the teacher's checkpoint_gpu_*.pt (save_all_states)
config.distill.classification_weight = 1.0  # the margin softmax over the inherited classifier is the whole loss
config.distill.heads = []
