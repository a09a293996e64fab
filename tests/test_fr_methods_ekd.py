"""EKD in training, on the CPU host with 1 and 2 gloo processes (recipe term ``gather="global"``).

Every step of a host run records what the hooks gave EKD (each rank's student and teacher embeddings and labels),
the term's value, the anchors after the step and the gradient that reached each rank's embeddings. An
independent reference, one EKD head built afresh in this process, is run step by step on the CONCATENATED batch
(ranks in order): the value, the anchors and the gradient must be its own. The gradient follows arcface_torch's
all-gather convention: rank r's embeddings receive W x weight x dL/dx_r, and DDP's mean then gives the backbone
exactly weight x dL/dtheta (not W times it, as TFace's AllGather + DDP does: a recipe replicating a W-GPU TFace
run sets the weight to W, see recipes/ekd.py)."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from easydict import EasyDict as edict

from insightface_pwr import create_head
from insightface_pwr.distill.hooks import DistillHooks
from insightface_pwr.distill.recipe import apply_defaults, validate_recipe
from insightface_pwr.host.train import run_host

sys.path.insert(0, str(Path(__file__).resolve().parent / "host"))
from gloo_helpers import run_gloo_processes  # noqa: E402
from teacher_files import write_teacher  # noqa: E402

PARAMS = edict(topk=20, t=0.05, anchors=[2, 4, 10], momentum=0.3)  # moving anchors within a dozen steps
WEIGHT = 3.0
GLOBAL_BATCH = 12


def _cfg(root, world):
    cfg = apply_defaults(edict(
        margin_list=(1.0, 0.0, 0.35), network="tiny_cnn", embedding_size=8, rec="synthetic", num_classes=4,
        num_image=48, num_epoch=2, warmup_epoch=0, val_targets=[], batch_size=GLOBAL_BATCH // world,
        image_size=(16, 16), frequent=2, lr=0.05, save_all_states=True, output=f"{root}/ekd_w{world}"))
    cfg.distill = edict(teacher=edict(network="tiny_cnn", weights=f"{root}/teacher/model.pt", embedding_size=8,
                                      input_size=(16, 16)),
                        classification_weight=0.0,  # EKD alone: the embeddings' gradient is EKD's
                        heads=[edict(name="ekd", weight=WEIGHT, params=PARAMS, gather="global")])
    validate_recipe(cfg)
    return cfg


class _Recorder(torch.nn.Module):
    def __init__(self, module, log):
        super().__init__()
        self.inner, self.log = module, log

    def forward(self, **kw):
        out = self.inner(**kw)
        self.log.append(out.item())
        return out


def _worker(rank, world, root):
    rec = {"emb": [], "teacher": [], "labels": [], "value": [], "anchors": [], "grad": []}
    original = DistillHooks.step

    def spy(self, global_step, img, emb, labels, loss):
        term = self.terms[0]
        if not isinstance(term.module, _Recorder):
            term.module = _Recorder(term.module, rec["value"])
        rec["emb"].append(emb.detach().numpy().copy())
        rec["teacher"].append(self.teacher(img).detach().numpy().copy())
        rec["labels"].append(labels.numpy().copy())
        emb.register_hook(lambda g: rec["grad"].append(g.numpy().copy()))
        total = original(self, global_step, img, emb, labels, loss)
        rec["anchors"].append((term.head.s_anchor.numpy().copy(), term.head.t_anchor.numpy().copy()))
        return total

    DistillHooks.step = spy
    run_host(_cfg(root, world), rank, world)
    state = torch.load(Path(root) / f"ekd_w{world}" / f"distill_gpu_{rank}.pt", weights_only=True)
    rec["saved"] = {k: v.numpy() for k, v in state["heads"][0].items()}
    return rec


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ekd_host")
    write_teacher(root / "teacher", shards=1, seed=5, num_classes=4)
    return {w: run_gloo_processes(_worker, w, str(root), timeout=300) for w in (1, 2)}


@pytest.mark.parametrize("world", [1, 2])
def test_ekd_on_the_global_batch_equals_one_process_on_the_concatenated_batch(runs, world):
    ranks = runs[world]
    steps = len(ranks[0]["value"])
    assert steps == 2 * 48 // GLOBAL_BATCH
    reference = create_head("ekd", **PARAMS)
    rows = GLOBAL_BATCH // world
    for k in range(steps):
        s = torch.from_numpy(np.concatenate([r["emb"][k] for r in ranks])).requires_grad_(True)
        t = torch.from_numpy(np.concatenate([r["teacher"][k] for r in ranks]))
        y = torch.from_numpy(np.concatenate([r["labels"][k] for r in ranks]))
        loss = reference(student=s, teacher=t, labels=y)
        (WEIGHT * loss).backward()
        for rank, r in enumerate(ranks):
            assert r["value"][k] == pytest.approx(loss.item(), rel=1e-5, abs=1e-8), (k, rank)
            torch.testing.assert_close(torch.from_numpy(r["anchors"][k][0]), reference.s_anchor, rtol=1e-5,
                                       atol=1e-7)
            torch.testing.assert_close(torch.from_numpy(r["anchors"][k][1]), reference.t_anchor, rtol=1e-5,
                                       atol=1e-7)
            expected = world * s.grad[rank * rows:(rank + 1) * rows]  # arcface_torch's all-gather convention
            torch.testing.assert_close(torch.from_numpy(r["grad"][k]), expected, rtol=1e-4, atol=1e-7)
    assert reference.s_anchor.abs().min() > 0  # the anchors moved: the checks above compared live values
    for r in ranks:  # the state saved for resume is the last step's anchors, on every rank
        np.testing.assert_array_equal(r["saved"]["s_anchor"], ranks[0]["anchors"][-1][0])
        np.testing.assert_array_equal(r["saved"]["t_anchor"], ranks[0]["anchors"][-1][1])
