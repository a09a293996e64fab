"""One training per output folder, and resume only of the same run.

- a second training on a folder that another process holds is refused at once (one line naming the folder and the
  holder's pid), before it writes anything;
- resume with another recipe (here another lr) is refused, naming the differing key with both values;
- resume with another process count names the saved and the current counts;
- the distillation state (``distill_gpu_<rank>.pt``) carries the run's identity too, and the hooks lock the folder
  (the patched upstream train_v2.py builds them on rank 0)."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from insightface_pwr import create_head
from insightface_pwr.cli import main
from insightface_pwr.distill.checkpoint import CheckpointError

LOCK_NAME = ".insightface_pwr.lock"
from insightface_pwr.distill.hooks import DistillHooks, HeadTerm

from host_runs import tiny_recipe

def _recipe(tmp_path, name, out, extra=""):
    path = tmp_path / f"{name}.py"
    path.write_text(tiny_recipe(extra, frequent=2, save_all_states=True, output=str(out)))
    return str(path)


def _error_line(capsys):
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def holder(tmp_path):
    """Another process holding the lock of tmp_path/out (it waits until its stdin closes): a plain flock."""
    out = tmp_path / "out"
    out.mkdir()
    code = textwrap.dedent(f"""
        import fcntl, os, sys
        fd = os.open({str(out / LOCK_NAME)!r}, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB); os.write(fd, str(os.getpid()).encode())
        print("locked", flush=True); sys.stdin.read()
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert proc.stdout.readline().strip() == "locked"
    yield out, proc.pid
    proc.stdin.close()
    proc.wait(30)


@pytest.mark.parametrize("nproc", [1, 2])
def test_second_training_on_a_held_folder_is_refused_before_writing(tmp_path, capsys, holder, nproc):
    out, pid = holder
    rc = main(["train", _recipe(tmp_path, "second", out), "--nproc", str(nproc)])
    line = _error_line(capsys)
    assert rc == 1
    assert str(out.resolve()) in line and f"pid {pid}" in line
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # nothing written


def test_the_lock_is_dropped_at_the_end_and_taken_again(tmp_path):
    out = tmp_path / "out"
    assert main(["train", _recipe(tmp_path, "a", out)]) == 0
    import fcntl
    fd = os.open(str(out / LOCK_NAME), os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free again
    os.close(fd)
    assert main(["train", _recipe(tmp_path, "b", out, "config.resume = True\n")]) == 0


def test_resume_with_another_recipe_names_the_differing_keys(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["train", _recipe(tmp_path, "a", out)]) == 0
    before = torch.load(out / "checkpoint_gpu_0.pt", weights_only=True)["state_dict_backbone"]
    capsys.readouterr()
    rc = main(["train", _recipe(tmp_path, "b", out, "config.lr = 0.02\nconfig.resume = True\n")])
    line = _error_line(capsys)
    assert rc == 1
    assert "config.lr: saved 0.1, now 0.02" in line and str(out / "checkpoint_gpu_0.pt") in line
    after = torch.load(out / "checkpoint_gpu_0.pt", weights_only=True)["state_dict_backbone"]
    assert all(torch.equal(before[k], after[k]) for k in before)  # the other run's checkpoint is untouched


def test_resume_with_keys_that_may_change_is_accepted(tmp_path):
    out = tmp_path / "out"
    assert main(["train", _recipe(tmp_path, "a", out)]) == 0
    assert main(["train", _recipe(tmp_path, "b", out, "config.resume = True\nconfig.frequent = 1\n"
                                                      "config.num_workers = 7\n")]) == 0


def test_resume_with_another_process_count_names_both(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["train", _recipe(tmp_path, "a", out)]) == 0
    capsys.readouterr()
    rc = main(["train", _recipe(tmp_path, "b", out, "config.resume = True\n"), "--nproc", "2"])
    line = _error_line(capsys)
    assert rc == 1 and "1 process(es)" in line and "this run has 2" in line


def _hooks(out, weight, resume=False, identity=None):
    head = create_head("pwr")
    hooks = DistillHooks(teacher=lambda x: x, terms=[HeadTerm("pwr", weight, "embeddings", head, head)],
                         classification_weight=1.0, rank=0, world_size=1, output=str(out), resume=resume,
                         frequent=1, formula=f"L = {weight} * pwr", input_size=(2, 2))
    hooks.run_identity = identity
    return hooks


def test_distill_state_of_another_run_is_refused(tmp_path):
    out = tmp_path / "out"
    h = _hooks(out, 100.0)
    h.save(0, 3)
    h.end()
    with pytest.raises(CheckpointError, match=r"hooks\.pwr\.weight: saved 100\.0, now 50\.0"):
        _hooks(out, 50.0, resume=True).resume(0, 3)
    assert _hooks(out, 100.0, resume=True).resume(0, 3) == (0, 3)  # the same run resumes


def test_distill_state_compares_the_recipe_identity_when_given(tmp_path):
    from insightface_pwr.distill.checkpoint import run_identity
    out = tmp_path / "out"
    h = _hooks(out, 100.0, identity=run_identity({"lr": 0.1, "seed": 1, "resume": False}))
    h.save(0, 3)
    h.end()
    with pytest.raises(CheckpointError, match=r"config\.seed: saved 1, now 2"):
        _hooks(out, 100.0, True, run_identity({"lr": 0.1, "seed": 2, "resume": True})).resume(0, 3)


def test_hooks_lock_the_output_folder(tmp_path, holder):
    out, pid = holder
    with pytest.raises(CheckpointError, match=f"pid {pid}"):
        _hooks(out, 100.0)
