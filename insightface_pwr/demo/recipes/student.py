"""Demo baseline student (the paper's r18): the host's ``tiny_cnn``, 128-d, CosFace alone."""
from pathlib import Path

from insightface_pwr.recipe import load_base

config = load_base(__file__, "_data.py")
config.network = "tiny_cnn"
config.embedding_size = 128             # the teacher's size too, as r18 and r50 are both 512-d in the paper
config.margin_list = (1.0, 0.0, 0.35)
config.num_epoch = config.demo_epochs.student
config.output = str(Path(__file__).resolve().parents[1] / "runs" / "student")
