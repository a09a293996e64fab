"""The demo's steps: data -> recipes -> train (CPU host) -> evaluate, each a function of its own.

Layout of ``OUT``: ``data/train/`` (RecordIO), ``data/synthetic_faces.bin`` (verification, unseen identities),
``data/identification/`` (RecordIO of the unseen identities, for rank-1), ``recipes/`` (the package's demo recipes
and the generated ``_data.py``), ``runs/<name>/`` (the host's outputs: ``model.pt``, ``training.log``,
``host_losses.jsonl``), ``results.json``, ``table.md``, ``table.png``.
"""
from __future__ import annotations

import json
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..infra.progress import progress_bar
from .dataset import write_identity_recordio, write_verification_bin

__all__ = ["DemoScale", "SCALES", "RUNS", "DataInfo", "prepare_synthetic", "prepare_real", "write_recipes",
           "train_run", "evaluate_run"]


@dataclass(frozen=True)
class DemoScale:
    """Sizes of one demo: identities x images for training, the unseen test identities, epochs per role.

    ``batch_size`` is the global batch (split over the training processes)."""

    identities: int
    per_identity: int
    test_identities: int
    pairs: int
    ident_per_identity: int
    image_size: int
    batch_size: int
    teacher_epochs: int
    student_epochs: int
    distill_epochs: int
    max_steps_per_epoch: int = 0  # > 0: a smoke run on real data (--data) stops each epoch after these steps
    eval_pairs: Optional[int] = None  # verify on the first N pairs of each .bin only (None: all)


SCALES: Dict[str, DemoScale] = {
    # 5-8 minutes on 2 CPU cores shared with other jobs (benchmarks/RESULTS.md)
    "full": DemoScale(identities=160, per_identity=28, test_identities=100, pairs=800, ident_per_identity=6,
                      image_size=32, batch_size=64, teacher_epochs=8, student_epochs=8, distill_epochs=4),
    # the end-to-end test: every step, a few seconds of training
    "tiny": DemoScale(identities=16, per_identity=8, test_identities=10, pairs=40, ident_per_identity=3,
                      image_size=32, batch_size=32, teacher_epochs=1, student_epochs=1, distill_epochs=1,
                      max_steps_per_epoch=3, eval_pairs=200),
}

# (recipe / run name, row label, network of the run's model.pt)
RUNS: Tuple[Tuple[str, str, str], ...] = (
    ("teacher", "Teacher (demo_resnet)", "demo_resnet"),
    ("student", "Baseline student (tiny_cnn)", "tiny_cnn"),
    ("student_ft", "Baseline + same extra epochs, CosFace (control)", "tiny_cnn"),
    ("rkd_da", "RKD-DA (CosFace + 100 D + 200 A)", "tiny_cnn"),
    ("pwr_exp", "PWR-Exp (teacher-diff), alone", "tiny_cnn"),
)
EMBEDDING_SIZE = 128


@dataclass
class DataInfo:
    """What the recipes and the evaluation need to know about the data."""

    rec: str
    num_classes: int
    num_image: int
    image_size: int
    bins: List[str] = field(default_factory=list)
    identification: Optional[str] = None


def prepare_synthetic(out: Path, scale: DemoScale, seed: int, progress: bool) -> DataInfo:
    """Generate the training RecordIO, the verification .bin and the identification set (unseen identities)."""
    data = out / "data"
    train_ids = range(scale.identities)
    test_ids = range(scale.identities, scale.identities + scale.test_identities)  # never in training
    c, n = write_identity_recordio(data / "train", train_ids, scale.per_identity, scale.image_size, seed, progress,
                                   "train faces")
    write_verification_bin(data / "synthetic_faces.bin", test_ids, scale.pairs, scale.image_size, seed, progress)
    write_identity_recordio(data / "identification", test_ids, scale.ident_per_identity, scale.image_size, seed,
                            progress, "identification faces")
    return DataInfo(rec=str(data / "train"), num_classes=c, num_image=n, image_size=scale.image_size,
                    bins=[str(data / "synthetic_faces.bin")], identification=str(data / "identification"))


def prepare_real(rec_dir: Path, bins: Sequence[str]) -> DataInfo:
    """A real InsightFace RecordIO folder (``train.rec``, ``train.idx``, ``property``) and its ``.bin`` files
    (default: the ``*.bin`` in the folder and beside it)."""
    from ..data.dataset import FaceDataset
    ds = FaceDataset(rec_dir)
    if ds.property is None:
        raise ValueError(f"{rec_dir}: no 'property' file (classes,height,width): cannot size the classifier")
    classes, h, w = ds.property
    if h != w or h % 8:
        raise ValueError(f"{rec_dir}: images are {h}x{w}; the demo's networks need square sizes divisible by 8")
    found = list(bins) or sorted(str(p) for p in (*rec_dir.glob("*.bin"), *rec_dir.parent.glob("*.bin")))
    if not found:
        raise ValueError(f"no verification .bin in {rec_dir} or {rec_dir.parent}: pass --bin PATH")
    return DataInfo(rec=str(rec_dir), num_classes=classes, num_image=len(ds), image_size=h, bins=found)


