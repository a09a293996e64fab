"""Shared helpers of the tests that use the REAL pinned arcface_torch (copied from the shared kit's pristine snapshot to a
temporary folder, never into the repo): extraction, a patched copy, upstream's ``utils`` package on sys.path, and the
CPU stand-ins under which the patched ``train.py`` / ``train_v2.py`` runs in a subprocess.

Imported as ``from upstream_helpers import ...`` by the test files of ``tests/`` (pytest puts the folder on sys.path).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import pytest

from insightface_pwr.cli import main as cli_main
from insightface_pwr.data.paths import shared_dir

COMMIT = "0159b24d44cbc91abbd07b7a6fab0ba923a7fddf"  # the arcface_torch commit the patches are made for
ARCFACE = "recognition/arcface_torch"
# the pristine snapshot of upstream at COMMIT in the shared kit ($INSIGHTFACE_PWR_SHARED, default ../shared)
SNAPSHOT = shared_dir() / "upstream" / "arcface_torch"


def require_upstream_snapshot(why: str = "") -> None:
    """FAIL (never skip: CI has the shared kit) when the pristine upstream snapshot is absent."""
    if not (SNAPSHOT / "train_v2.py").is_file():
        pytest.fail(f"the pristine arcface_torch snapshot {SNAPSHOT} is absent (the shared kit, "
                    f"$INSIGHTFACE_PWR_SHARED)" + (f": {why}" if why else ""))


def extract_upstream(root: Path, only: Optional[str] = None) -> Path:
    """Copy the pinned arcface_torch folder (or only its subfolder ``only``, e.g. "utils") from the shared snapshot
    into ``root / recognition/arcface_torch`` (a temporary folder: the snapshot is read-only); return that path."""
    require_upstream_snapshot()
    dest = root / ARCFACE
    if only is None:
        shutil.copytree(SNAPSHOT, dest, ignore=shutil.ignore_patterns("__pycache__"))
    else:
        shutil.copytree(SNAPSHOT / only, dest / only, ignore=shutil.ignore_patterns("__pycache__"))
    for p in [dest, *dest.rglob("*")]:  # the shared kit has no write bits; the copy must be patchable
        p.chmod(p.stat().st_mode | 0o200)
    return dest


def patched_copy(upstream: Path, target: Path) -> Path:
    """Copy the upstream folder to ``target`` and patch it with ``insightface-pwr patch`` (default patches/)."""
    shutil.copytree(upstream, target)
    assert cli_main(["patch", str(target)]) == 0
    return target


def load_upstream_module(arcface_dir: Path, name: str) -> Any:
    """Import upstream's top-level module ``name`` (``partial_fc_v2``, ``losses``, ``lr_scheduler``...) from the file
    in ``arcface_dir`` under a private name (``sys.modules`` keeps no ``losses`` of upstream's)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(f"_upstream_{name}", Path(arcface_dir) / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cuda_calls_stay_on_cpu() -> None:
    """The one stand-in upstream's ``PartialFC_V2`` needs on CPU: ``Tensor.cuda()`` returns the tensor itself.
    Process-wide and never undone: call it only in a forked worker or a subprocess."""
    import torch
    torch.Tensor.cuda = lambda self, *a, **k: self


def _utils_modules() -> list:
    return [m for m in sys.modules if m == "utils" or m.startswith("utils.")]


def prefer_upstream_utils(monkeypatch: pytest.MonkeyPatch, arcface_dir: Path) -> None:
    """Make ``import utils...`` load upstream's package from ``arcface_dir`` (sys.path first, cached ``utils``
    modules hidden; monkeypatch restores both). Call ``forget_upstream_utils`` when done."""
    monkeypatch.syspath_prepend(str(arcface_dir))
    for name in _utils_modules():
        monkeypatch.delitem(sys.modules, name)


def forget_upstream_utils() -> None:
    """Drop the ``utils`` modules imported from upstream's folder, so that later tests import their own."""
    for name in _utils_modules():
        del sys.modules[name]


# The stand-ins for what cannot run here: NCCL -> gloo (file rendezvous in the cwd), CUDA calls, DDP, partial FC's
# ``.cuda()`` (a CPU PartialFC_V2 with upstream's margin softmax), tensorboard. A script built on it may define
# ``_on_init(backend)`` and ``_on_scalar(tag, value, step)`` (looked up when called) to record those calls.
_CPU_STANDINS = r'''
import json, os, runpy, sys, types
import torch
import torch.distributed as dist
torch.set_num_threads({threads})

def _on_init(backend):
    pass
def _on_scalar(tag, value, step):
    pass

_init = dist.init_process_group
def init_process_group(*args, **kwargs):
    _on_init(kwargs.get("backend", args[0] if args else None))
    if not dist.is_initialized():
        _init(backend="gloo", init_method="file://" + os.path.abspath("pg_rendezvous"), rank=0, world_size=1)
dist.init_process_group = init_process_group
torch.cuda.set_device = lambda *a, **k: None
torch.nn.Module.cuda = lambda self, *a, **k: self

class FakeDDP(torch.nn.Module):
    def __init__(self, module, **kwargs):
        super().__init__()
        self.module = module
    def forward(self, x):
        return self.module(x)
    def register_comm_hook(self, *a):
        pass
    def _set_static_graph(self):
        pass
torch.nn.parallel.DistributedDataParallel = FakeDDP

class SummaryWriter:
    def __init__(self, *a, **k):
        pass
    def add_scalar(self, tag=None, scalar_value=None, global_step=None, **k):
        _on_scalar(tag, scalar_value, global_step)
sys.modules["torch.utils.tensorboard"] = types.SimpleNamespace(SummaryWriter=SummaryWriter)

class PartialFC_V2(torch.nn.Module):
    def __init__(self, margin_loss, embedding_size, num_classes, sample_rate=1.0, fp16=False):
        super().__init__()
        self.margin_softmax = margin_loss
        self.weight = torch.nn.Parameter(torch.normal(0, 0.01, (num_classes, embedding_size)))
    def forward(self, embeddings, labels):
        F = torch.nn.functional
        logits = F.linear(F.normalize(embeddings), F.normalize(self.weight)).clamp(-1, 1)
        return F.cross_entropy(self.margin_softmax(logits, labels), labels)
sys.modules["partial_fc_v2"] = types.SimpleNamespace(PartialFC_V2=PartialFC_V2)
'''


def cpu_runner(body: str, threads: int) -> str:
    """The stand-ins (torch limited to ``threads`` threads) followed by ``body``, which provides ``backbones`` and
    the data modules, runs ``train.py`` with runpy and prints one line ``RESULTS <json>``."""
    return _CPU_STANDINS.replace("{threads}", str(int(threads))) + body


def run_cpu_runner(script: str, tree: Path, threads: int, timeout: float = 300) -> Any:
    """Run ``script`` with ``python -c`` in ``tree`` (OMP_NUM_THREADS=threads, warnings off, no RANK); assert it
    succeeds (showing the end of stderr) and return the JSON it printed after ``RESULTS ``."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
    env.pop("RANK", None)
    out = subprocess.run([sys.executable, "-c", script], cwd=tree, capture_output=True, text=True, env=env,
                         timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.split("RESULTS ", 1)[1])
