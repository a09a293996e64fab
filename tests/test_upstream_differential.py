"""The CPU host's step against UPSTREAM's own step: arcface_torch's ``PartialFC_V2``, ``CombinedMarginLoss``,
``PolynomialLRWarmup`` and ``configs/base.py``, imported from a temporary patched copy of the pinned snapshot.

Same initial weights (backbone, partial FC), same batch, same recipe: the host's ``PartialFC`` + ``MarginSoftmax``
and upstream's ``PartialFC_V2`` + ``CombinedMarginLoss`` give the same loss and the same gradients of the backbone
(after DDP's averaging), of partial FC's shard and the same head states, for every head family (HKD through the
hooks' ``PartialFCLogits`` observer on upstream's own partial FC), CosFace and ArcFace, sample_rate 1 and 0.3
(seeded identically: the same classes are kept, checked), with 1 and 2 gloo processes. HKD on 2 processes equals
one process on the concatenated batch, through upstream's partial FC. The host's lr schedule equals upstream's
scheduler step by step, and the recipe defaults equal upstream's ``configs/base.py``.

Upstream's partial FC calls ``.cuda()``: in the forked gloo workers ``torch.Tensor.cuda`` is the identity
(:func:`upstream_helpers.cuda_calls_stay_on_cpu`); nothing else of upstream is replaced.
"""
from __future__ import annotations

import copy
import runpy
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from insightface_pwr.distill.lr_schedules import PolynomialWarmupLR
from insightface_pwr.distill.recipe import UPSTREAM_DEFAULTS, apply_defaults, validate_recipe
from insightface_pwr.distill.sharding import shard_range
from insightface_pwr.host.partial_fc import MarginSoftmax, PartialFC
from insightface_pwr.models.backbones import get_model

from upstream_helpers import cuda_calls_stay_on_cpu, extract_upstream, load_upstream_module, patched_copy

import gloo_helpers  # noqa: E402  (tests/, on the path through tests/conftest.py)

D, C, N_GLOBAL, HW = 8, 64, 8, 16  # embedding size, classes, global batch, image side (tiny_cnn)
ARCFACE, COSFACE = (1.0, 0.5, 0.0), (1.0, 0.0, 0.35)
# every head family (small parameters where the defaults assume big batches)
HEADS = {
    "none": None,
    "pwr_local": dict(name="pwr", weight=10.0),
    "pwr_global": dict(name="pwr", weight=10.0, gather="global", params=dict(inversion="diff", margin=0.1)),
    "rkd_d": dict(name="rkd_d", weight=2.0, gather="global"),
    "rkd_a": dict(name="rkd_a", weight=2.0),
    "rkd_da": dict(name="rkd_da", weight=2.0, params=dict(relation="cosine")),
    "darkrank": dict(name="darkrank", weight=1.0, params=dict(list_length=3)),
    "feature": dict(name="feature", weight=3.0),
    "ekd": dict(name="ekd", weight=1.0, params=dict(topk=4, anchors=(2, 4))),
    "adadistill": dict(name="adadistill", weight=1.0, params=dict(num_classes=C, embedding_size=D)),
    "coupleface": dict(name="coupleface_provisional", weight=1.0, gather="global", params=dict(num_negatives=3)),
    "hkd": dict(name="hkd", weight=5.0, params=dict(temperature=4.0)),
}


