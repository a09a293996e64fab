"""Resume after SIGKILL: the loss trajectory equals an uninterrupted run, and no checkpoint is ever half-written.

A 2-process host run (PWR + HKD, sample_rate 0.6 so that partial FC's class sampling draws on the RNG that the
distillation state restores) saves every 2 steps. It is killed with SIGKILL after step 5 (through the CLI, in a
subprocess), or inside a save (after the temporary file is written, before the rename); resumed, it must log
exactly the losses of an uninterrupted run and end with the same weights."""
import os
import signal
import subprocess
import sys

import pytest
import torch

from host_runs import losses, run_host, tiny_recipe
from teacher_files import write_teacher

DISTILL = """config.distill = edict(
    teacher=edict(network="tiny_cnn", weights=TEACHER + "/model.pt", embedding_size=8, classifier=TEACHER,
                  input_size=(16, 16)),
    classification_weight=0.7,
    heads=[edict(name="pwr", weight=100.0, params=edict(inversion="exp", margin="teacher_diff")),
           edict(name="hkd", weight=0.3, params=edict(temperature=4.0))])
"""


def _recipe(root, name):
    path = root / f"{name}.py"
    path.write_text(f"TEACHER = {str(root / 'teacher')!r}\n" + tiny_recipe(
        DISTILL, num_classes=10, sample_rate=0.6, num_image=48, num_epoch=2, warmup_epoch=1, frequent=2,
        save_all_states=True, save_every_steps=2, output=str(root / name)))
    return str(path)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    write_teacher(root / "teacher", shards=2, seed=3)
    assert run_host(_recipe(root, "reference")) == [0, 0]
    ref_losses = losses(root / "reference")
    assert sorted(ref_losses) == list(range(1, 13))
    return root, ref_losses


def _assert_same_run(out, ref_root, ref_losses):
    got = losses(out)
    assert sorted(got) == sorted(ref_losses)
    for step, loss in ref_losses.items():
        assert got[step] == pytest.approx(loss, rel=1e-6, abs=1e-7), step
    a = torch.load(out / "model.pt", weights_only=True)
    b = torch.load(ref_root / "reference" / "model.pt", weights_only=True)
    for k in b:
        assert torch.allclose(a[k].float(), b[k].float(), rtol=1e-5, atol=1e-6), k


def test_sigkill_after_steps_then_resume_through_the_cli(reference):
    root, ref = reference
    recipe = _recipe(root, "killed")
    env = dict(os.environ, INSIGHTFACE_PWR_FAULT="kill_after_step:5", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "insightface_pwr", "train", recipe, "--nproc", "2"], env=env,
                          capture_output=True, text=True, timeout=300, start_new_session=True)
    assert proc.returncode != 0, proc.stderr[-3000:]
    assert sorted(losses(root / "killed")) == [1, 2, 3, 4, 5]
    saved = torch.load(root / "killed" / "checkpoint_gpu_0.pt", weights_only=True)
    assert saved["global_step"] == 4
    assert run_host(recipe, overrides={"resume": True}) == [0, 0]
    _assert_same_run(root / "killed", root, ref)


@pytest.mark.parametrize("nth_save, distill_step", [(3, 2), (4, 4)],
                         ids=["in-distill-save", "in-checkpoint-save"])
def test_sigkill_during_a_save_then_resume(reference, nth_save, distill_step):
    """Saves per process: step 2 -> distill (1), checkpoint (2); step 4 -> distill (3), checkpoint (4)."""
    root, ref = reference
    name = f"killed_in_save_{nth_save}"
    recipe = _recipe(root, name)
    assert run_host(recipe, fault=f"kill_in_save:{nth_save}") == [-signal.SIGKILL, -signal.SIGKILL]
    out = root / name
    assert any(".tmp." in p.name for p in out.iterdir())  # killed between write and rename
    ckpt = torch.load(out / "checkpoint_gpu_1.pt", weights_only=True)
    distill = torch.load(out / "distill_gpu_1.pt", weights_only=True)
    assert ckpt["global_step"] == 2 and distill["global_step"] == distill_step
    assert run_host(recipe, overrides={"resume": True}) == [0, 0]
    _assert_same_run(out, root, ref)
