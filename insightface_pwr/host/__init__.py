"""A small CPU host for the distillation hooks: it mirrors arcface_torch's ``train_v2.py`` loop (see ``train.py``)
with a CPU partial FC, small backbones and gloo, for tests and demos on machines without CUDA.

    insightface-pwr train RECIPE --nproc 2        # or: python -m insightface_pwr train RECIPE --nproc 2
"""
from .launch import launch

__all__ = ["launch"]