@pytest.fixture(scope="module")
def upstream_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("upstream")
    return patched_copy(extract_upstream(root / "pristine"), root / "patched")


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A random tiny_cnn teacher (model.pt) and its C x D classifier in 3 arcface_torch shards."""
    folder = tmp_path_factory.mktemp("teacher")
    torch.manual_seed(11)
    torch.save(get_model("tiny_cnn", num_features=D).state_dict(), folder / "model.pt")
    weight = torch.randn(C, D)
    for r in range(3):
        start, count = shard_range(C, 3, r)
        torch.save({"state_dict_softmax_fc": {"weight": weight[start:start + count]}},
                   folder / f"checkpoint_gpu_{r}.pt")
    return folder


def _recipe(teacher: str, margins, sample_rate: float, head) -> dict:
    cfg = dict(network="tiny_cnn", embedding_size=D, margin_list=margins, sample_rate=sample_rate, rec="synthetic",
               num_classes=C, num_image=1000, num_epoch=2, warmup_epoch=0, val_targets=[],
               output=str(Path(teacher) / "runs"),  # a temporary folder (the hooks lock it), never the working one
               frequent=1)
    if head is not None:
        cfg["distill"] = dict(teacher=dict(weights=str(Path(teacher) / "model.pt"), network="tiny_cnn",
                                           classifier=teacher, input_size=(HW, HW)),
                              # adadistill IS the loss (it replaces partial FC's margin softmax): weight 0 for CosFace
                              classification_weight=0.0 if head["name"] == "adadistill" else 0.5,
                              heads=[copy.deepcopy(head)])
    cfg = apply_defaults(cfg, "differential")
    validate_recipe(cfg)
    return cfg


def _batch(global_n: int):
    """Images, and labels with repeats (few distinct classes: with sample_rate 0.3 every rank keeps random
    negatives besides its positives)."""
    g = torch.Generator().manual_seed(5)
    img = torch.randn(global_n, 3, HW, HW, generator=g)
    labels = torch.tensor([3, 40, 3, 17, 63, 40, 0, 17] * (global_n // 8))
    return img, labels


def _step(rank, world, tree, cfg, kind, train_mode, global_n=N_GLOBAL):
    """One training step as train_v2.py orders it; ``kind`` "host" or "upstream" picks the partial FC."""
    from insightface_pwr.integration.arcface_torch.build import build_hooks
    torch.manual_seed(0)
    backbone = get_model("tiny_cnn", num_features=D)
    backbone.train(train_mode)
    backbone = torch.nn.parallel.DistributedDataParallel(backbone, broadcast_buffers=False)
    full_weight = torch.normal(0, 0.01, (C, D), generator=torch.Generator().manual_seed(1))
    if kind == "host":
        pfc = PartialFC(MarginSoftmax(64, *cfg.margin_list), D, C, cfg.sample_rate)
    else:
        losses = load_upstream_module(tree, "losses")
        pfc_mod = load_upstream_module(tree, "partial_fc_v2")
        margin = losses.CombinedMarginLoss(64, *cfg.margin_list, cfg.interclass_filtering_threshold)
        pfc = pfc_mod.PartialFC_V2(margin, D, C, cfg.sample_rate, False)
    with torch.no_grad():
        pfc.weight.copy_(full_weight[pfc.class_start:pfc.class_start + pfc.num_local])
    opt = torch.optim.SGD([{"params": backbone.parameters()}, {"params": pfc.parameters()}], lr=cfg.lr,
                          momentum=0.9, weight_decay=cfg.weight_decay)
    hooks = None
    if cfg.get("distill") is not None:
        hooks = build_hooks(cfg, backbone=backbone, partial_fc=pfc, optimizer=opt, rank=rank, world_size=world,
                            local_rank=rank, model_factory=get_model)
    img, labels = _batch(global_n)
    n = global_n // world
    img, labels = img[rank * n:(rank + 1) * n], labels[rank * n:(rank + 1) * n]
    torch.manual_seed(123)  # partial FC's sampling draws torch.rand on the global RNG (both)
    emb = backbone(img)
    loss = pfc(emb, labels.clone())
    if hooks is not None:
        loss = hooks.step(1, img, emb, labels.clone(), loss)
    loss.backward()
    # adadistill freezes partial FC's weight (the centres, updated in the step): compare the centres themselves
    pfc_out = pfc.weight.grad if pfc.weight.grad is not None else pfc.weight.detach()
    out = {"loss": loss.item(), "pfc_grad": pfc_out.numpy().copy(),
           "backbone_grad": {k: p.grad.numpy().copy() for k, p in backbone.module.named_parameters()},
           "index": pfc.weight_index.numpy().copy() if cfg.sample_rate < 1 else None,
           "heads": {}, "groups": [len(g["params"]) for g in opt.param_groups]}
    if hooks is not None:
        out["heads"] = {f"{i}.{k}": v.numpy().copy() for i, t in enumerate(hooks.terms)
                        for k, v in t.head.state_dict().items() if v.is_floating_point()}
        hooks.end()
    return out


def _host_vs_upstream_worker(rank, world, tree, teacher, cases):
    cuda_calls_stay_on_cpu()
    warnings.simplefilter("ignore")
    torch.set_default_dtype(torch.float64)  # everything, upstream's gather buffers included: exact comparisons
    results = {}
    for name, (margins, sample_rate, head) in cases.items():
        cfg = _recipe(teacher, margins, sample_rate, head)
        results[name] = {kind: _step(rank, world, tree, copy.deepcopy(cfg), kind, True)
                         for kind in ("host", "upstream")}
    return results


def _close(a, b, rtol, atol) -> bool:
    """Equal up to ``rtol`` of the larger magnitude of ``a`` (gradients: their scale, not each entry's)."""
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and bool(np.abs(a - b).max(initial=0.0) <= rtol * np.abs(a).max(initial=0.0) + atol)


def _compare(a, b, what, rtol=1e-9, atol=1e-12):
    """Mismatch descriptions (empty when equal)."""
    bad = []
    if not _close(a["loss"], b["loss"], rtol, atol):
        bad.append(f"{what}: loss {a['loss']!r} vs {b['loss']!r}")
    if (a["index"] is None) != (b["index"] is None) or (a["index"] is not None and
                                                          not np.array_equal(a["index"], b["index"])):
        bad.append(f"{what}: sampled classes {a['index']} vs {b['index']}")
    elif not _close(a["pfc_grad"], b["pfc_grad"], rtol, atol):
        bad.append(f"{what}: partial FC gradient, max diff {np.abs(a['pfc_grad'] - b['pfc_grad']).max():.3g} "
                   f"of {np.abs(a['pfc_grad']).max():.3g}")
    for k, g in a["backbone_grad"].items():
        if not _close(g, b["backbone_grad"][k], rtol, atol):
            bad.append(f"{what}: backbone gradient {k}, max diff {np.abs(g - b['backbone_grad'][k]).max():.3g} "
                       f"of {np.abs(g).max():.3g}")
    if a["heads"].keys() != b["heads"].keys() or a["groups"] != b["groups"]:
        bad.append(f"{what}: head states {sorted(a['heads'])} vs {sorted(b['heads'])}, "
                   f"optimizer groups {a['groups']} vs {b['groups']}")
    for k, v in a["heads"].items():
        if k in b["heads"] and not _close(v, b["heads"][k], rtol, atol):
            bad.append(f"{what}: head state {k}, max diff {np.abs(v - b['heads'][k]).max():.3g}")
    return bad


@pytest.mark.parametrize("world", [1, 2])
def test_host_step_equals_upstream_step(upstream_tree, teacher_dir, world):
    cases = {}
    for head_name, head in HEADS.items():
        for margin_name, margins in (("arcface", ARCFACE), ("cosface", COSFACE)):
            for sample_rate in (1.0, 0.3):
                cases[f"{head_name}/{margin_name}/sr{sample_rate}"] = (margins, sample_rate, head)
    per_rank = gloo_helpers.run_gloo_processes(_host_vs_upstream_worker, world, str(upstream_tree),
                                               str(teacher_dir), cases, timeout=300)
    bad = []
    for rank, results in enumerate(per_rank):
        for name, r in results.items():
            assert r["host"]["pfc_grad"].any() and any(g.any() for g in r["host"]["backbone_grad"].values())
            # HKD's teacher logits are float32 even here (the teacher runners return float32 embeddings), and
            # upstream's ArcFace rewrites EVERY logit as cos(arccos(x)) in place: float32 rounding of the non-target
            # teacher logits (test_arcface_margin_round_trip_is_the_only_difference); everything else is exact
            rtol = 1e-6 if name.startswith("hkd/arcface") else 1e-9
            bad += _compare(r["host"], r["upstream"], f"rank {rank} {name}", rtol=rtol)
    assert not bad, "host != upstream:\n" + "\n".join(bad)


def _hkd_worker(rank, world, tree, teacher, cases):
    cuda_calls_stay_on_cpu()
    warnings.simplefilter("ignore")
    torch.set_default_dtype(torch.float64)
    return {name: _step(rank, world, tree, _recipe(teacher, margins, 1.0, HEADS["hkd"]), "upstream", False,
                        global_n=16) for name, margins in cases.items()}


def test_hkd_two_processes_equal_one_on_the_concatenated_batch(upstream_tree, teacher_dir):
    """Through upstream's PartialFC_V2: the loss, the backbone gradient (DDP-averaged) and partial FC's gradient
    (the ranks' shards concatenated) of 2 processes equal those of 1 process on the concatenated batch."""
    cases = {"arcface": ARCFACE, "cosface": COSFACE}
    (one,) = gloo_helpers.run_gloo_processes(_hkd_worker, 1, str(upstream_tree), str(teacher_dir), cases)
    two = gloo_helpers.run_gloo_processes(_hkd_worker, 2, str(upstream_tree), str(teacher_dir), cases)
    bad = []
    for name in cases:
        merged = dict(two[0][name], pfc_grad=np.concatenate([two[r][name]["pfc_grad"] for r in range(2)]))
        assert two[0][name]["loss"] == pytest.approx(two[1][name]["loss"], rel=1e-6)
        bad += _compare(one[name], merged, f"hkd {name}: 1 process vs 2")
    assert not bad, "\n".join(bad)


def test_host_lr_schedule_equals_upstream_scheduler(upstream_tree):
    """Upstream's PolynomialLRWarmup (chained updates) and the host's closed form, every step past the end."""
    sched_mod = load_upstream_module(upstream_tree, "lr_scheduler")
    for warmup, total, power in ((0, 20, 1.0), (5, 40, 1.0), (3, 17, 2.0)):
        lrs = []
        for make in (lambda o: sched_mod.PolynomialLRWarmup(o, warmup, total, power),
                     lambda o: PolynomialWarmupLR(o, warmup, total, power)):
            p = torch.nn.Parameter(torch.zeros(1))
            opt = torch.optim.SGD([{"params": [p]}, {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.03}],
                                  lr=0.1)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sched = make(opt)
                seq = []
                for _ in range(total + 5):
                    seq.append(list(sched.get_last_lr()))
                    opt.step()
                    sched.step()
            lrs.append(np.array(seq))
        assert lrs[0][1:].any()
        np.testing.assert_allclose(lrs[1], lrs[0], rtol=1e-9, atol=1e-12, err_msg=f"{warmup, total, power}")


def test_upstream_defaults_equal_configs_base(upstream_tree):
    """UPSTREAM_DEFAULTS (the fallback outside arcface_torch) holds exactly configs/base.py's keys and values
    (``output``: None there, "work_dirs/<recipe>" like upstream's get_config)."""
    base = dict(runpy.run_path(str(upstream_tree / "configs" / "base.py"))["config"])
    assert set(base) == set(UPSTREAM_DEFAULTS)
    for k, v in base.items():
        if k != "output":
            assert UPSTREAM_DEFAULTS[k] == v and type(UPSTREAM_DEFAULTS[k]) in (type(v), float), k


def test_arcface_margin_round_trip_is_the_only_difference(upstream_tree):
    """Why HKD with ArcFace matches upstream only to float32 precision: upstream's CombinedMarginLoss turns every
    logit x into cos(arccos(x)) (in place, under no_grad), the host's MarginSoftmax leaves non-target logits exact.
    In float64 the two agree to 1e-12; in float32 upstream's non-target logits move by float32 rounding."""
    losses = load_upstream_module(upstream_tree, "losses")
    labels = torch.tensor([[3], [-1], [0], [7]])
    for dtype, worst in ((torch.float64, 1e-12), (torch.float32, 1e-4)):
        x = (torch.rand(4, 10, generator=torch.Generator().manual_seed(2), dtype=dtype) * 2 - 1).clamp(-1, 1)
        up = losses.CombinedMarginLoss(64, *ARCFACE)(x.clone(), labels)
        host = MarginSoftmax(64, *ARCFACE)(x.clone(), labels)
        diff = (up - host).abs().max().item()
        assert diff <= worst, (dtype, diff)
        if dtype == torch.float32:
            assert diff > 0  # the round trip is visible in float32 (else the tolerance above would be unneeded)


def test_build_hooks_needs_no_total_step(upstream_tree, teacher_dir):
    """The patched train_v2.py calls build_hooks BEFORE it sets cfg.total_step / warmup_step / total_batch_size, and
    hooks.lr_scheduler after: the lr schedule factory must read them lazily (an edict raises on a missing key)."""
    from insightface_pwr.integration.arcface_torch.build import build_hooks
    src = (upstream_tree / "train_v2.py").read_text()
    assert src.index("build_hooks(cfg") < src.index("cfg.total_step =") < src.index("distill_hooks.lr_scheduler(")
    cfg = _recipe(str(teacher_dir), COSFACE, 1.0, None)
    cfg.lr_schedule = {"kind": "poly", "power": 2.0}
    validate_recipe(cfg)
    assert "total_step" not in cfg
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    hooks = build_hooks(cfg, backbone=torch.nn.Linear(1, 1), partial_fc=None, optimizer=opt, rank=0, world_size=1,
                        local_rank=0)
    cfg.total_batch_size, cfg.warmup_step, cfg.total_step = 8, 2, 10  # as train_v2.py sets them, after
    sched = hooks.lr_scheduler(object())
    assert isinstance(sched, PolynomialWarmupLR) and (sched.warmup_iters, sched.total_iters) == (2, 10)
