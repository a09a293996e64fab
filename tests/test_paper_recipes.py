"""Every recipe of recipes/ against the PWR paper's setup (Nikitin et al., GraphiCon 2020, sec. 4.2 and Table 1).

The expected values are written here from the paper's text (../shared/spec/HEADS.md, last section), not read back
from the recipes; the recipes are loaded through the same load_recipe that training uses.
"""
from pathlib import Path

import pytest

from insightface_pwr.distill.recipe import load_recipe

RECIPES = Path(__file__).resolve().parents[1] / "recipes"

# Table 1 rows: file -> (CosFace weight, {head: (weight, params that must hold)})
HKD = ("hkd", 0.3, {"temperature": 4.0, "t2_scale": False})
RKD_D = ("rkd_d", 100.0, {"relation": "euclidean"})
RKD_A = ("rkd_a", 200.0, {})
RKD_DA = ("rkd_da", 100.0, {"relation": "euclidean"})  # rkd_d + 2 * rkd_a: 100 * D + 200 * A
DARK = ("darkrank", 1.0, {"alpha": 3.0, "beta": 3.0, "list_length": 4, "soft": False})


def pwr(inversion, margin, weight=100.0, **more):
    # cosine: the paper's section 3.1, footnote 3 (slightly better than euclidean for PWR)
    return ("pwr", weight, {"inversion": inversion, "relation": "cosine",
                            **({} if margin is None else {"margin": margin}), **more})


ROWS = {
    "rkd_d.py": (1.0, [RKD_D]), "rkd_a.py": (1.0, [RKD_A]), "rkd_da.py": (1.0, [RKD_DA]),
    "darkrank.py": (1.0, [DARK]), "hkd.py": (0.7, [HKD]),
    "hkd_rkd_d.py": (0.7, [HKD, RKD_D]), "hkd_rkd_a.py": (0.7, [HKD, RKD_A]), "hkd_rkd_da.py": (0.7, [HKD, RKD_DA]),
    "hkd_darkrank.py": (0.7, [HKD, DARK]),
    "pwr_diff_m01.py": (0.0, [pwr("diff", 0.1)]), "pwr_diff_std.py": (0.0, [pwr("diff", "teacher_std")]),
    "pwr_diff.py": (0.0, [pwr("diff", "teacher_diff")]),
    "pwr_exp_m01.py": (0.0, [pwr("exp", 0.1)]), "pwr_exp_std.py": (0.0, [pwr("exp", "teacher_std")]),
    "pwr_exp.py": (0.0, [pwr("exp", "teacher_diff")]),
    "pwr_ranknet.py": (0.0, [pwr("ranknet", None, weight=15.0)]),
}


def check_paper_setup(cfg, network):
    assert cfg.network == network and cfg.embedding_size == 512
    assert tuple(cfg.margin_list) == (1.0, 0.0, 0.35)                 # CosFace m = 0.35 (scale 64 is fixed)
    assert cfg.num_classes == 85742 and cfg.num_image == 5822653     # MS1M-ArcFace
    assert cfg.batch_size * 6 == 552 and cfg.batch_size == 92         # 92 per GPU on 6 GPUs
    assert cfg.optimizer == "sgd" and cfg.lr == 0.1 and cfg.momentum == 0.9 and cfg.weight_decay == 5e-4
    assert cfg.num_epoch == 13 and cfg.warmup_epoch == 0 and cfg.sample_rate == 1.0
    assert list(cfg.val_targets) == ["lfw", "cplfw", "agedb_30"]
    # every model (teacher, baseline, distilled students): lr divided by 10 every 2 epochs, no warmup
    s = cfg.lr_schedule
    assert (s.kind, s.every_epochs, s.factor, s.warmup_epochs) == ("step", 2, 0.1, 0)


