"""The CPU host honours the top-level ``config.lr_schedule`` without a ``distill`` section (as the patched
train_v2.py does): the per-step learning rates follow the step schedule written out here by hand, the loss is
upstream's alone, and no distillation state is written. Without the key, upstream's polynomial decay stays."""
import json

import pytest
from easydict import EasyDict as edict

from insightface_pwr.host.train import run_host
from insightface_pwr.distill.recipe import apply_defaults, validate_recipe

from gloo_helpers import run_gloo_processes

SPE = 4  # steps per epoch: 48 images / (6 per process x 2 processes)


def _cfg(root, name, schedule):
    cfg = apply_defaults(edict(
        margin_list=(1.0, 0.0, 0.35), network="tiny_cnn", embedding_size=8, rec="synthetic", num_classes=10,
        num_image=48, num_epoch=3, warmup_epoch=0, val_targets=[], batch_size=6, image_size=(16, 16),
        frequent=2, lr=0.05, save_all_states=True, output=f"{root}/{name}"))
    if schedule is not None:
        cfg.lr_schedule = schedule
    validate_recipe(cfg)
    assert cfg.get("distill") is None
    return cfg


def _worker(rank, world, root):
    import insightface_pwr.integration.arcface_torch.build as arcface
    built = []
    build = arcface.build_hooks

    def spy_build(*a, **k):
        built.append(build(*a, **k))
        return built[-1]

    arcface.build_hooks = spy_build
    try:
        run_host(_cfg(root, "step", edict(kind="step", every_epochs=1, factor=0.1)), rank, world)
        run_host(_cfg(root, "step2", edict(kind="step", every_epochs=2, factor=0.5)), rank, world)
        run_host(_cfg(root, "upstream", None), rank, world)
    finally:
        arcface.build_hooks = build
    return {"built": len(built), "teacher": [h.teacher is None for h in built], "terms": [h.terms for h in built]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("host_lr_schedule")
    return root, run_gloo_processes(_worker, 2, str(root), timeout=300)


def _lrs(out):
    rows = [json.loads(line) for line in (out / "host_losses.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 3 * SPE + 1))
    return rows


@pytest.mark.parametrize("name, every, factor", [("step", 1, 0.1), ("step2", 2, 0.5)])
def test_host_follows_the_top_level_step_schedule_without_distill(runs, name, every, factor):
    root, results = runs
    for res in results:  # hooks built for the two schedule runs only, with no teacher and no heads
        assert res["built"] == 2 and res["teacher"] == [True, True] and res["terms"] == [[], []]
    rows = _lrs(root / name)
    # the lr logged at step k is the one after k scheduler steps: 0.05 * factor ** ((k // SPE) // every)
    expected = [0.05 * factor ** ((k // SPE) // every) for k in range(1, 3 * SPE + 1)]
    assert [r["lr"] for r in rows] == pytest.approx(expected, rel=1e-12)
    out = root / name
    assert not list(out.glob("distill_gpu_*")), "no distillation state without a distill section"
    log = (out / "training.log").read_text()
    assert "lr schedule: lr x" in log and "distillation: L = " not in log and "distill step" not in log


def test_host_without_the_key_keeps_upstreams_schedule_and_the_same_loss(runs):
    root, _ = runs
    upstream, step = _lrs(root / "upstream"), _lrs(root / "step")
    total = 3 * SPE  # polynomial decay (power 1) from 0.05 to 0 over the 12 steps, no warmup
    assert [r["lr"] for r in upstream] == pytest.approx([0.05 * (1 - k / total) for k in range(1, total + 1)],
                                                       rel=1e-12)
    # step 1 runs before any update and step 2 after one update at the same lr (0.05): the hooks leave the loss
    # exactly upstream's; from step 3 on the learning rates differ
    assert [r["loss"] for r in step[:2]] == [r["loss"] for r in upstream[:2]]
    assert step[2]["loss"] != upstream[2]["loss"]
    assert not (root / "upstream" / "training.log").read_text().count("lr schedule:")
