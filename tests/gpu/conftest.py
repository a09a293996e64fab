"""The GPU tests: skipped without CUDA, so CI (CPU) collects and skips them; benchmarks/gpu_check.sh runs them on
the device machine.

``INSIGHTFACE_PWR_GPU_TESTS_DEVICE=cpu`` runs them on the CPU instead (the device comparisons then compare the CPU
with itself; the speed test skips; the 2-process tests use gloo): a self-check of the test code, nothing more.
"""
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: upstream_helpers
sys.path.insert(0, str(Path(__file__).resolve().parent))  # nccl_workers (spawned processes import it by name)

FORCED = os.environ.get("INSIGHTFACE_PWR_GPU_TESTS_DEVICE")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available() or FORCED == "cpu":
        return
    skip = pytest.mark.skip(reason="no CUDA device (tests/gpu run on the device machine: benchmarks/gpu_check.sh)")
    here = Path(__file__).resolve().parent
    for item in items:
        if Path(str(item.fspath)).resolve().parent == here:
            item.add_marker(skip)


@pytest.fixture
def device():
    return torch.device("cpu") if FORCED == "cpu" else torch.device("cuda", 0)
