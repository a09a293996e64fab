"""Resume WITHOUT distillation (a teacher's or a baseline's run) is exact: the host's own checkpoint carries the RNG
states (partial FC's class sampling draws on torch's global RNG), so a run SIGKILLed after step 5 and resumed logs
exactly the losses of an uninterrupted run and ends with the same weights."""

import pytest
import torch

from host_runs import losses, run_host, tiny_recipe

def _recipe(root, name):
    path = root / f"{name}.py"
    path.write_text(tiny_recipe(num_classes=12, sample_rate=0.5, num_image=48, num_epoch=2, warmup_epoch=1,
                                frequent=2, save_all_states=True, save_every_steps=2, output=str(root / name)))
    return str(path)


def test_baseline_resume_after_sigkill_equals_the_uninterrupted_run(tmp_path):
    assert run_host(_recipe(tmp_path, "reference"), 1) == [0]
    ref = losses(tmp_path / "reference")
    assert sorted(ref) == list(range(1, 25))

    recipe = _recipe(tmp_path, "killed")
    assert run_host(recipe, 1, fault="kill_after_step:5") == [-9]
    assert sorted(losses(tmp_path / "killed")) == [1, 2, 3, 4, 5]
    assert run_host(recipe, 1, overrides={"resume": True}) == [0]
    got = losses(tmp_path / "killed")
    assert sorted(got) == sorted(ref)
    for step in ref:  # from step 5 on (replayed after the step-4 checkpoint) too
        assert got[step] == pytest.approx(ref[step], rel=1e-6, abs=1e-7), step
    a = torch.load(tmp_path / "killed" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "reference" / "model.pt", weights_only=True)
    for k in b:
        assert torch.equal(a[k], b[k]), k