def test_folder_holds_exactly_the_papers_recipes():
    public = {p.name for p in RECIPES.glob("*.py") if not p.name.startswith("_")}
    assert public == set(ROWS) | {"teacher_r50.py", "student_r18.py"} | set(FR_RECIPES)


@pytest.mark.parametrize("name, network", [("student_r18.py", "r18"), ("teacher_r50.py", "r50")])
def test_baseline_and_teacher(name, network):
    cfg = load_recipe(RECIPES / name)
    check_paper_setup(cfg, network)
    assert "distill" not in cfg and cfg.output == f"work_dirs/{name[:-3]}"  # no teacher: trained from scratch
    if name == "teacher_r50.py":
        assert cfg.save_all_states is True  # the HKD rows read its classifier shards


@pytest.mark.parametrize("name", sorted(ROWS))
def test_table1_row(name):
    cfg = load_recipe(RECIPES / name)
    check_paper_setup(cfg, "r18")
    d = cfg.distill
    assert d.teacher.network == "r50" and d.teacher.weights == "work_dirs/teacher_r50/model.pt"
    assert d.student_init == "work_dirs/student_r18/model.pt"      # students start from the baseline
    assert d.lr_schedule is None  # the schedule is the top-level config.lr_schedule (check_paper_setup)
    cls_weight, heads = ROWS[name]
    assert d.classification_weight == cls_weight
    assert [(h.name, h.weight) for h in d.heads] == [(n, w) for n, w, _ in heads]
    for h, (_, _, params) in zip(d.heads, heads):
        for k, v in params.items():
            assert h.params[k] == v, (name, h.name, k)
    uses_hkd = any(h.name == "hkd" for h in d.heads)
    assert (d.teacher.classifier == "work_dirs/teacher_r50") if uses_hkd else d.teacher.classifier is None
    assert cfg.output == f"work_dirs/{name[:-3]}"


@pytest.mark.parametrize("name", ["teacher_r50.py", "student_r18.py", "pwr_exp.py"])
def test_lr_schedule_values_over_13_epochs(name):
    """0.1 divided by 10 every 2 epochs, per epoch, through the hooks the trainer builds from the recipe (the
    distill section is dropped for pwr_exp.py: its teacher files do not exist here; the schedule is the same key)."""
    import torch
    from insightface_pwr.integration.arcface_torch import build_hooks
    from insightface_pwr.distill.lr_schedules import PolynomialWarmupLR, StepEpochLR
    cfg = load_recipe(RECIPES / name)
    cfg.pop("distill", None)
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    hooks = build_hooks(cfg, backbone=model, partial_fc=model, optimizer=opt, rank=0, world_size=6, local_rank=0)
    cfg.num_image = 3 * 552  # 3 steps per epoch on 6 GPUs (what the loop derives: num_image // total_batch_size)
    cfg.total_batch_size = cfg.batch_size * 6
    cfg.warmup_step, cfg.total_step = 0, 13 * 3
    sched = hooks.lr_scheduler(PolynomialWarmupLR(opt, cfg.warmup_step, cfg.total_step))
    assert isinstance(sched, StepEpochLR)
    lrs = []
    for _ in range(13 * 3):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    per_epoch = lrs[::3]
    expected = [0.1, 0.1, 0.01, 0.01, 1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5, 1e-6, 1e-6, 1e-7]
    assert per_epoch == pytest.approx(expected, rel=1e-9)
    assert lrs == pytest.approx([lr for lr in expected for _ in range(3)], rel=1e-9)  # constant in each epoch


