"""The shared distillation setup of every Table 1 row (not a row itself): teacher and student start.

Each row recipe is ``load_base(__file__, "_distill.py")`` plus its loss terms (classification_weight and heads).
"""
from easydict import EasyDict as edict

from insightface_pwr.recipe import load_base

config = load_base(__file__, "student_r18.py")
config.distill = edict(
    teacher=edict(network="r50", weights="work_dirs/teacher_r50/model.pt", embedding_size=512),
    student_init="work_dirs/student_r18/model.pt",   # "students start from the baseline student's weights"
    # the lr schedule (0.1, divided by 10 every 2 epochs) is student_r18.py's config.lr_schedule
    classification_weight=1.0,                        # CosFace (beta in the paper's eq. 12); rows change it
    heads=[])
