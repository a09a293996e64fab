"""Control (not a Table 1 row): the baseline trained further with CosFace alone on the distilled runs' schedule,
so that a distilled student's gain is not mistaken for the gain of its extra epochs."""
from pathlib import Path

from insightface_pwr.recipe import load_base

config = load_base(__file__, "_distill.py")
config.output = str(Path(__file__).resolve().parents[1] / "runs" / "student_ft")
