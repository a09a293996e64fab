"""Atomic checkpoints: a SIGKILL in the middle of a save leaves the previous file whole; rotation; safe loading."""
import multiprocessing as mp
import os
import pickle
import signal

import pytest
import torch

from insightface_pwr.distill.checkpoint import (CheckpointError, atomic_save, load_candidates, previous_path, safe_load,
                                        save_rotating)


def _save_with_fault(path: str, fault: str, rotating: bool) -> None:
    os.environ["INSIGHTFACE_PWR_FAULT"] = fault
    (save_rotating if rotating else atomic_save)({"step": 2, "w": torch.full((1000,), 2.0)}, path)


@pytest.mark.parametrize("rotating", [False, True])
def test_sigkill_during_save_keeps_the_old_file(tmp_path, rotating):
    path = tmp_path / "ckpt.pt"
    (save_rotating if rotating else atomic_save)({"step": 1, "w": torch.full((1000,), 1.0)}, path)
    proc = mp.get_context("fork").Process(target=_save_with_fault, args=(str(path), "kill_in_save:1", rotating))
    proc.start()
    proc.join(30)
    assert proc.exitcode == -signal.SIGKILL
    leftovers = [p.name for p in tmp_path.iterdir() if ".tmp." in p.name]
    assert leftovers, "the kill should have happened after the temporary file was written"
    state = safe_load(path)
    assert state["step"] == 1 and torch.equal(state["w"], torch.full((1000,), 1.0))


def test_rotation_keeps_two_versions(tmp_path):
    path = tmp_path / "distill_gpu_0.pt"
    assert load_candidates(path) == []
    for step in (1, 2, 3):
        save_rotating({"global_step": step}, path)
    assert [c["global_step"] for c in load_candidates(path)] == [3, 2]
    assert previous_path(path).name == "distill_gpu_0.prev.pt"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["distill_gpu_0.prev.pt", "distill_gpu_0.pt"]


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_safe_load_refuses_pickles_and_names_missing_files(tmp_path):
    p = tmp_path / "evil.pt"
    with open(p, "wb") as f:
        pickle.dump({"x": Evil()}, f)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        safe_load(p)
    with pytest.raises(CheckpointError, match="teacher file not found: .*nope.pt"):
        safe_load(tmp_path / "nope.pt", "teacher")
