"""build_hooks over partial FC: teacher classifier shards re-sliced to any world size, HKD over the GLOBAL class
dimension equal to a dense single-process computation on the concatenated batch (values and gradients), the
inherited classifier, and the bad inputs that must fail before training."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from easydict import EasyDict as edict

from gloo_helpers import run_gloo_processes
from insightface_pwr import create_head
from insightface_pwr.distill.sharding import shard_range
from insightface_pwr.integration.arcface_torch.build import build_hooks
from insightface_pwr.integration.arcface_torch.classifier import ClassifierError, PartialFCLogits, load_classifier_rows
from insightface_pwr.models.backbones import get_model
from insightface_pwr.host.partial_fc import MarginSoftmax, PartialFC
from insightface_pwr.distill.recipe import RecipeError, apply_defaults
from insightface_pwr.distill.gather import ClassSharded
from insightface_pwr.distill.teachers import TeacherError

C, DS, DT, N = 20, 6, 5, 8
T = 4.0


def _data():
    g = torch.Generator().manual_seed(0)
    ws, wt = torch.randn(C, DS, generator=g), torch.randn(C, DT, generator=g)
    labels = torch.tensor([0, 19, 3, 3, 7, 12, 6, 13])
    es = ws[labels] + 0.8 * torch.randn(N, DS, generator=g)
    et = wt[labels] + 0.8 * torch.randn(N, DT, generator=g)
    return ws, wt, labels, es, et


def _save_shards(folder, weight, shards):
    folder.mkdir(exist_ok=True)
    for r in range(shards):
        start, count = shard_range(weight.shape[0], shards, r)
        torch.save({"epoch": 1, "global_step": 10, "state_dict_softmax_fc": {"weight": weight[start:start + count]}},
                   folder / f"checkpoint_gpu_{r}.pt")


def test_classifier_rows_resliced_from_any_shard_count(tmp_path):
    weight = torch.randn(C, DT)
    _save_shards(tmp_path / "three", weight, 3)
    for world in (1, 2, 3, 4):
        parts = [load_classifier_rows(str(tmp_path / "three"), C, *shard_range(C, world, r)) for r in range(world)]
        assert torch.equal(torch.cat(parts), weight), world
    with pytest.raises(ClassifierError, match="add up to 20 classes .*config.num_classes is 21"):
        load_classifier_rows(str(tmp_path / "three"), 21, 0, 11)
    (tmp_path / "three" / "checkpoint_gpu_1.pt").unlink()
    with pytest.raises(ClassifierError, match="lacks the shard.*checkpoint_gpu_1.pt"):
        load_classifier_rows(str(tmp_path / "three"), C, 0, 10)


def _hkd_worker(rank, world, shard_dir, sample_rate):
    ws, wt, labels, es, et = _data()
    n = N // world
    torch.manual_seed(100 + rank)  # partial FC's class sampling
    pfc = PartialFC(MarginSoftmax(64.0, 1.0, 0.0, 0.35), DS, C, sample_rate)
    with torch.no_grad():
        pfc.weight.copy_(ws[pfc.class_start:pfc.class_start + pfc.num_local])
    rows = load_classifier_rows(shard_dir, C, *shard_range(C, world, rank))
    logits = PartialFCLogits(pfc, rows, world)
    local = es[rank * n:(rank + 1) * n].clone().requires_grad_()
    ce = pfc(local, labels[rank * n:(rank + 1) * n].clone())
    s, t = logits.pair(et[rank * n:(rank + 1) * n])
    kd = (ClassSharded(create_head("hkd", temperature=T))(student_logits=s, teacher_logits=t) if world > 1
          else create_head("hkd", temperature=T)(student_logits=s, teacher_logits=t))
    (0.7 * ce + 0.3 * kd).backward()
    index = pfc.weight_index if sample_rate < 1 else torch.arange(pfc.num_local)
    return {"ce": ce.item(), "kd": kd.item(), "emb_grad": local.grad.numpy(), "w_grad": pfc.weight.grad.numpy(),
            "t_logits": t.numpy(), "classes": (index + pfc.class_start).numpy(), "start": pfc.class_start}


def _dense(classes, sample_rate):
    """One process, the concatenated batch, the kept classes: explicit formulas."""
    ws, wt, labels, es, et = _data()
    es, ws = es.clone().requires_grad_(), ws.clone().requires_grad_()
    cls = torch.as_tensor(classes)
    target = torch.tensor([int((cls == y).nonzero()) for y in labels])

    def margin_logits(e, w):
        cos = (F.normalize(e) @ F.normalize(w[cls]).t()).clamp(-1, 1)
        onehot = F.one_hot(target, len(cls)).to(cos.dtype)
        return 64.0 * (cos - 0.35 * onehot)

    s, t = margin_logits(es, ws), margin_logits(et, wt).detach()
    ce = -(s.gather(1, target[:, None]).squeeze(1) - s.exp().sum(1).log()).mean()
    ps, pt = torch.softmax(s / T, 1), torch.softmax(t / T, 1)
    kd = (pt * (pt.log() - ps.log())).sum(1).mean()
    (0.7 * ce + 0.3 * kd).backward()
    return ce.item(), kd.item(), es.grad, ws.grad, t


@pytest.mark.parametrize("sample_rate", [1.0, 0.5])
def test_distributed_hkd_equals_single_process(tmp_path, sample_rate):
    ws, wt, *_ = _data()
    _save_shards(tmp_path / "teacher", wt, 3)
    for world in (1, 2):
        res = run_gloo_processes(_hkd_worker, world, str(tmp_path / "teacher"), sample_rate)
        classes = np.concatenate([r["classes"] for r in res])
        if sample_rate == 1.0:
            assert (classes == np.arange(C)).all()
        else:
            assert len(classes) < C
        ce, kd, es_grad, ws_grad, t = _dense(classes, sample_rate)
        n = N // world
        np.testing.assert_allclose(np.concatenate([r["t_logits"] for r in res], axis=1), t.numpy(), rtol=1e-5,
                                   atol=1e-4)
        for rank, r in enumerate(res):
            assert r["ce"] == pytest.approx(ce, rel=1e-5) and r["kd"] == pytest.approx(kd, rel=1e-5)
            np.testing.assert_allclose(r["emb_grad"] / world, es_grad[rank * n:(rank + 1) * n], rtol=1e-4,
                                       atol=1e-6)
            mine = torch.as_tensor(r["classes"])
            local_rows = mine - r["start"]
            # sampled-out centres get no gradient; kept ones get the dense gradient
            np.testing.assert_allclose(r["w_grad"][local_rows.numpy()], ws_grad[mine], rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------- build_hooks, in one process
def _setup(tmp_path, distill, embedding_size=8, num_classes=10):
    torch.manual_seed(0)
    teacher = get_model("tiny_cnn", num_features=8).eval()
    torch.save(teacher.state_dict(), tmp_path / "model.pt")
    _save_shards(tmp_path / "tcls", torch.randn(10, 8), 3)
    cfg = apply_defaults(edict(network="tiny_cnn", embedding_size=embedding_size, num_classes=num_classes,
                               num_image=32, rec="synthetic", num_epoch=1, warmup_epoch=0, val_targets=[],
                               output=str(tmp_path / "out"), margin_list=(1.0, 0.0, 0.35)))
    base = edict(teacher=edict(network="tiny_cnn", weights=str(tmp_path / "model.pt"), input_size=(16, 16),
                               embedding_size=8,
                               classifier=str(tmp_path / "tcls")))
    base.update(distill)
    cfg.distill = base
    backbone = get_model("tiny_cnn", num_features=embedding_size)
    pfc = PartialFC(MarginSoftmax(64, 1.0, 0.0, 0.35), embedding_size, num_classes)
    opt = torch.optim.SGD([{"params": backbone.parameters()}, {"params": pfc.parameters()}], lr=0.1)
    return cfg, backbone, pfc, opt


def _build(cfg, backbone, pfc, opt):
    return build_hooks(cfg, backbone=backbone, partial_fc=pfc, optimizer=opt, rank=0, world_size=1, local_rank=0,
                       model_factory=get_model)


def test_inherited_classifier_is_the_teachers_and_frozen(tmp_path):
    cfg, backbone, pfc, opt = _setup(tmp_path, edict(inherit_classifier=True, heads=[edict(name="pwr")]))
    _build(cfg, backbone, pfc, opt)
    assert torch.equal(pfc.weight, load_classifier_rows(str(tmp_path / "tcls"), 10, 0, 10))
    assert not pfc.weight.requires_grad


def test_combined_loss_and_terms(tmp_path):
    cfg, backbone, pfc, opt = _setup(tmp_path, edict(classification_weight=0.5, heads=[
        edict(name="feature", weight=2.0), edict(name="hkd", weight=0.3, params=edict(temperature=2.0))]))
    hooks = _build(cfg, backbone, pfc, opt)
    img, labels = torch.randn(4, 3, 16, 16), torch.tensor([1, 2, 3, 1])
    emb = backbone(img)
    loss = pfc(emb, labels.clone())
    total = hooks.step(1, img, emb, labels, loss)
    # independent recomputation of each term from the same tensors
    t_emb = hooks.teacher(img)
    feat = create_head("feature")(student=emb, teacher=t_emb)
    w = load_classifier_rows(str(tmp_path / "tcls"), 10, 0, 10)
    cos_t = (F.normalize(t_emb) @ F.normalize(w).t()).clamp(-1, 1)
    cos_s = (F.normalize(emb) @ F.normalize(pfc.weight).t()).clamp(-1, 1)
    onehot = F.one_hot(labels, 10)
    hkd = create_head("hkd", temperature=2.0)(student_logits=64 * (cos_s - 0.35 * onehot),
                                               teacher_logits=64 * (cos_t - 0.35 * onehot))
    assert total.item() == pytest.approx(0.5 * loss.item() + 2.0 * feat.item() + 0.3 * hkd.item(), rel=1e-5)
    # gradients too: the reference expression, with the cross-entropy written out, against the hooks' total
    ce = F.cross_entropy(64 * (cos_s - 0.35 * onehot), labels)
    reference = 0.5 * ce + 2.0 * feat + 0.3 * hkd
    got = torch.autograd.grad(total, [emb, pfc.weight], retain_graph=True)
    want = torch.autograd.grad(reference, [emb, pfc.weight])
    for g, r in zip(got, want):
        assert torch.allclose(g, r, rtol=1e-4, atol=1e-6)

    class Writer:
        def __init__(self):
            self.calls = []

        def add_scalar(self, tag, value, step):
            self.calls.append((tag, value, step))

    writer = Writer()
    hooks.log(cfg.frequent - 1, writer)  # not a logging step: nothing written, nothing reset
    assert writer.calls == []
    hooks.log(cfg.frequent, writer)
    assert hooks.last == pytest.approx({"classification": loss.item(), "feature": feat.item(), "hkd": hkd.item(),
                                        "total": total.item()}, rel=1e-5)
    assert {tag: v for tag, v, step in writer.calls if step == cfg.frequent} == \
        {f"distill/{k}": v for k, v in hooks.last.items()}
    hooks.end()
    assert isinstance(pfc.margin_softmax, MarginSoftmax)


@pytest.mark.parametrize("change, error, message", [
    (lambda c, p: c.distill.teacher.update(weights=str(p / "nope.pt")), TeacherError, "teacher file not found"),
    (lambda c, p: c.distill.teacher.update(network="tiny_mbf"), TeacherError, "missing keys: body.0.0.weight"),
    (lambda c, p: c.distill.update(student_init=str(p / "absent.pt")), TeacherError, "student_init: file not"),
    (lambda c, p: c.update(num_classes=11), ClassifierError, "add up to 10 classes"),
    (lambda c, p: c.distill.update(heads=[edict(name="feature")]), RecipeError, "needs equal embedding sizes"),
    (lambda c, p: c.distill.teacher.update(embedding_size=16), TeacherError, "shape mismatches: fc.weight"),
])
def test_bad_inputs_fail_before_training(tmp_path, change, error, message):
    cfg, backbone, pfc, opt = _setup(tmp_path, edict(heads=[edict(name="hkd"), edict(name="pwr")]),
                                     embedding_size=8)
    change(cfg, tmp_path)
    if cfg.num_classes == 11:
        pfc = PartialFC(MarginSoftmax(64, 1.0, 0.0, 0.35), 8, 11)
    if cfg.distill.heads[0].name == "feature":
        cfg.embedding_size = 6
        backbone = get_model("tiny_cnn", num_features=6)
    with pytest.raises(error) as e:
        _build(cfg, backbone, pfc, opt)
    assert message in str(e.value)


def test_student_init_mismatch_lists_keys(tmp_path):
    cfg, backbone, pfc, opt = _setup(tmp_path, edict(heads=[edict(name="pwr")]))
    torch.save(get_model("tiny_mbf", num_features=8).state_dict(), tmp_path / "mbf.pt")
    cfg.distill.student_init = str(tmp_path / "mbf.pt")
    with pytest.raises(TeacherError, match="student_init .* missing keys: body.0.weight"):
        _build(cfg, backbone, pfc, opt)
    torch.save(get_model("tiny_cnn", num_features=8).state_dict(), tmp_path / "good.pt")
    cfg.distill.student_init = str(tmp_path / "good.pt")
    _build(cfg, backbone, pfc, opt)
    assert torch.equal(backbone.state_dict()["fc.weight"], torch.load(tmp_path / "good.pt")["fc.weight"])


def _onnx_teacher(path, dim, hw=16):
    """A linear ONNX teacher (Flatten + MatMul), built with the onnx helpers: embeddings = x.flatten() @ W."""
    import numpy as np
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper
    w = np.random.default_rng(0).standard_normal((3 * hw * hw, dim)).astype(np.float32) * 0.05
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input.1"], ["flat"], axis=1),
         helper.make_node("MatMul", ["flat", "W"], ["embedding"])], "linear_teacher",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["batch", 3, hw, hw])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim])],
        [numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return torch.from_numpy(w)


def test_onnx_teacher_through_build_hooks(tmp_path):
    cfg, backbone, pfc, opt = _setup(tmp_path, edict(heads=[edict(name="feature", weight=1.0)]))
    w = _onnx_teacher(tmp_path / "t.onnx", 8)
    cfg.distill.teacher = edict(weights=str(tmp_path / "t.onnx"), input_size=(16, 16))
    hooks = _build(cfg, backbone, pfc, opt)
    img, labels = torch.randn(4, 3, 16, 16), torch.tensor([1, 2, 3, 1])
    emb = backbone(img)
    total = hooks.step(1, img, emb, labels, pfc(emb, labels.clone()))
    assert torch.allclose(hooks.teacher(img), img.flatten(1) @ w, atol=1e-5)
    assert total.requires_grad
    # a teacher of another size cannot serve a same-size head; a wrong input size fails at build time
    _onnx_teacher(tmp_path / "t5.onnx", 5)
    cfg.distill.teacher = edict(weights=str(tmp_path / "t5.onnx"), input_size=(16, 16))
    with pytest.raises(RecipeError, match="feature.*needs equal embedding sizes.*teacher 5"):
        _build(cfg, backbone, pfc, opt)
    cfg.distill.teacher = edict(weights=str(tmp_path / "t.onnx"), input_size=(32, 32))
    with pytest.raises(TeacherError, match="fails on a batch of shape \\(2, 3, 32, 32\\)"):
        _build(cfg, backbone, pfc, opt)


def test_lr_schedule_replaces_the_upstream_scheduler(tmp_path):
    from insightface_pwr.distill.lr_schedules import PolynomialWarmupLR, StepEpochLR
    cfg, backbone, pfc, opt = _setup(tmp_path, edict(heads=[edict(name="pwr")],
                                                     lr_schedule=edict(kind="step", every_epochs=2, factor=0.1)))
    hooks = _build(cfg, backbone, pfc, opt)
    cfg.total_batch_size = 8  # what the loop sets after build_hooks: 32 images / 8 = 4 steps per epoch
    upstream = PolynomialWarmupLR(opt, 0, 16)
    sched = hooks.lr_scheduler(upstream)
    assert isinstance(sched, StepEpochLR) and sched.steps_per_epoch == 4
    lrs = []
    for _ in range(9):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == [0.1] * 8 + [pytest.approx(0.01)]


def test_lr_schedule_without_distill_only_replaces_the_scheduler(tmp_path):
    """config.lr_schedule with no distill section: no teacher, no heads; the loss passes through untouched."""
    from insightface_pwr.distill.lr_schedules import PolynomialWarmupLR, StepEpochLR
    cfg, backbone, pfc, opt = _setup(tmp_path, edict())
    del cfg["distill"]
    cfg.resume = True  # nothing to resume from: the hooks have no state of their own
    cfg.lr_schedule = edict(kind="step", every_epochs=1, factor=0.5)  # unvalidated, as upstream's get_config leaves it
    groups_before = [list(g["params"]) for g in opt.param_groups]
    hooks = _build(cfg, backbone, pfc, opt)
    assert [list(g["params"]) for g in opt.param_groups] == groups_before and hooks.parameters() == []
    img, labels = torch.randn(4, 3, 16, 16), torch.tensor([1, 2, 3, 1])
    loss = pfc(backbone(img), labels.clone())
    assert hooks.step(1, img, backbone(img), labels, loss) is loss
    hooks.log(10, None)
    hooks.save(1, 1)
    assert hooks.resume(0, 0) == (0, 0) and hooks.last == {}
    assert not (tmp_path / "out").exists()  # no distill_gpu_*.pt
    hooks.end()
    cfg.total_batch_size = 8  # 32 images / 8 = 4 steps per epoch
    sched = hooks.lr_scheduler(PolynomialWarmupLR(opt, 0, 16))
    assert isinstance(sched, StepEpochLR)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.1] * 4 + [0.05] * 4 + [0.025] * 4, rel=1e-12)
    # neither key: upstream's scheduler is kept
    del cfg["lr_schedule"]
    upstream = PolynomialWarmupLR(opt, 0, 16)
    assert _build(cfg, backbone, pfc, opt).lr_scheduler(upstream) is upstream
    # validated here too, with the key in the message
    cfg.lr_schedule = edict(kind="step", evry_epochs=2)
    with pytest.raises(RecipeError, match="config.lr_schedule.evry_epochs"):
        _build(cfg, backbone, pfc, opt)


def test_top_level_lr_schedule_drives_a_distillation_run(tmp_path):
    """The recipes' layout: distill section without lr_schedule, config.lr_schedule at the top."""
    from insightface_pwr.distill.lr_schedules import PolynomialWarmupLR, StepEpochLR
    cfg, backbone, pfc, opt = _setup(tmp_path, edict(heads=[edict(name="pwr")]))
    cfg.lr_schedule = edict(kind="step", every_epochs=2, factor=0.1)
    hooks = _build(cfg, backbone, pfc, opt)
    cfg.total_batch_size = 8
    sched = hooks.lr_scheduler(PolynomialWarmupLR(opt, 0, 16))
    assert isinstance(sched, StepEpochLR) and (sched.steps_per_epoch, sched.every_epochs) == (4, 2)
    cfg.distill.lr_schedule = edict(kind="step")
    with pytest.raises(RecipeError, match="both set"):
        _build(cfg, backbone, pfc, opt)
