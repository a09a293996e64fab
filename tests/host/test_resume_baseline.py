"""Resume WITHOUT distillation (a teacher's or a baseline's run) is exact: the host's own checkpoint carries the RNG
states (partial FC's class sampling draws on torch's global RNG), so a run SIGKILLed after step 5 and resumed logs
exactly the losses of an uninterrupted run and ends with the same weights."""
import json
import multiprocessing as mp
import os

import pytest
import torch

from insightface_pwr.host.launch import free_port
from insightface_pwr.host.train import train_process

RECIPE = '''
from easydict import EasyDict as edict
config = edict()
config.margin_list = (1.0, 0.0, 0.35)
config.network = "tiny_cnn"
config.embedding_size = 8
config.rec = "synthetic"
config.num_classes = 12
config.sample_rate = 0.5
config.num_image = 48
config.num_epoch = 2
config.warmup_epoch = 1
config.val_targets = []
config.batch_size = 4
config.image_size = (16, 16)
config.frequent = 2
config.save_all_states = True
config.save_every_steps = 2
config.output = OUTPUT
'''


def _recipe(root, name):
    path = root / f"{name}.py"
    path.write_text(f"OUTPUT = {str(root / name)!r}\n" + RECIPE)
    return str(path)


def _child(recipe, init, fault, overrides):
    if fault:
        os.environ["INSIGHTFACE_PWR_FAULT"] = fault
    torch.set_num_threads(1)
    try:
        train_process(0, 1, recipe, init, overrides)
    finally:
        os._exit(0)


def _run(recipe, fault="", overrides=None):
    p = mp.get_context("fork").Process(target=_child,
                                       args=(recipe, f"tcp://127.0.0.1:{free_port()}", fault, overrides))
    p.start()
    p.join(120)
    if p.is_alive():
        p.kill()
        p.join()
    return p.exitcode


def _losses(out):
    recs = [json.loads(line) for line in (out / "host_losses.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in recs}


def test_baseline_resume_after_sigkill_equals_the_uninterrupted_run(tmp_path):
    assert _run(_recipe(tmp_path, "reference")) == 0
    ref = _losses(tmp_path / "reference")
    assert sorted(ref) == list(range(1, 25))

    recipe = _recipe(tmp_path, "killed")
    assert _run(recipe, fault="kill_after_step:5") == -9
    assert sorted(_losses(tmp_path / "killed")) == [1, 2, 3, 4, 5]
    assert _run(recipe, overrides={"resume": True}) == 0
    got = _losses(tmp_path / "killed")
    assert sorted(got) == sorted(ref)
    for step in ref:  # from step 5 on (replayed after the step-4 checkpoint) too
        assert got[step] == pytest.approx(ref[step], rel=1e-6, abs=1e-7), step
    a = torch.load(tmp_path / "killed" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "reference" / "model.pt", weights_only=True)
    for k in b:
        assert torch.equal(a[k], b[k]), k