def write_recipes(out: Path, info: DataInfo, scale: DemoScale, threads: int, nproc: int) -> Path:
    """Copy the package's demo recipes to ``OUT/recipes`` and write their ``_data.py``; returns the folder."""
    folder = out / "recipes"
    folder.mkdir(parents=True, exist_ok=True)
    src = Path(__file__).resolve().parent / "recipes"
    for p in sorted(src.glob("*.py")):
        if p.name != "__init__.py":
            shutil.copyfile(p, folder / p.name)
    from ..host.data import steps_per_epoch
    if scale.batch_size % nproc:
        raise ValueError(f"the demo's batch ({scale.batch_size}) must split evenly over --nproc {nproc}")
    per_rank = scale.batch_size // nproc
    steps = steps_per_epoch(info.num_image, nproc, per_rank)
    num_image, cap = info.num_image, ""
    if scale.max_steps_per_epoch and steps > scale.max_steps_per_epoch:  # a smoke run on a real data set
        steps = scale.max_steps_per_epoch
        num_image = steps * scale.batch_size  # what the lr schedule counts: the capped epoch
        cap = (f"config.max_steps_per_epoch = {steps}    # host key: a smoke run, a random {num_image} of the "
               f"{info.num_image} images per epoch\n")
    (folder / "_data.py").write_text(
        '"""Generated by `insightface-pwr demo`: the data set, batch and epochs of this demo."""\n'
        "from easydict import EasyDict as edict\n\n"
        "config = edict()\n"
        f"config.rec = {info.rec!r}\n"
        f"config.num_classes = {info.num_classes}\n"
        f"config.num_image = {num_image}\n"
        f"config.image_size = ({info.image_size}, {info.image_size})   # host key (H, W)\n"
        f"config.batch_size = {per_rank}          # per process: {per_rank} x {nproc} = {scale.batch_size} per step; "
        f"{num_image} images -> {steps} steps per epoch\n" + cap +
        "config.warmup_epoch = 0\n"
        "config.val_targets = []                # evaluated after training by the demo\n"
        f"config.frequent = {max(1, steps)}               # one log line per epoch\n"
        f"config.host_threads = {threads}\n"
        f"config.demo_epochs = edict(teacher={scale.teacher_epochs}, student={scale.student_epochs}, "
        f"distill={scale.distill_epochs})\n")
    return folder


def _follow_losses(path: Path, bar, stop: threading.Event) -> None:
    """Advance ``bar`` from the host's ``host_losses.jsonl`` (one JSON line per step) until ``stop``."""
    pos, done = 0, 0
    while True:
        finished = stop.wait(0.25)
        if path.is_file():
            with open(path) as f:
                f.seek(pos)
                chunk = f.read()
            lines = chunk.split("\n")
            pos += len(chunk) - len(lines[-1])
            records = [json.loads(line) for line in lines[:-1] if line.strip()]
            if records:
                bar.update(records[-1]["step"] - done)
                done = records[-1]["step"]
                bar.set_postfix(loss=f"{records[-1]['loss']:.3f}", epoch=records[-1]["epoch"])
        if finished:
            return


def train_run(recipe: Path, total_steps: int, desc: str, progress: bool, nproc: int) -> float:
    """Train ``recipe`` with the CPU host (``insightface-pwr train``'s launcher); returns the wall time in s."""
    from ..host.launch import launch
    from ..distill.recipe import load_recipe
    output = Path(load_recipe(recipe).output)
    if output.exists():
        shutil.rmtree(output)  # a fresh run (the host appends to host_losses.jsonl)
    start = time.perf_counter()
    if not progress:
        launch(str(recipe), nproc)
        return time.perf_counter() - start
    stop = threading.Event()
    bar = progress_bar(total_steps, desc, "step")
    try:
        follower = threading.Thread(target=_follow_losses, args=(output / "host_losses.jsonl", bar, stop),
                                    daemon=True)
        follower.start()
        try:
            launch(str(recipe), nproc)
        finally:
            stop.set()
            follower.join()
    finally:
        bar.close()
    return time.perf_counter() - start


def _load_model(run_dir: Path, network: str):
    from ..eval.embedding_models import TorchEmbeddingModel
    from ..models.backbones import get_model
    from ..models.weights import load_backbone
    from . import backbones  # noqa: F401  (demo_resnet)
    module = load_backbone(run_dir / "model.pt", network, get_model, "model", fp16=False, num_features=EMBEDDING_SIZE)
    return TorchEmbeddingModel(module, 127.5, 127.5)


def _identification_set(folder: str) -> Tuple[torch.Tensor, np.ndarray]:
    from ..data.dataset import FaceDataset
    from ..data.images import decode_image
    from ..data.recordio import unpack
    ds = FaceDataset(folder)
    images, labels = [], []
    for key in ds.keys:
        header, payload = unpack(ds.reader.read_idx(int(key)), source=ds.rec_path, key=int(key))
        images.append(decode_image(payload, source=ds.rec_path, record=int(key)).transpose(2, 0, 1))
        labels.append(int(header.label if np.isscalar(header.label) else header.label[0]))
    return torch.from_numpy(np.stack(images)), np.asarray(labels)


def evaluate_run(run_dir: Path, network: str, info: DataInfo, progress: bool,
                 limit_pairs: Optional[int] = None) -> Dict[str, object]:
    """Verification (10-fold accuracy of flip-summed embeddings, TPR@FPR, AUC) on every .bin, and rank-1
    identification on the unseen identities (each image a probe against all the others)."""
    from ..eval.embedding_models import embed_images
    from ..eval.identification_metrics import rank_k_accuracy
    from ..eval.evaluate import evaluate_bin
    model = _load_model(run_dir, network)
    out: Dict[str, object] = {"verification": []}
    for path in info.bins:
        r = evaluate_bin(model, path, batch_size=256, folds=10, image_size=info.image_size, limit_pairs=limit_pairs,
                         progress=progress)
        out["verification"].append(r.as_dict())  # type: ignore[union-attr]
    if info.identification:
        images, labels = _identification_set(info.identification)
        emb = embed_images(model, images, 256, progress, "identification")
        out["rank1"] = rank_k_accuracy(emb, labels, ks=(1,))[1]
    return out
