"""A student trained ONLY through ProxylessKD (``config.distill.method = "proxylesskd"``: partial FC starts from the
teacher's classifier, frozen; no KD term) learns, and learns the TEACHER's space.

Synthetic faces (class prototypes plus noise, 12 classes, 16 x 16). The teacher is a fixed random ``tiny_cnn``;
its classifier is the normalised mean of its normalised embeddings of each class (the choice the shared spec
makes where no trained classifier exists). Two students train on the CPU host for the same 100 steps: one through
the teacher's classifier, a control through a RANDOM frozen classifier of the same shape. Measured on images the
training never saw: rank-1 of each student's embedding against the teacher's class means (the paper's use: a
gallery encoded by the teacher, queries by the student). The ProxylessKD student must be far above chance and above
its own untrained weights; the control learns its random classifier's space, which is not the teacher's."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from gloo_helpers import run_gloo_processes
from insightface_pwr.data.synthetic import SyntheticFaces
from insightface_pwr.models.backbones import get_model

C, D, HW, N_TRAIN, N_TEST, SEED = 12, 8, 16, 240, 240, 7

RECIPE = """
from easydict import EasyDict as edict
config = edict(network="tiny_cnn", embedding_size={D}, margin_list=(1.0, 0.0, 0.35), rec="synthetic",
               image_size=({HW}, {HW}), num_classes={C}, num_image={N}, num_epoch=10, warmup_epoch=0,
               val_targets=[], batch_size=24, lr=0.1, frequent=1000, seed={SEED}, output={out!r})
config.lr_schedule = edict(kind="step", every_epochs=100, factor=0.1)
config.distill = edict(teacher=edict(weights={teacher!r}, network="tiny_cnn", embedding_size={D}, classifier={shards!r},
                                     input_size=({HW}, {HW})),
                       method="proxylesskd", classification_weight=1.0, heads=[])
"""


def _train(rank, world, recipe):
    from insightface_pwr.distill.recipe import load_recipe
    from insightface_pwr.host.train import run_host
    torch.manual_seed(0)
    return run_host(load_recipe(recipe), rank, world)


def _embed(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return F.normalize(model.eval()(images))


def _rank1(queries: torch.Tensor, labels: torch.Tensor, gallery: torch.Tensor) -> float:
    return float((queries @ gallery.t()).argmax(1).eq(labels).float().mean())


def test_a_student_learns_the_teachers_space_through_its_frozen_classifier(tmp_path):
    data = SyntheticFaces(N_TRAIN + N_TEST, C, (HW, HW), SEED)  # the host draws the first N_TRAIN: same images
    train_x, train_y = data.images[:N_TRAIN], data.labels[:N_TRAIN]
    test_x, test_y = data.images[N_TRAIN:], data.labels[N_TRAIN:]
    torch.manual_seed(3)
    teacher = get_model("tiny_cnn", num_features=D)
    torch.save(teacher.state_dict(), tmp_path / "teacher.pt")
    t = _embed(teacher, train_x)
    means = F.normalize(torch.stack([t[train_y == c].mean(0) for c in range(C)]))
    assert _rank1(_embed(teacher, test_x), test_y, means) > 0.9  # the teacher separates the classes
    classifiers = {"teacher": means, "random": F.normalize(torch.randn(C, D, generator=torch.Generator().manual_seed(9)))}
    rank1 = {}
    for name, weight in classifiers.items():
        (tmp_path / name).mkdir()
        torch.save({"state_dict_softmax_fc": {"weight": weight.clone()}}, tmp_path / name / "checkpoint_gpu_0.pt")
        recipe = tmp_path / f"{name}.py"
        recipe.write_text(RECIPE.format(D=D, HW=HW, C=C, N=N_TRAIN, SEED=SEED, out=str(tmp_path / f"run_{name}"),
                                        teacher=str(tmp_path / "teacher.pt"), shards=str(tmp_path / name)))
        run_gloo_processes(_train, 1, str(recipe), timeout=300)
        student = get_model("tiny_cnn", num_features=D)
        student.load_state_dict(torch.load(tmp_path / f"run_{name}" / "model.pt", weights_only=True))
        rank1[name] = _rank1(_embed(student, test_x), test_y, means)
    torch.manual_seed(0)
    untrained = _rank1(_embed(get_model("tiny_cnn", num_features=D), test_x), test_y, means)
    chance = 1.0 / C
    assert rank1["teacher"] > 0.8, rank1                       # student queries, teacher gallery
    assert rank1["teacher"] > untrained + 0.5, (rank1, untrained)  # it learned
    assert rank1["random"] < chance + 0.25, rank1               # the control's space is not the teacher's
    assert np.isfinite(list(rank1.values())).all()