# The face-recognition distillation methods (shared/spec/HEADS_FR.md): file -> (margin_list, per-GPU batch,
# epochs, lr milestones, classification weight, [(head, weight, gather, params that must hold)])
FR_RECIPES = {
    # TFace's EKD: ArcFace m 0.4; lr x 0.1 at 10, 18, 22 of 26; EKD weight = the GPUs replicated (8)
    "ekd.py": ((1.0, 0.4, 0.0), 64, 26, [10, 18, 22], 1.0,
               [("ekd", 8.0, "global", {"topk": 2000, "t": 0.01, "momentum": 0.01, "w_pos": 0.02, "w_neg": 0.01,
                                        "anchors": [10, 100, 1000, 10000, 100000, 1000000]})]),
    # AdaArcDistill: m 0.45, s 64, alpha'; 4 x 128; x 0.1 at 8, 14, 20, 25 of 26; the head is the loss
    "adadistill.py": ((1.0, 0.45, 0.0), 128, 26, [8, 14, 20, 25], 0.0,
                      [("adadistill", 1.0, "local", {"margin_type": "arcface", "m": 0.45, "s": 64.0,
                                                     "adaptive_weighted_alpha": True})]),
    # ProxylessKD: the teacher's ArcFace (m 0.5) over its frozen classifier, no head (choices: AdaDistill's setup)
    "proxylesskd.py": ((1.0, 0.5, 0.0), 128, 26, [8, 14, 20, 25], 1.0, []),
    "coupleface.py": ((1.0, 0.5, 0.0), 128, 26, [10, 18, 22], 1.0, [("coupleface_provisional", 1.0, "local", {})]),
}


@pytest.mark.parametrize("name", sorted(FR_RECIPES))
def test_face_distillation_recipe(name):
    from insightface_pwr.cli import main
    cfg = load_recipe(RECIPES / name)
    margins, batch, epochs, milestones, cls_weight, heads = FR_RECIPES[name]
    assert cfg.network == "mbf" and cfg.embedding_size == 512 and tuple(cfg.margin_list) == margins
    assert cfg.num_classes == 85742 and cfg.num_image == 5822653 and cfg.sample_rate == 1.0   # MS1MV2
    assert cfg.batch_size == batch and cfg.num_epoch == epochs and cfg.warmup_epoch == 0
    assert cfg.optimizer == "sgd" and cfg.lr == 0.1 and cfg.momentum == 0.9 and cfg.weight_decay == 5e-4
    assert (cfg.lr_schedule.kind, cfg.lr_schedule.milestones, cfg.lr_schedule.factor) == ("multistep", milestones, 0.1)
    d = cfg.distill
    assert (d.teacher.network, d.teacher.embedding_size) == ("r50", 512)
    assert d.classification_weight == cls_weight
    assert [(h.name, h.weight, h.gather) for h in d.heads] == [(n, w, g) for n, w, g, _ in heads]
    for h, (_, _, _, params) in zip(d.heads, heads):
        for k, v in params.items():
            assert h.full_params[k] == v, (name, h.name, k)
    assert (d.method == "proxylesskd") == (name == "proxylesskd.py") == d.inherit_classifier
    assert (d.teacher.classifier is not None) == (name == "proxylesskd.py")
    assert main(["check", str(RECIPES / name)]) == 0


def test_multistep_lr_schedule_through_the_hooks():
    """ekd.py's schedule: 0.1, 0.01, 1e-3, 1e-4 switching at epochs 10, 18, 22 (2 steps per epoch here)."""
    import torch
    from insightface_pwr.integration.arcface_torch import build_hooks
    from insightface_pwr.distill.lr_schedules import PolynomialWarmupLR
    cfg = load_recipe(RECIPES / "ekd.py")
    cfg.pop("distill", None)
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    hooks = build_hooks(cfg, backbone=model, partial_fc=model, optimizer=opt, rank=0, world_size=8, local_rank=0)
    cfg.num_image, cfg.total_batch_size = 2 * 64 * 8, 64 * 8
    sched = hooks.lr_scheduler(PolynomialWarmupLR(opt, 0, 26 * 2))
    lrs = []
    for _ in range(26 * 2):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [0.1] * 10 + [0.01] * 8 + [1e-3] * 4 + [1e-4] * 4
    assert lrs == pytest.approx([lr for lr in expected for _ in range(2)], rel=1e-9)
