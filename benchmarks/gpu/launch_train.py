"""Run the patched ``train.py`` of the current folder (an arcface_torch copy) under torchrun, with two optional
stand-ins; everything else is upstream's code:

    torchrun --nproc_per_node=1 benchmarks/gpu/launch_train.py [--cpu] RECIPE

- ``torch.utils.tensorboard`` when the ``tensorboard`` package is absent (upstream imports it at the top of
  train_v2.py and utils_callbacks.py; no wheel on the machine): a SummaryWriter that drops the scalars;
- ``--cpu`` (gpu_check.sh --cpu-dry-run): NCCL -> gloo, ``torch.cuda.set_device`` a no-op, ``.cuda()`` the identity
  for modules and tensors, DDP without ``device_ids``. Only for the dry run on a machine without CUDA.
"""
from __future__ import annotations

import os
import runpy
import sys
import types


def _tensorboard_standin() -> None:
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        class SummaryWriter:
            def __init__(self, *a, **k):
                pass

            def add_scalar(self, *a, **k):
                pass

            def close(self):
                pass
        sys.modules["torch.utils.tensorboard"] = types.SimpleNamespace(SummaryWriter=SummaryWriter)
        print("launch_train: no tensorboard package; scalars are not written", file=sys.stderr)


def _cpu_standins() -> None:
    import torch
    import torch.distributed as dist
    init = dist.init_process_group

    def init_process_group(*args, **kwargs):
        kwargs.pop("backend", None)
        return init("gloo", *args[1:], **kwargs)
    dist.init_process_group = init_process_group
    torch.cuda.set_device = lambda *a, **k: None
    torch.nn.Module.cuda = lambda self, *a, **k: self
    torch.Tensor.cuda = lambda self, *a, **k: self
    ddp = torch.nn.parallel.DistributedDataParallel

    class CpuDDP(ddp):
        def __init__(self, module, device_ids=None, **kwargs):
            super().__init__(module, **kwargs)
    torch.nn.parallel.DistributedDataParallel = CpuDDP


def main(argv: list) -> None:
    if argv and argv[0] == "--cpu":
        argv = argv[1:]
        _cpu_standins()
    _tensorboard_standin()
    sys.argv = ["train.py", *argv]
    sys.path.insert(0, os.getcwd())
    runpy.run_path("train.py", run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
