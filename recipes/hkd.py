"""Table 1, row "HKD": L = 0.7 * CosFace + 0.3 * HKD(T = 4)."""
from easydict import EasyDict as edict

from insightface_pwr.recipe import load_base

config = load_base(__file__, "_distill.py")
# HKD compares the teacher's and the student's CosFace logits over the same classes: it needs the teacher's
# classifier, the checkpoint_gpu_*.pt shards that teacher_r50.py saves (save_all_states = True)
config.distill.teacher.classifier = "work_dirs/teacher_r50"
config.distill.classification_weight = 0.7          # beta 0.7 + gamma 0.3 = 1
config.distill.heads = [edict(name="hkd", weight=0.3, params=edict(temperature=4.0, t2_scale=False))]
# t2_scale False: the PWR authors do not multiply the KL term by T^2 = 16
