"""Demo of Table 1's best row, PWR-Exp (teacher-diff): L = 100 * PWR-Exp alone (as recipes/pwr_exp.py, with the
euclidean relation of the authors' example config: the demo's measured figures were made with it)."""
from pathlib import Path

from easydict import EasyDict as edict

from insightface_pwr.recipe import load_base

config = load_base(__file__, "_distill.py")
config.distill.classification_weight = 0.0
config.distill.heads = [edict(name="pwr", weight=100.0,
                              params=edict(relation="euclidean", inversion="exp", margin="teacher_diff", beta=1.0))]
config.output = str(Path(__file__).resolve().parents[1] / "runs" / "pwr_exp")
