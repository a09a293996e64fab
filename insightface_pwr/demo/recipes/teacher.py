"""Demo teacher (the paper's r50): the host's ``demo_resnet``, 128-d, CosFace, arcface_torch's lr schedule."""
from pathlib import Path

import insightface_pwr.demo.backbones  # noqa: F401  (registers demo_resnet with the CPU host)
from insightface_pwr.recipe import load_base

config = load_base(__file__, "_data.py")
config.network = "demo_resnet"
config.embedding_size = 128
config.margin_list = (1.0, 0.0, 0.35)   # CosFace m = 0.35, scale 64, as the paper
config.num_epoch = config.demo_epochs.teacher
config.output = str(Path(__file__).resolve().parents[1] / "runs" / "teacher")
