"""Shared by the demo's distilled students (as recipes/_distill.py): teacher, start from the baseline, schedule."""
from pathlib import Path

from easydict import EasyDict as edict

import insightface_pwr.demo.backbones  # noqa: F401  (registers demo_resnet, the teacher's network)
from insightface_pwr.recipe import load_base

RUNS = Path(__file__).resolve().parents[1] / "runs"
config = load_base(__file__, "student.py")
config.num_epoch = config.demo_epochs.distill
config.distill = edict(
    teacher=edict(network="demo_resnet", weights=str(RUNS / "teacher" / "model.pt"), embedding_size=128,
                  input_size=tuple(config.image_size)),
    student_init=str(RUNS / "student" / "model.pt"),          # students start from the baseline's weights
    lr_schedule=edict(kind="step", every_epochs=2, factor=0.1),  # lr 0.1, / 10 every 2 epochs (the paper's)
    classification_weight=1.0,
    heads=[])
