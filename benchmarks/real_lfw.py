"""Real faces: does PWR beat the baseline and the other heads? Small students on the LFW train split.

    python benchmarks/real_lfw.py --size cpu      # the committed run (see benchmarks/results/real_lfw.md)
    python benchmarks/real_lfw.py --size smoke    # a minute or two: every method, 1 seed, a few steps
    python benchmarks/real_lfw.py --size gpu --device cuda
    python benchmarks/real_lfw.py --size from_baseline --claim   # the paper's protocol (run it twice, see below)

Needs ``pip install -e .[bench]`` (pillow, onnxruntime, matplotlib; without matplotlib the plot is drawn with
pillow). Data (``$INSIGHTFACE_PWR_SHARED`` or ``--data``, default ``../shared``): the LFW train split as RecordIO
(9,402 aligned 112x112 faces, 5,090 identities), ``lfw_dev.bin`` (2,830 pairs of 332 other identities) and the
real teacher, InsightFace's MobileFaceNet trained on MS1M (128-d, ONNX).

What it does, in order (everything it writes goes to ``--work``, default ``~/.cache/insightface-pwr/real_lfw``,
outside the repository, except the table and the plot, which go to ``--out``):

1. the teacher's embeddings of every training image and of its mirror, at 112x112, ONCE, with the package's
   teacher cache (``insightface_pwr.distill.teacher_cache.build_cache``, what ``insightface-pwr cache-teacher`` runs);
   the teacher's flip-summed embeddings of the 5,660 dev images (for its own accuracy and for rank agreement);
2. the training and dev images decoded once and resized to the student's ``--resolution`` (PIL bilinear with
   antialiasing), kept as uint8 arrays in ``--work``;
3. for each method and seed, a student trained from scratch with the same budget (steps, batch, lr schedule,
   sampling order and flips drawn from the seed): the student is the CPU host's ``TinyMobileFaceNet``
   (``insightface_pwr.models.backbones``: MobileFaceNet's layout, narrow, ``--width``), 128-d like the teacher; the
   classifier is the host's partial FC with CosFace (s = 64, m = 0.35, every class); the distillation runs
   through the package's ``DistillHooks`` with the heads built by ``create_head`` and the teacher looked up in
   the cache by record key (``CachedTeacher`` + the ``BATCH_KEYS`` channel, as the host does). The student sees
   the images at ``--resolution`` while the teacher's embeddings are of the 112x112 originals (the
   lower-resolution student setting of the paper's related work). The loop is the host's loop
   (``insightface_pwr/host/train.py``: backbone, partial FC, ``hooks.step``, backward, clip 5, SGD momentum 0.9,
   weight decay 5e-4, polynomial warmup lr) run in this process with one rank: the host's launcher starts fresh
   processes and reads JPEGs every step, which costs more than these short runs themselves.
4. the dev accuracy (10-fold) is measured every ``--eval-every`` steps on plain embeddings (the curve, half the
   cost); at the end on flip-summed embeddings as InsightFace reports it, with TPR at FPR = 1e-2 and the
   teacher-student rank agreement: Kendall's tau between the teacher's and the student's cosine similarities of
   the 2,830 dev pairs (the teacher's embeddings flip-summed too);
5. ``<out>/real_lfw[_<tag>].md`` (mean and spread over seeds) and ``<out>/real_lfw[_<tag>].png`` (dev accuracy
   over training without flip, mean over seeds, band = min..max).

Each run's result is saved to ``<work>/runs/<config>/<method>_s<seed>.json`` as it finishes, so re-running the
same command after an interruption skips the runs already done.

Two protocols. ``scratch`` (the presets smoke, cpu, cpu90, gpu): every method trains from scratch with the same
budget. ``from_baseline`` (the presets from_baseline and from_baseline_smoke; results in
``benchmarks/results/real_lfw_from_baseline.md``), the paper's (section 4.2: "every distilled student starts from
the baseline student's weights"): per seed the baseline is trained ``--base-steps`` from scratch ONCE and saved in
``--work``; every other row continues from it (backbone and CosFace classifier, a fresh optimizer, the same lr
schedule restarted) for ``--steps``, with the same sampling order and flips for every row of a seed, beside the
``control`` row that continues with CosFace alone (what the extra steps give without distillation). It reuses the
preparation of the other presets (same ``--work``: the teacher cache is shared; the images are resized once per
resolution). With ``--claim`` two processes split the runs (the baselines first; a row waits for its seed's
baseline). The table then compares every row with the baseline and the control, and states for each claim of the
paper whether the run reproduces it beyond the seed spread (difference of the means > sum of the two sample
standard deviations). Each run also records the backbone's gradient norm before clipping (median per evaluation
interval, and the fraction of steps clipped at 5) and each loss term's mean.

Methods (weights are the paper's, as in ``recipes/``): ``baseline`` (CosFace), ``rkd_da`` (CosFace + 100 RKD-D +
200 RKD-A), ``darkrank`` (CosFace + DarkRank), ``pwr_diff`` and ``pwr_exp`` (100 PWR with teacher-diff margins,
alone), ``pwr_exp_cosface`` (CosFace + 100 PWR-Exp), ``feature`` (CosFace + 10 feature consistency, cosine;
possible because student and teacher are both 128-d). In the from_baseline preset also: ``control``; ``rkd_d``
(CosFace + 100 RKD-D), ``rkd_a`` (CosFace + 200 RKD-A), ``rkd_da_alone`` and ``darkrank_alone`` (no CosFace: the
paper says they did not reach the baseline alone); ``hkd`` (0.7 CosFace + 0.3 HKD, T = 4) and
``pwr_exp_cosface_hkd`` (0.7 CosFace + 0.3 HKD + 100 PWR-Exp); ``pwr_diff_m01``, ``pwr_diff_std``,
``pwr_exp_m01``, ``pwr_exp_std`` (margins 0.1 and teacher-std), ``pwr_ranknet`` (15 PWR-RankNet, beta 1),
``pwr_exp_cos`` (PWR-Exp teacher-diff with the cosine relation; the others are euclidean, as recipes/); ``ekd``
(CosFace + 1 EKD, topk 2000, t 0.01) and ``coupleface`` (CosFace + 1 CoupleFace-provisional, 10 negatives), whose
labels the hooks pass to them. Outside every preset: ``pwr_exp_b0.25``, ``pwr_exp_b4``, ``pwr_exp_b16`` (PWR-Exp
teacher-diff with beta 0.25, 4, 16; the sweep of the from_baseline reading).

HKD needs the teacher's classifier over the training identities (softmax over the same classes); the teacher was
trained on MS1M's 85,742 identities, not on these 5,090, so the scratch presets leave it out. The from_baseline
preset uses the teacher's class means as that classifier: for each identity the normalised mean of the teacher's
normalised embeddings of its training images (from the cache), in the package's ``PartialFCLogits`` (the teacher's
logits get the same CosFace margin and scale as the student's).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from insightface_pwr.distill.batch_keys import BATCH_KEYS  # noqa: E402
from insightface_pwr.distill.checkpoint import atomic_save  # noqa: E402
from insightface_pwr.infra.atomic import AtomicFile, atomic_write_bytes  # noqa: E402
from insightface_pwr.data.dataset import FaceDataset  # noqa: E402
from insightface_pwr.data.images import decode_image  # noqa: E402
from insightface_pwr.data.paths import shared_dir  # noqa: E402
from insightface_pwr.data.recordio import unpack  # noqa: E402
from insightface_pwr.data.verification_bin import decode_bin_images, load_bin  # noqa: E402
from insightface_pwr.eval.verification_metrics import kfold_accuracy, tpr_at_fpr  # noqa: E402
from insightface_pwr.heads import *  # noqa: E402,F401,F403  (registers the heads)
from insightface_pwr.distill.hooks import DistillHooks, HeadTerm  # noqa: E402
from insightface_pwr.models.backbones import TinyMobileFaceNet  # noqa: E402
from insightface_pwr.host.partial_fc import MarginSoftmax, PartialFC  # noqa: E402
from insightface_pwr.distill.lr_schedules import PolynomialWarmupLR  # noqa: E402
from insightface_pwr.heads.registry import create_head, get_head_spec  # noqa: E402
from insightface_pwr.distill.teacher_cache import CachedTeacher, TeacherCache, build_cache, sha256_file  # noqa: E402

TEACHER_FILE = "models/mbf_y1_ms1m_arcface_128d.onnx"
TRAIN_REC = "data/lfw/train"
DEV_BIN = "data/lfw/lfw_dev.bin"
MARGIN_LIST = (1.0, 0.0, 0.35)  # CosFace m = 0.35, s = 64 (the paper's baseline, recipes/student_r18.py)

# method -> (row label, classification weight, [(head, weight, params)]); the weights of recipes/
_RKD_D = {"relation": "euclidean", "mean_normalize": False, "huber_delta": 1.0}
_DARKRANK = {"alpha": 3.0, "beta": 3.0, "list_length": 4, "relation": "euclidean", "soft": False}
_HKD = {"temperature": 4.0, "t2_scale": False}


def _pwr(inversion: str, margin: Any = "teacher_diff", relation: str = "euclidean", beta: float = 1.0) -> Dict[str, Any]:
    p: Dict[str, Any] = {"relation": relation, "inversion": inversion}
    if inversion != "ranknet":
        p["margin"] = margin
    if inversion in ("exp", "ranknet"):
        p["beta"] = beta
    return p


METHODS: Dict[str, Tuple[str, float, List[Tuple[str, float, Dict[str, Any]]]]] = {
    "baseline": ("Baseline (CosFace)", 1.0, []),
    # from_baseline protocol only: the baseline continued for the same steps with CosFace alone
    "control": ("Control: baseline continued with CosFace", 1.0, []),
    "rkd_d": ("CosFace + RKD-D", 1.0, [("rkd_d", 100.0, dict(_RKD_D))]),
    "rkd_a": ("CosFace + RKD-A", 1.0, [("rkd_a", 200.0, {"huber_delta": 1.0})]),
    "rkd_da": ("CosFace + RKD-DA", 1.0, [("rkd_da", 100.0, dict(_RKD_D))]),
    "rkd_da_alone": ("RKD-DA alone", 0.0, [("rkd_da", 100.0, dict(_RKD_D))]),
    "darkrank": ("CosFace + DarkRank", 1.0, [("darkrank", 1.0, dict(_DARKRANK))]),
    "darkrank_alone": ("DarkRank alone", 0.0, [("darkrank", 1.0, dict(_DARKRANK))]),
    # HKD: the teacher's classifier over the training identities is the teacher's class means (see class_means)
    "hkd": ("CosFace + HKD (teacher class means)", 0.7, [("hkd", 0.3, dict(_HKD))]),
    "pwr_diff_m01": ("PWR-Diff (0.1)", 0.0, [("pwr", 100.0, _pwr("diff", 0.1))]),
    "pwr_diff_std": ("PWR-Diff (teacher-std)", 0.0, [("pwr", 100.0, _pwr("diff", "teacher_std"))]),
    "pwr_diff": ("PWR-Diff (teacher-diff)", 0.0, [("pwr", 100.0, _pwr("diff"))]),
    "pwr_exp_m01": ("PWR-Exp (0.1)", 0.0, [("pwr", 100.0, _pwr("exp", 0.1))]),
    "pwr_exp_std": ("PWR-Exp (teacher-std)", 0.0, [("pwr", 100.0, _pwr("exp", "teacher_std"))]),
    "pwr_exp": ("PWR-Exp (teacher-diff)", 0.0, [("pwr", 100.0, _pwr("exp"))]),
    "pwr_exp_cos": ("PWR-Exp (teacher-diff), cosine relation", 0.0, [("pwr", 100.0, _pwr("exp", relation="cosine"))]),
    "pwr_ranknet": ("PWR-RankNet", 0.0, [("pwr", 15.0, _pwr("ranknet"))]),
    "pwr_exp_cosface": ("CosFace + PWR-Exp (teacher-diff)", 1.0, [("pwr", 100.0, _pwr("exp"))]),
    "pwr_exp_cosface_hkd": ("CosFace + HKD + PWR-Exp (teacher-diff)", 0.7,
                            [("hkd", 0.3, dict(_HKD)), ("pwr", 100.0, _pwr("exp"))]),
    "ekd": ("CosFace + EKD", 1.0, [("ekd", 1.0, {"topk": 2000, "t": 0.01})]),
    "coupleface": ("CosFace + CoupleFace (provisional)", 1.0, [("coupleface_provisional", 1.0, {"num_negatives": 10})]),
    # classifier-replacing methods (train_one special-cases them): partial FC's weight is the teacher's class means,
    # frozen (ProxylessKD), or AdaDistill's centres, initialised N(0, 0.01^2) and updated from the teacher's
    # embeddings (AdaCosDistill: the baseline's CosFace margin, m 0.35, s 64)
    "proxylesskd": ("ProxylessKD (teacher class means, frozen, as the classifier)", 1.0, []),
    "adadistill": ("AdaDistill (AdaCosDistill, m 0.35)", 0.0,
                   [("adadistill", 1.0, {"margin_type": "cosface", "m": 0.35, "s": 64.0, "init_std": 0.01})]),
    "feature": ("CosFace + feature consistency", 1.0, [("feature", 10.0, {"kind": "cosine"})]),
    # the beta sweep of PWR-Exp (teacher-diff) (not in a preset's default list: --methods)
    "pwr_exp_b0.25": ("PWR-Exp (teacher-diff), beta 0.25", 0.0, [("pwr", 100.0, _pwr("exp", beta=0.25))]),
    "pwr_exp_b4": ("PWR-Exp (teacher-diff), beta 4", 0.0, [("pwr", 100.0, _pwr("exp", beta=4.0))]),
    "pwr_exp_b16": ("PWR-Exp (teacher-diff), beta 16", 0.0, [("pwr", 100.0, _pwr("exp", beta=16.0))]),
}
SCRATCH_METHODS = ["baseline", "rkd_da", "darkrank", "pwr_diff", "pwr_exp", "pwr_exp_cosface", "feature"]
FROM_BASELINE_METHODS = ["baseline", "control", "rkd_d", "rkd_a", "rkd_da", "darkrank", "rkd_da_alone",
                         "darkrank_alone", "hkd", "pwr_diff_m01", "pwr_diff_std", "pwr_diff", "pwr_exp_m01",
                         "pwr_exp_std", "pwr_exp", "pwr_exp_cos", "pwr_ranknet", "pwr_exp_cosface",
                         "pwr_exp_cosface_hkd", "ekd", "coupleface", "proxylesskd", "adadistill"]

# --size presets: steps, eval_every, seeds, resolution, width, batch; protocol "scratch" (every method from scratch)
# or "from_baseline" (the paper's: the baseline trained base_steps once per seed, every other row continues from
# it for `steps`)
SIZES: Dict[str, Dict[str, Any]] = {
    "smoke": dict(steps=12, eval_every=4, seeds=[0], resolution=48, width=16, batch_size=64),
    # the committed run: 2-core CPU shared with other jobs (load ~14), two processes of one thread each
    "cpu": dict(steps=250, eval_every=50, seeds=[0, 1, 2], resolution=48, width=16, batch_size=128),
    # an estimate of what fits 90 minutes on the same 2 cores when idle (see benchmarks/results/real_lfw.md)
    "cpu90": dict(steps=750, eval_every=150, seeds=[0, 1, 2], resolution=48, width=16, batch_size=128),
    "gpu": dict(steps=6000, eval_every=500, seeds=[0, 1, 2], resolution=112, width=64, batch_size=256),
    # the paper's protocol (benchmarks/results/real_lfw_from_baseline.md): sized from a smoke run to fit 90
    # minutes on the 2-core machine with two processes (--claim), the teacher cache already built
    "from_baseline": dict(steps=60, base_steps=300, eval_every=30, base_eval_every=50, seeds=[0, 1, 2], resolution=56, width=24,
                          batch_size=128, protocol="from_baseline", tag="from_baseline"),
    "from_baseline_smoke": dict(steps=6, base_steps=6, eval_every=3, base_eval_every=3, seeds=[0], resolution=56, width=24,
                                batch_size=128, protocol="from_baseline", tag="from_baseline_smoke"),
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    with AtomicFile(path) as f:  # the package's atomic writer
        np.save(f.file, array, allow_pickle=False)


# ------------------------------------------------------------------------------------------------ data and teacher
def resize_uint8(img: np.ndarray, size: int) -> np.ndarray:
    """H x W x 3 uint8 -> 3 x size x size uint8 (PIL bilinear, antialiased when shrinking)."""
    from PIL import Image
    if img.shape[0] != size or img.shape[1] != size:
        img = np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))
    return np.ascontiguousarray(img.transpose(2, 0, 1))


def prepare_train_images(rec_dir: Path, work: Path, size: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images N x 3 x size x size uint8, labels N int64, record keys N int64), decoded once and kept in work."""
    paths = [work / f"train_{size}.u8.npy", work / "train_labels.npy", work / "train_keys.npy"]
    if all(p.is_file() for p in paths):
        return tuple(np.load(p, allow_pickle=False) for p in paths)  # type: ignore[return-value]
    ds = FaceDataset(rec_dir)
    n = len(ds)
    images = np.empty((n, 3, size, size), np.uint8)
    labels = np.empty(n, np.int64)
    for i, key in enumerate(ds.keys):
        key = int(key)
        header, payload = unpack(ds.reader.read_idx(key), source=ds.rec_path, key=key)
        labels[i] = int(header.label[0] if header.flag > 0 else header.label)
        images[i] = resize_uint8(decode_image(payload, source=ds.rec_path, record=key), size)
    keys = np.asarray(ds.keys, np.int64)
    for p, a in zip(paths, (images, labels, keys)):
        atomic_save_npy(p, a)
    return images, labels, keys


def make_teacher(data: Path, device: torch.device, threads: int) -> Any:
    """The teacher: onnxruntime on CPU, the TorchScript export of the same weights on CUDA."""
    if device.type == "cuda":
        from insightface_pwr.distill.teachers import load_teacher
        return load_teacher({"weights": str(data / TEACHER_FILE.replace(".onnx", ".torchscript.pt")),
                             "format": "torchscript", "fp16": False}, None, device)
    # one thread without spin-waiting: on a loaded machine onnxruntime's default (two spinning threads) ran 8x slower
    from insightface_pwr.distill.teachers import OnnxTeacher
    return OnnxTeacher(data / TEACHER_FILE, threads=threads)


def prepare_teacher_cache(data: Path, work: Path, device: torch.device, threads: int) -> Path:
    """The teacher's embeddings of every training image and its mirror at 112x112 (resumable, once), with the
    package's cache builder; the cache records the ONNX file's sha256 (the TorchScript export on CUDA holds the
    same weights)."""
    out = work / "teacher_train_112.f16.npy"
    teacher_path = data / TEACHER_FILE
    meta = work / "teacher_train_112.f16.npy.json"
    if meta.is_file() and json.loads(meta.read_text()).get("complete"):
        return out
    info = {"path": str(teacher_path), "sha256": sha256_file(teacher_path), "format": "onnx", "network": None}
    build_cache(make_teacher(data, device, threads), info, data / TRAIN_REC, out, flip="both", batch_size=64,
                chunk_batches=16, device=device, progress=False, log=log)
    return out


def prepare_dev(data: Path, work: Path, size: int, device: torch.device, threads: int) -> Dict[str, np.ndarray]:
    """Dev images at ``size`` (uint8, and mirrored), issame, and the teacher's flip-summed embeddings."""
    vbin = load_bin(data / DEV_BIN)
    issame = np.asarray(vbin.issame, bool)
    t_path = work / "dev_teacher_flipsum.npy"
    d_path = work / f"dev_{size}.u8.npy"
    if not t_path.is_file() or not d_path.is_file():
        full = decode_bin_images(vbin, 112).numpy()
        if not t_path.is_file():
            teacher = make_teacher(data, device, threads)
            emb = np.zeros((len(full), 128), np.float32)
            for s in range(0, len(full), 64):  # the cache's normalisation, (pixel - 127.5) / 127.5
                x = (torch.from_numpy(full[s:s + 64]).float() - 127.5) / 127.5
                emb[s:s + 64] = (teacher(x.to(device)) + teacher(torch.flip(x, dims=[-1]).to(device))).cpu().numpy()
            atomic_save_npy(t_path, emb)
        if not d_path.is_file():
            small = np.stack([resize_uint8(im.transpose(1, 2, 0), size) for im in full])
            atomic_save_npy(d_path, small)
    return {"images": np.load(d_path), "issame": issame, "teacher": np.load(t_path)}


# ------------------------------------------------------------------------------------------------ metrics
def pair_cosines(emb: np.ndarray) -> np.ndarray:
    """Cosine similarity of each pair (rows 2k, 2k+1) of ``emb``."""
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True).clip(1e-12)
    return np.sum(e[0::2] * e[1::2], axis=1)


def kendall_tau(a: np.ndarray, b: np.ndarray, block: int = 512) -> float:
    """Kendall's tau-b of two score vectors, O(n^2) in blocks (n = 2,830 pairs: 4 M comparisons)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    n = len(a)
    conc = tie_a = tie_b = 0.0
    for s in range(0, n, block):
        da = np.sign(a[s:s + block, None] - a[None, :])
        db = np.sign(b[s:s + block, None] - b[None, :])
        conc += float(np.sum(da * db))
        tie_a += float(np.sum(da == 0))
        tie_b += float(np.sum(db == 0))
    total = n * n  # ordered pairs incl. the diagonal (counted as ties on both sides)
    return conc / math.sqrt((total - tie_a) * (total - tie_b))


def verification(emb_flipsum: np.ndarray, issame: np.ndarray, teacher_cos: Optional[np.ndarray],
                 full: bool) -> Dict[str, float]:
    cos = pair_cosines(emb_flipsum)
    dist = 2.0 - 2.0 * cos  # squared euclidean distance of unit vectors, InsightFace's LFW protocol
    out = {"accuracy": float(kfold_accuracy(dist, issame)["accuracy"])}
    if full:
        # InsightFace's thresholds are a 0.01 grid of squared distances: a student whose dev distances all lie
        # within one step of it scores about 50% whatever their order. The same 10-fold protocol with every
        # midpoint of the sorted distances as a candidate threshold, and the spread of the distances, show it.
        u = np.unique(dist)
        mids = np.r_[u[0] - 1e-9, (u[1:] + u[:-1]) / 2, u[-1] + 1e-9]
        out["accuracy_fine"] = float(kfold_accuracy(dist, issame, thresholds=mids)["accuracy"])
        out["dist_p01"], out["dist_p99"] = (float(v) for v in np.percentile(dist, [1, 99]))
        out["tpr_at_1e-2"] = float(tpr_at_fpr(dist, issame, (1e-2,)).get("1e-02", float("nan")))  # nan: < 100 negatives
        if teacher_cos is not None:
            out["kendall_tau"] = kendall_tau(cos, teacher_cos)
    return out


@torch.no_grad()
def embed_student(model: torch.nn.Module, images: np.ndarray, device: torch.device, flip: bool,
                  batch: int = 256) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Student embeddings of uint8 images (N x 3 x H x W): (plain, flip-summed or None)."""
    model.eval()
    plain, summed = [], []
    for s in range(0, len(images), batch):
        x = (torch.from_numpy(images[s:s + batch]).to(device).float() - 127.5) / 127.5
        e = model(x)
        plain.append(e.float().cpu().numpy())
        if flip:
            summed.append((e + model(torch.flip(x, dims=[-1]))).float().cpu().numpy())
    model.train()
    return np.concatenate(plain), (np.concatenate(summed) if flip else None)


def evaluate_student(model: torch.nn.Module, dev: Dict[str, np.ndarray], teacher_cos: np.ndarray,
                     device: torch.device, final: bool) -> Dict[str, float]:
    """``accuracy_noflip`` at every evaluation (the curve); at the end also the flip-summed accuracy, TPR at
    FPR = 1e-2 and Kendall's tau (the table)."""
    plain, summed = embed_student(model, dev["images"], device, flip=final)
    out = {"accuracy_noflip": verification(plain, dev["issame"], None, full=False)["accuracy"]}
    if final:
        out.update(verification(summed, dev["issame"], teacher_cos, full=True))
    return out


# ------------------------------------------------------------------------------------------------ one run
def class_means(cache_path: Path, labels: np.ndarray, keys: np.ndarray) -> torch.Tensor:
    """HKD's teacher classifier over the training identities (the MS1M teacher has none over them): for each
    identity, the normalised mean of the teacher's normalised embeddings of its training images (not mirrored),
    from the cache. C x D float32."""
    emb = TeacherCache(cache_path).lookup_numpy(keys, np.zeros(len(keys), bool))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True).clip(1e-12)
    sums = np.zeros((int(labels.max()) + 1, emb.shape[1]), np.float64)
    np.add.at(sums, labels, emb)
    sums /= np.linalg.norm(sums, axis=1, keepdims=True).clip(1e-12)
    return torch.from_numpy(sums.astype(np.float32))


def train_one(method: str, seed: int, cfg: Dict[str, Any], train: Tuple[np.ndarray, np.ndarray, np.ndarray],
              dev: Dict[str, np.ndarray], cache_path: Path, run_dir: Path, device: torch.device,
              steps: Optional[int] = None, init: Optional[Dict[str, Any]] = None, order_seed: Optional[int] = None,
              step_offset: int = 0, save_state: Optional[Path] = None,
              eval_every: Optional[int] = None) -> Dict[str, Any]:
    """Train one student with ``method`` and ``seed`` for ``steps`` (default cfg["steps"]); returns its curve and
    final metrics. ``init``: the state (backbone and classifier) to continue from, else from scratch;
    ``order_seed``: the seed of the sampling order and flips (default ``seed``); ``step_offset``: added to the
    curve's steps; ``save_state``: where to save the final backbone and classifier."""
    images, labels, keys = train
    label, cls_weight, heads = METHODS[method]
    steps = cfg["steps"] if steps is None else steps
    order_seed = seed if order_seed is None else order_seed
    every = cfg["eval_every"] if eval_every is None else eval_every
    torch.manual_seed(seed)
    np.random.seed(seed)
    num_classes = int(labels.max()) + 1
    backbone = TinyMobileFaceNet(num_features=128, width=cfg["width"]).to(device)
    backbone.train()
    pfc = PartialFC(MarginSoftmax(64.0, *MARGIN_LIST), 128, num_classes, 1.0).to(device)
    pfc.train()
    if init is not None:
        backbone.load_state_dict(init["backbone"])
        pfc.load_state_dict(init["partial_fc"])
    opt = torch.optim.SGD([{"params": backbone.parameters()}, {"params": pfc.parameters()}], lr=cfg["lr"],
                          momentum=0.9, weight_decay=5e-4)
    terms = []
    on_end = []
    if method == "proxylesskd":  # the teacher's classifier (its class means over these identities), frozen
        with torch.no_grad():
            pfc.weight.copy_(class_means(cache_path, labels, keys).to(device))
        pfc.weight.requires_grad_(False)
    for name, weight, params in heads:
        if name == "adadistill":  # the loss itself, over partial FC's weight as the centres (the package's way)
            from insightface_pwr.integration.arcface_torch.centres import install_adadistill
            module, bypass = install_adadistill(pfc, dict(params), num_classes, 128, method)
            terms.append(HeadTerm(name, weight, "embeddings", module, module, uses_labels=True))
            on_end.append(bypass.close)
            continue
        head = create_head(name, **params).to(device)
        spec = get_head_spec(name)
        terms.append(HeadTerm(name, weight, spec.consumes, head, head,
                              uses_labels=getattr(spec.cls, "uses_labels", False)))
    logits = None
    if any(t.consumes == "logits" for t in terms):  # HKD: the teacher's logits from its class means
        from insightface_pwr.integration.arcface_torch.classifier import PartialFCLogits
        logits = PartialFCLogits(pfc, class_means(cache_path, labels, keys).to(device), 1)
    formula = " + ".join([f"{cls_weight:g} * CosFace"] * (cls_weight > 0)
                         + [f"{w:g} * {n}({', '.join(f'{k}={v}' for k, v in p.items())})" for n, w, p in heads])
    run_dir.mkdir(parents=True, exist_ok=True)
    res = cfg["resolution"]
    hooks = DistillHooks(teacher=CachedTeacher(TeacherCache(cache_path)), terms=terms,
                         classification_weight=cls_weight, rank=0, world_size=1, output=str(run_dir), resume=False,
                         frequent=every, formula="L = " + formula, input_size=(res, res), logits=logits,
                         on_end=on_end)
    head_params = hooks.parameters()
    if head_params:
        opt.param_groups.insert(len(opt.param_groups) - 1, {**opt.defaults, "params": head_params})
    warmup = int(cfg["warmup_frac"] * steps)
    sched = PolynomialWarmupLR(opt, warmup, steps)
    n = len(labels)
    spe = n // cfg["batch_size"]
    flip_gen = torch.Generator().manual_seed(10_000 + order_seed)
    teacher_cos = pair_cosines(dev["teacher"])
    curve: List[Dict[str, float]] = []
    t0 = time.monotonic()
    eval_time = 0.0
    step = 0
    epoch = 0
    losses: List[float] = []
    grad_norms: List[float] = []  # the backbone's gradient norm before clipping (clip 5)
    while step < steps:
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(order_seed * 1000 + epoch)).numpy()
        for b in range(spe):
            if step >= steps:
                break
            idx = np.sort(perm[b * cfg["batch_size"]:(b + 1) * cfg["batch_size"]])
            flips = torch.rand(len(idx), generator=flip_gen) < 0.5
            img = torch.from_numpy(images[idx]).float()
            img = torch.where(flips[:, None, None, None], torch.flip(img, dims=[-1]), img)
            img = ((img - 127.5) / 127.5).to(device)
            BATCH_KEYS.publish(img, torch.from_numpy(keys[idx]), flips)
            step += 1
            emb = backbone(img)
            loss = pfc(emb, torch.from_numpy(labels[idx]).to(device))
            loss = hooks.step(step, img, emb, torch.from_numpy(labels[idx]).to(device), loss)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{method} seed {seed}: loss {loss.item()} at step {step}")
            loss.backward()
            grad_norms.append(float(torch.nn.utils.clip_grad_norm_(backbone.parameters(), 5)))
            opt.step()
            opt.zero_grad()
            sched.step()
            losses.append(float(loss.item()))
            hooks.log(step, None)
            if step % every == 0 or step == steps:
                te = time.monotonic()
                m = evaluate_student(backbone, dev, teacher_cos, device, final=step == steps)
                eval_time += time.monotonic() - te
                g = np.asarray(grad_norms[-every:])
                m.update(step=step + step_offset, loss=float(np.mean(losses[-every:])),
                         grad_norm=float(np.median(g)), clipped=float(np.mean(g > 5)),
                         terms=dict(hooks.last))
                curve.append(m)
                log(f"  {method} s{seed} step {step}/{steps}: loss {m['loss']:.3f} |g| {m['grad_norm']:.2f} "
                    f"clipped {m['clipped']:.2f} dev acc (no flip) {m['accuracy_noflip']:.4f}"
                    + (f" flip {m['accuracy']:.4f} tpr@1e-2 {m['tpr_at_1e-2']:.4f} tau {m['kendall_tau']:.4f}"
                       if "kendall_tau" in m else "") + f" ({time.monotonic() - t0:.0f} s)")
        epoch += 1
    hooks.end()
    wall = time.monotonic() - t0
    save_state = save_state or run_dir.parent / f"{method}_s{seed}.pt"  # every run's final weights, in --work
    if save_state is not None:
        atomic_save({"backbone": backbone.state_dict(), "partial_fc": pfc.state_dict()}, save_state)
    return {"method": method, "label": label, "seed": seed, "formula": "L = " + formula, "curve": curve,
            "final": curve[-1], "wall_s": wall, "eval_s": eval_time, "train_s_per_step": (wall - eval_time) / steps,
            "steps": steps, "from_baseline": init is not None}


def reevaluate(r: Dict[str, Any], state: Path, cfg: Dict[str, Any], dev: Dict[str, np.ndarray],
               device: torch.device) -> Dict[str, Any]:
    """Adds the final metrics a run lacks (it finished before they existed) from its saved weights; the metrics it
    has are recomputed as a check and must agree."""
    model = TinyMobileFaceNet(num_features=128, width=cfg["width"]).to(device)
    model.load_state_dict(torch.load(state, map_location=device, weights_only=True)["backbone"])
    m = evaluate_student(model, dev, pair_cosines(dev["teacher"]), device, final=True)
    for k in ("accuracy", "accuracy_noflip", "kendall_tau"):
        if abs(m[k] - r["final"][k]) > 1e-6:
            raise RuntimeError(f"{r['method']} seed {r['seed']}: re-evaluating {state} gives {k} {m[k]}, the run "
                               f"recorded {r['final'][k]}")
    added = [k for k in m if k not in r["final"]]
    r["final"].update({k: m[k] for k in added})
    r["curve"][-1].update({k: m[k] for k in added})
    r["reevaluated"] = f"{', '.join(added)} added from {state.name} on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    log(f"{r['method']} seed {r['seed']}: re-evaluated from {state.name} ({r['reevaluated']})")
    return r


# ------------------------------------------------------------------------------------------------ report
def _ms(values: Sequence[float], scale: float = 100.0, digits: int = 2) -> str:
    v = np.asarray(values, np.float64) * scale
    if len(v) == 1:
        return f"{v[0]:.{digits}f}"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"


def write_table(results: List[Dict[str, Any]], teacher: Dict[str, float], cfg: Dict[str, Any], methods: List[str],
                md_path: Path, png_name: str, header: str, from_baseline: bool = False) -> str:
    fine = any("accuracy_fine" in r["final"] for r in results)
    lines = [header, "",
             "| method | loss | dev accuracy, flip (%) | TPR@FPR=1e-2 (%) | Kendall tau (teacher vs student) | "
             "dev accuracy, no flip (%) | best-seed acc (%) | wall s / run |" + (" dev accuracy, flip, all thresholds (%) |" if fine else ""),
             "|---|---|---|---|---|---|---|---|" + ("---|" if fine else ""),
             f"| Teacher (MobileFaceNet, MS1M, 112x112) | - | {teacher['accuracy'] * 100:.2f} | "
             f"{teacher['tpr_at_1e-2'] * 100:.2f} | 1 | - | - | - |" + (f" {teacher.get('accuracy_fine', float('nan')) * 100:.2f} |" if fine else "")]
    base_acc = None
    for m in methods:
        rs = [r for r in results if r["method"] == m]
        if not rs:
            continue
        acc = [r["final"]["accuracy"] for r in rs]
        if m == "baseline":
            base_acc = acc
        lines.append(f"| {METHODS[m][0]}{'' if len(rs) == len(cfg['seeds']) else f' (n = {len(rs)})'} | `{rs[0]['formula'][4:]}` | {_ms(acc)} | "
                     f"{_ms([r['final']['tpr_at_1e-2'] for r in rs])} | "
                     f"{_ms([r['final']['kendall_tau'] for r in rs], 1.0, 3)} | "
                     f"{_ms([r['final']['accuracy_noflip'] for r in rs])} | {max(acc) * 100:.2f} | "
                     f"{np.mean([r['wall_s'] for r in rs]):.0f} |"
                     + (f" {_ms([r['final']['accuracy_fine'] for r in rs if 'accuracy_fine' in r['final']]) if any('accuracy_fine' in r['final'] for r in rs) else '-'}"
                        f"{'' if sum('accuracy_fine' in r['final'] for r in rs) in (0, len(rs)) else ' (n = %d)' % sum('accuracy_fine' in r['final'] for r in rs)} |"
                        if fine else ""))
    lines += ["", f"Mean ± sample standard deviation over seeds {cfg['seeds']} "
                  f"(n = {len(cfg['seeds'])}); accuracy: 10-fold, flip-summed embeddings, 2,830 lfw_dev pairs; "
                  f"Kendall tau-b of the 2,830 pair cosine similarities, student vs teacher.", ""]
    if from_baseline:
        lines += comparison_lines(results, methods) + [f"![final dev accuracy per row]({png_name})"]
        text = "\n".join(lines) + "\n"
        atomic_write_bytes(md_path, text.encode())
        return text
    if base_acc is not None and len(base_acc) > 1:
        lines += ["Difference to the baseline (dev accuracy, percentage points; seed-paired mean, and whether it "
                  "exceeds the larger of the two methods' seed-to-seed standard deviations):", ""]
        for m in methods:
            rs = sorted([r for r in results if r["method"] == m], key=lambda r: r["seed"])
            base = sorted([r for r in results if r["method"] == "baseline"], key=lambda r: r["seed"])
            if m == "baseline" or len(rs) != len(base):
                continue
            a = np.array([r["final"]["accuracy"] for r in rs]) * 100
            b = np.array([r["final"]["accuracy"] for r in base]) * 100
            spread = max(a.std(ddof=1), b.std(ddof=1))
            diff = a.mean() - b.mean()
            verdict = "beyond spread" if abs(diff) > spread else "within spread"
            lines.append(f"- {METHODS[m][0]}: {diff:+.2f} pp (spread {spread:.2f} pp: {verdict})")
        lines.append("")
    lines.append(f"![dev accuracy over training]({png_name})")
    text = "\n".join(lines) + "\n"
    atomic_write_bytes(md_path, text.encode())
    return text


def _acc(results: List[Dict[str, Any]], method: str, key: str = "accuracy") -> np.ndarray:
    """Final dev accuracies (flip, %) of ``method`` (``key``: accuracy or accuracy_fine), in seed order."""
    return np.array([r["final"][key] * 100 for r in sorted(results, key=lambda r: r["seed"])
                     if r["method"] == method and key in r["final"]])


def compare(results: List[Dict[str, Any]], a: str, b: str,
            key: str = "accuracy") -> Optional[Tuple[float, float, str]]:
    """(mean(a) - mean(b), sd(a) + sd(b), verdict) in pp; beyond the spread when |difference| > the sum of the two
    sample standard deviations. None when a row has fewer than 2 seeds."""
    x, y = _acc(results, a, key), _acc(results, b, key)
    if len(x) < 2 or len(y) < 2:
        return None
    d, spread = float(x.mean() - y.mean()), float(x.std(ddof=1) + y.std(ddof=1))
    return d, spread, ("beyond the spread" if abs(d) > spread else "within the spread")


RELATIONAL = ["rkd_d", "rkd_a", "rkd_da", "darkrank", "rkd_da_alone", "darkrank_alone", "pwr_diff_m01",
              "pwr_diff_std", "pwr_diff", "pwr_exp_m01", "pwr_exp_std", "pwr_exp", "pwr_exp_cos", "pwr_ranknet",
              "pwr_exp_cosface", "pwr_exp_cosface_hkd", "ekd", "coupleface"]


def comparison_lines(results: List[Dict[str, Any]], methods: List[str]) -> List[str]:
    """from_baseline protocol: each row against the baseline and the control, then the paper's claims."""
    have = [m for m in methods if len(_acc(results, m)) >= 2]
    lbl = lambda m: METHODS[m][0]  # noqa: E731
    out = ["Each row against the baseline it started from and against the control (dev accuracy, flip, percentage "
           "points: difference of the means over seeds; \"beyond the spread\" = the difference exceeds the SUM of "
           "the two rows' sample standard deviations):", "",
           "| row | n | vs baseline (pp) | vs control (pp) |", "|---|---|---|---|"]
    for m in have:
        if m in ("baseline",):
            continue
        cells = []
        for ref in ("baseline", "control"):
            c = compare(results, m, ref) if ref != m and ref in have else None
            cells.append("-" if c is None else f"{c[0]:+.2f} (sum of sds {c[1]:.2f}: {c[2]})")
        out.append(f"| {lbl(m)} | {len(_acc(results, m))} | {cells[0]} | {cells[1]} |")
    out += ["", "The paper's claims (section 4.3 and footnote 3), read in this run (same rule), on the dev accuracy "
            "with InsightFace's 0.01 threshold grid and on the same 10-fold accuracy with every distance midpoint "
            "as a candidate threshold (\"all thresholds\"; not recorded by runs made before it existed: n "
            "stated):", "",
            "| claim of the paper | comparison here | difference (pp) | sum of sds (pp) | reproduced? | difference, "
            "all thresholds (pp) | sum of sds | reproduced? |",
            "|---|---|---|---|---|---|---|---|"]

    def row(claim: str, a: str, b: str, sign: int = 1) -> None:
        if a not in methods or b not in methods:
            return
        cells = []
        for key in ("accuracy", "accuracy_fine"):
            c = compare(results, a, b, key)
            if c is None:
                cells.append("- | - | not run (n < 2)")
                continue
            d, spread, _ = c
            if abs(d) < 1e-9:
                verdict = "no: equal"
            elif sign * d > spread:
                verdict = "yes, beyond the spread"
            elif sign * d > 0:
                verdict = "same direction, within the spread"
            elif -sign * d > spread:
                verdict = "no: the opposite, beyond the spread"
            else:
                verdict = "no: opposite direction, within the spread"
            n = min(len(_acc(results, a, key)), len(_acc(results, b, key)))
            cells.append(f"{d:+.2f} | {spread:.2f} | {verdict}{'' if n >= 3 else f' (n = {n})'}")
        out.append(f"| {claim} | {lbl(a)} {'>' if sign > 0 else '<'} {lbl(b)} | {cells[0]} | {cells[1]} |")

    # the rows of PWR-Exp with an adaptive margin (alone; the + CosFace rows are neither side) vs every other
    # relational row; the best of each side, chosen per metric
    adaptive = [m for m in ("pwr_exp_std", "pwr_exp") if m in have]
    others = [m for m in RELATIONAL if m in have and m not in ("pwr_exp_std", "pwr_exp", "pwr_exp_cosface",
                                                                "pwr_exp_cosface_hkd")]
    for key, what in (("accuracy", "grid"), ("accuracy_fine", "all thresholds")):
        mean = lambda m: float(_acc(results, m, key).mean()) if len(_acc(results, m, key)) else -1.0  # noqa: E731
        if adaptive and others:
            best_a, best_o = max(adaptive, key=mean), max(others, key=mean)
            row(f"PWR-Exp with an adaptive margin is the best relational method (the best of each side by the "
                f"{what} accuracy; PWR + CosFace rows excluded)", best_a, best_o)
    for a, b in (("pwr_exp", "pwr_exp_m01"), ("pwr_exp_std", "pwr_exp_m01"), ("pwr_diff", "pwr_diff_m01"),
                 ("pwr_diff_std", "pwr_diff_m01"), ("pwr_exp", "pwr_ranknet")):
        row("adaptive margins beat fixed ones (0.1, RankNet)", a, b)
    row("PWR alone beats PWR + CosFace + HKD", "pwr_exp", "pwr_exp_cosface_hkd")
    row("PWR alone beats PWR + CosFace", "pwr_exp", "pwr_exp_cosface")
    for a in ("rkd_da_alone", "darkrank_alone"):
        row("RKD and DarkRank alone do not reach the baseline", a, "baseline", sign=-1)
    row("cosine relation slightly better than euclidean for PWR", "pwr_exp_cos", "pwr_exp")
    out += ["", "Optimisation diagnostics of the continuation (mean over seeds and evaluation intervals): the backbone's "
            "gradient norm before clipping (median of each interval), the fraction of steps clipped at norm 5, and "
            "each loss term's mean value (unweighted) over the last interval:", "",
            "| row | grad norm | clipped | dev distance 2-2cos, 1st..99th percentile | loss terms, last interval |",
            "|---|---|---|---|---|"]
    for m in methods:
        rs = [r for r in results if r["method"] == m]
        if not rs or "grad_norm" not in rs[0]["curve"][0]:
            continue
        g = np.mean([c["grad_norm"] for r in rs for c in r["curve"]])
        cl = np.mean([c["clipped"] for r in rs for c in r["curve"]])
        names = [k for k in rs[0]["curve"][-1].get("terms", {}) if k != "total"]
        terms = ", ".join(f"{k} {np.mean([r['curve'][-1]['terms'][k] for r in rs]):.4g}" for k in names)
        dr = [r for r in rs if "dist_p01" in r["final"]]
        dist = (f"{np.mean([r['final']['dist_p01'] for r in dr]):.3g}..{np.mean([r['final']['dist_p99'] for r in dr]):.3g}"
                f"{'' if len(dr) == len(rs) else f' (n = {len(dr)})'}" if dr else "-")
        out.append(f"| {lbl(m)} | {g:.2f} | {cl:.2f} | {dist} | {terms} |")
    return out + [""]


def write_plot(results: List[Dict[str, Any]], methods: List[str], teacher_acc: float, path: Path,
               title: str) -> str:
    """Dev accuracy over training per method (mean over seeds, band min..max); matplotlib, else a PIL fallback."""
    series = []
    for m in methods:
        rs = [r for r in results if r["method"] == m]
        if not rs:
            continue
        steps = [c["step"] for c in rs[0]["curve"]]
        acc = np.array([[c["accuracy_noflip"] for c in r["curve"]] for r in rs]) * 100
        series.append((METHODS[m][0], np.array(steps), acc.mean(0), acc.min(0), acc.max(0)))
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.png")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        many = len(series) > 8
        fig, ax = plt.subplots(figsize=(12, 6) if many else (8, 5), dpi=110)
        colors = plt.get_cmap("tab20").colors
        for i, (label, x, mean, lo, hi) in enumerate(series):
            line, = ax.plot(x, mean, marker="o", ms=3, label=label, color=colors[i % 20] if many else None,
                            ls="-" if i < 20 else "--")
            ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.15)
        ax.axhline(teacher_acc * 100, color="k", ls="--", lw=1, label="teacher (112x112)")
        ax.set_xlabel("training step")
        ax.set_ylabel("lfw_dev accuracy (%, 10-fold, no flip)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        if many:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        else:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, 0.93))  # below the teacher line
        fig.tight_layout()
        fig.savefig(tmp, format="png")
        plt.close(fig)
        backend = "matplotlib"
    except ImportError:
        _pil_plot(series, teacher_acc * 100, tmp, title)
        backend = "pillow"
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return backend


def write_bars(results: List[Dict[str, Any]], methods: List[str], teacher_acc: float, path: Path,
               title: str) -> None:
    """from_baseline protocol: final dev accuracy per row (flip), InsightFace's threshold grid and all thresholds:
    mean over seeds (bar) and min..max (whisker); the baseline's and the control's means as vertical lines (PIL)."""
    from PIL import Image, ImageDraw
    rows = [m for m in methods if any(r["method"] == m for r in results)]
    left, right, top, row_h, bottom = 300, 30, 50, 26, 40
    w, h = 1000, top + row_h * len(rows) + bottom
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    lo, hi = 45.0, 75.0
    px = lambda v: left + (w - left - right) * (min(max(v, lo), hi) - lo) / (hi - lo)  # noqa: E731
    d.text((10, 8), title, fill="black")
    d.rectangle([left, 6, left + 10, 14], fill="#4c72b0")
    d.text((left + 14, 4), "InsightFace 0.01 threshold grid", fill="black")
    d.rectangle([left + 230, 6, left + 240, 14], fill="#dd8452")
    d.text((left + 244, 4), "every midpoint a threshold (all thresholds)", fill="black")
    d.text((left, 22), f"bar: mean, whisker: min..max over seeds; axis {lo:g}..{hi:g}% (bars start at {lo:g})",
           fill="black")
    for v in range(int(lo), int(hi) + 1, 5):
        d.line([px(v), top - 6, px(v), h - bottom], fill="#dddddd")
        d.text((px(v) - 6, h - bottom + 4), f"{v}", fill="black")
    for ref, color in (("baseline", "#000000"), ("control", "#888888")):
        a = _acc(results, ref)
        if len(a):
            d.line([px(a.mean()), top - 6, px(a.mean()), h - bottom], fill=color, width=1)
    for i, m in enumerate(rows):
        y = top + i * row_h
        d.text((8, y + 6), f"{METHODS[m][0]} (n = {len(_acc(results, m))})"[:48], fill="black")
        for j, (key, color) in enumerate((("accuracy", "#4c72b0"), ("accuracy_fine", "#dd8452"))):
            a = _acc(results, m, key)
            if not len(a):
                continue
            y0 = y + 3 + j * 10
            d.rectangle([px(lo), y0, px(a.mean()), y0 + 8], fill=color)
            d.line([px(a.min()), y0 + 4, px(a.max()), y0 + 4], fill="black", width=1)
    d.text((left, h - 18), f"lfw_dev accuracy (%, flip); black line: baseline, grey: control; teacher "
                           f"{teacher_acc * 100:.2f}%", fill="black")
    with AtomicFile(path) as f:
        img.save(f.file, format="PNG")


def _pil_plot(series: List[Tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]], teacher: float,
              path: Path, title: str) -> None:
    from PIL import Image, ImageDraw
    w, h, left, right, top, bottom = 900, 560, 60, 240, 30, 40
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    xmax = max(float(s[1].max()) for s in series)
    lo = min(float(s[3].min()) for s in series)
    ylo, yhi = math.floor(min(lo, 50.0)), 100.0
    px = lambda x: left + (w - left - right) * x / xmax  # noqa: E731
    py = lambda y: h - bottom - (h - top - bottom) * (y - ylo) / (yhi - ylo)  # noqa: E731
    d.rectangle([left, top, w - right, h - bottom], outline="black")
    for y in range(int(ylo), 101, 5):
        d.line([left - 4, py(y), left, py(y)], fill="black")
        d.text((5, py(y) - 6), f"{y}", fill="black")
    d.text((left, 8), title, fill="black")
    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
              "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2",
              "#c7c7c7", "#dbdb8d", "#9edae5", "#393b79", "#637939", "#8c6d31", "#843c39"]
    d.line([left, py(teacher), w - right, py(teacher)], fill="black")
    for i, (label, x, mean, _, _) in enumerate(series):
        c = colors[i % len(colors)]
        d.line([(px(a), py(b)) for a, b in zip(x, mean)], fill=c, width=2)
        d.text((w - right + 8, top + 16 * i), label, fill=c)
    d.text((w - right + 8, top + 16 * len(series)), "--- teacher", fill="black")
    img.save(path, format="PNG")


def student_line(cfg: Dict[str, Any], from_baseline: bool, n_train: int) -> str:
    params = sum(p.numel() for p in TinyMobileFaceNet(num_features=128, width=cfg["width"]).parameters())
    ep = lambda steps: f"{steps * cfg['batch_size'] / n_train:.1f} epochs"  # noqa: E731
    sched = (f"SGD lr {cfg['lr']:g} momentum 0.9 wd 5e-4, linear warmup over {cfg['warmup_frac']:g} of the steps then "
             f"linear decay to 0, random flips, gradient clip 5")
    text = (f"- student: TinyMobileFaceNet(width={cfg['width']}, 128-d, {params:,} parameters), "
            f"{cfg['resolution']}x{cfg['resolution']} input (teacher embeddings cached at 112x112); batch "
            f"{cfg['batch_size']} of the 9,402 LFW train images (5,090 identities); {sched}; ")
    if not from_baseline:
        return text + f"{cfg['steps']} steps ({ep(cfg['steps'])}), from scratch"
    return text + (f"the paper's protocol: the baseline trained {cfg['base_steps']} steps ({ep(cfg['base_steps'])}) "
                   f"from scratch once per seed; every other row continues from that seed's baseline (backbone AND "
                   f"its CosFace classifier; fresh optimizer, the same schedule restarted) for {cfg['steps']} steps "
                   f"({ep(cfg['steps'])}), all rows of a seed with the same sampling order and flips; the control "
                   f"row continues with CosFace alone (the extra steps without distillation)")


# ------------------------------------------------------------------------------------------------ main
def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default="cpu", help="preset of the options below (default cpu)")
    p.add_argument("--steps", type=int, help="training steps per run")
    p.add_argument("--eval-every", type=int, help="dev evaluation every N steps (and at the end)")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds (each method runs once per seed)")
    p.add_argument("--resolution", type=int, help="student input size (square); the teacher stays at 112")
    p.add_argument("--width", type=int, help="student width (TinyMobileFaceNet channels of the first stage)")
    p.add_argument("--batch-size", type=int, help="images per step")
    p.add_argument("--lr", type=float, default=0.1, help="SGD learning rate (default 0.1)")
    p.add_argument("--warmup-frac", type=float, default=0.05, help="linear warmup, fraction of the steps")
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=None,
                   help="default: the preset's rows (from scratch: " + " ".join(SCRATCH_METHODS) + "; "
                        "from_baseline: " + " ".join(FROM_BASELINE_METHODS) + ")")
    p.add_argument("--base-steps", type=int, help="from_baseline protocol: the baseline's steps (once per seed)")
    p.add_argument("--data", type=Path, default=None, help="shared data kit (default $INSIGHTFACE_PWR_SHARED or "
                                                          "../shared)")
    p.add_argument("--work", type=Path, default=Path.home() / ".cache" / "insightface-pwr" / "real_lfw",
                   help="cache and run folder, outside the repository")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="table and plot folder")
    p.add_argument("--tag", default=None, help="output name suffix (default: none for --size cpu, else the size)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--export", default=None, metavar="DIR",
                   help="write every finished run's backbone as DIR/<method>_seed<k>/model.pt (tiny_mbf24 at width 24, "
                        "tiny_mbf at 16) for `insightface-pwr report DIR/* --network ... --image-size ... --resize`")
    p.add_argument("--claim", action="store_true",
                   help="share the runs with other processes started with the same options and --claim (each "
                        "run is claimed with a lock file in --work; a crashed run's .claim file must be removed)")
    p.add_argument("--report-only", action="store_true",
                   help="tabulate the runs already finished (of this configuration); train none")
    p.add_argument("--note", default="", help="a line added to the table's header (e.g. how the runs were split)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch / onnxruntime CPU threads (default 1: on a shared 2-core machine, 2 threads ran a "
                        "training step 10x slower than 1)")
    p.add_argument("--prepare", choices=("all", "dev"), default=None,
                   help="only prepare (teacher cache, images; 'dev': the dev set's part only) and exit")
    args = p.parse_args(argv)

    cfg = dict(SIZES[args.size])
    for k in ("steps", "base_steps", "eval_every", "seeds", "resolution", "width", "batch_size"):
        if getattr(args, k) is not None:
            cfg[k] = getattr(args, k)
    cfg["lr"] = args.lr
    cfg["warmup_frac"] = args.warmup_frac
    cfg["warmup_steps"] = int(args.warmup_frac * cfg["steps"])
    protocol = cfg.pop("protocol", "scratch")
    from_baseline = protocol == "from_baseline"
    if args.methods is None:
        args.methods = list(FROM_BASELINE_METHODS if from_baseline else SCRATCH_METHODS)
    if from_baseline and "baseline" not in args.methods:
        args.methods.insert(0, "baseline")  # every row starts from it
    if not from_baseline and "control" in args.methods:
        print("error: 'control' is a row of the from_baseline protocol only", file=sys.stderr)
        return 2
    preset_tag = cfg.pop("tag", None)
    tag = args.tag if args.tag is not None else (preset_tag or ("" if args.size == "cpu" else args.size))
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    data = (args.data or shared_dir()).resolve()
    for rel in (TEACHER_FILE, TRAIN_REC, DEV_BIN):
        if not (data / rel).exists():
            print(f"error: {data / rel} not found (set --data or INSIGHTFACE_PWR_SHARED)", file=sys.stderr)
            return 2
    work = args.work.expanduser().resolve()
    if REPO in work.parents or work == REPO:
        print(f"error: --work {work} is inside the repository; keep caches and weights outside it", file=sys.stderr)
        return 2
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()

    log(f"config {cfg}; data {data}; work {work}")
    if args.prepare == "dev":
        prepare_dev(data, work, cfg["resolution"], device, args.threads)
        return 0
    cache_path = prepare_teacher_cache(data, work, device, args.threads)
    log(f"teacher cache {cache_path} ready ({time.monotonic() - t_start:.0f} s)")
    train = prepare_train_images(data / TRAIN_REC, work, cfg["resolution"])
    log(f"train images {train[0].shape} ready ({time.monotonic() - t_start:.0f} s)")
    dev = prepare_dev(data, work, cfg["resolution"], device, args.threads)
    if args.prepare == "all":
        return 0
    teacher = verification(dev["teacher"], dev["issame"], None, full=True)
    log(f"dev {dev['images'].shape}; teacher dev accuracy {teacher['accuracy']:.4f} "
        f"({time.monotonic() - t_start:.0f} s)")
    prep_s = time.monotonic() - t_start

    config_name = (f"r{cfg['resolution']}_w{cfg['width']}_b{cfg['batch_size']}_s{cfg['steps']}_lr{cfg['lr']:g}"
                   f"_wu{cfg['warmup_steps']}_e{cfg['eval_every']}")
    base_root = None
    if from_baseline:  # the baseline is the scratch protocol's baseline run of base_steps: its own folder
        cfg.setdefault("base_eval_every", cfg["eval_every"])
        base_root = work / "runs" / (f"r{cfg['resolution']}_w{cfg['width']}_b{cfg['batch_size']}_s{cfg['base_steps']}"
                                     f"_lr{cfg['lr']:g}_wu{int(args.warmup_frac * cfg['base_steps'])}"
                                     f"_e{cfg['base_eval_every']}")
        config_name = f"fb{cfg['base_steps']}e{cfg['base_eval_every']}_" + config_name
    results = []
    run_root = work / "runs" / config_name

    def claim(path: Path) -> bool:
        """With --claim: True if this process took the run ``path`` (a lock file), False if another has it."""
        if not args.claim:
            return True
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.close(os.open(path.with_suffix(".claim"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return True
        except FileExistsError:
            return False

    def finish(path: Path, r: Dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, json.dumps(r, indent=1).encode())
        results.append(r)
        log(f"{r['method']} seed {r['seed']}: {r['final']} in {r['wall_s']:.0f} s")

    tmp_dir = run_root / f"tmp{os.getpid()}"
    if from_baseline:  # first every seed's baseline (the runs continue from it), then the rows, seeds outer
        base_steps = cfg["base_steps"]
        for seed in cfg["seeds"]:
            path, state = base_root / f"baseline_s{seed}.json", base_root / f"baseline_s{seed}.pt"
            if (path.is_file() and state.is_file()) or args.report_only or not claim(path):
                continue
            log(f"baseline seed {seed}: training {base_steps} steps from scratch")
            finish(path, train_one("baseline", seed, cfg, train, dev, cache_path, tmp_dir, device, steps=base_steps,
                                   save_state=state, eval_every=cfg["base_eval_every"]))
        results.clear()
    for seed in cfg["seeds"]:  # seeds outer: a partial run still covers every method
        for method in args.methods:
            path = (base_root if from_baseline and method == "baseline" else run_root) / f"{method}_s{seed}.json"
            if path.is_file():
                r = json.loads(path.read_text())
                state = path.with_suffix(".pt")
                if "accuracy_fine" not in r["final"] and state.is_file():  # a run older than the metric
                    r = reevaluate(r, state, cfg, dev, device)
                    atomic_write_bytes(path, json.dumps(r, indent=1).encode())
                results.append(r)
                log(f"{method} seed {seed}: done before, {results[-1]['final']}")
                continue
            if args.report_only:
                log(f"{method} seed {seed}: not run yet (--report-only), left out of the table")
                continue
            if from_baseline and method == "baseline":  # claimed by another process above: not in the table
                log(f"baseline seed {seed}: not finished (another process), left out of the table")
                continue
            if not claim(path):  # several processes share the runs: each takes the next unclaimed one
                log(f"{method} seed {seed}: claimed by another process")
                continue
            if not from_baseline:
                log(f"{method} seed {seed}: training {cfg['steps']} steps")
                finish(path, train_one(method, seed, cfg, train, dev, cache_path, tmp_dir, device))
                continue
            state = base_root / f"baseline_s{seed}.pt"
            while not state.is_file():  # trained by another process (--claim)
                log(f"{method} seed {seed}: waiting for the baseline of seed {seed}")
                time.sleep(20)
            init = torch.load(state, map_location=device, weights_only=True)
            log(f"{method} seed {seed}: training {cfg['steps']} steps from the baseline")
            finish(path, train_one(method, seed, cfg, train, dev, cache_path, tmp_dir, device, init=init,
                                   order_seed=100 + seed, step_offset=cfg["base_steps"]))
    wall = time.monotonic() - t_start

    args.out.mkdir(parents=True, exist_ok=True)
    stem = "real_lfw" + (f"_{tag}" if tag else "")
    import shlex
    shown = list(sys.argv[1:] if argv is None else argv)
    if "--note" in shown and shown.index("--note") + 1 < len(shown):
        shown[shown.index("--note") + 1] = "TEXT"  # the note itself is printed below
    cmd = "python benchmarks/real_lfw.py " + shlex.join(shown)
    cpu_model = platform.processor() or platform.machine()
    try:
        cpu_model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                         if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    machine = (f"{cpu_model}, {os.cpu_count()} logical CPU(s), torch {torch.__version__} "
               f"{'CUDA ' + torch.cuda.get_device_name(0) if device.type == 'cuda' else 'CPU'}, "
               f"{args.threads} thread(s)")
    header = "\n".join([
        f"# Real faces (LFW): students distilled from a real MobileFaceNet teacher ({stem})", "",
        f"- command: `{cmd.strip()}`",
        f"- machine: {machine}; date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        (f"- wall time: {wall / 60:.1f} min in all (this invocation; runs finished by an earlier invocation of the "
         f"same command are reused), of which {prep_s:.0f} s preparation (teacher cache, decoding)"
         if not args.report_only else "- this invocation only tabulated finished runs (--report-only)"),
        f"- training time summed over the {len(results)} runs: {sum(r['wall_s'] for r in results) / 60:.1f} min "
        f"(of which dev evaluations {sum(r['eval_s'] for r in results) / 60:.1f} min); mean training step "
        f"{np.mean([r['train_s_per_step'] for r in results]):.2f} s",
        f"- seeds: {cfg['seeds']} (runs finished: {len(results)} of {len(cfg['seeds']) * len(args.methods)}); "
        f"methods: {', '.join(args.methods)}"] + ([f"- {args.note}"] if args.note else []) + [
        student_line(cfg, from_baseline, len(train[1])),
        f"- in-process single-rank loop mirroring the CPU host's (the distillation through DistillHooks + the "
        f"teacher cache); " + ("HKD's teacher classifier over the 5,090 training identities (the MS1M teacher has "
                               "none over them): the teacher's class means, the normalised mean of the teacher's "
                               "normalised embeddings of each identity's training images (from the cache); logits "
                               "as the package's PartialFCLogits makes them (CosFace margin and scale on both sides)"
                               if any(h[0] == "hkd" for m in args.methods for h in METHODS[m][2])
                               else "HKD left out: no teacher classifier over these identities exists")])
    if args.export:  # every finished run's backbone as a work folder for `insightface-pwr report`
        for r in results:
            root = base_root if (from_baseline and r["method"] == "baseline") else run_root
            state = root / f"{r['method']}_s{r['seed']}.pt"
            if state.is_file():
                folder = Path(args.export) / f"{r['method']}_seed{r['seed']}"
                atomic_save(torch.load(state, map_location="cpu", weights_only=True)["backbone"], folder / "model.pt")
        log(f"exported the runs' backbones to {args.export} (network tiny_mbf{'24' if cfg['width'] == 24 else ''}, "
            f"{cfg['resolution']}px)")
    md = write_table(results, teacher, cfg, args.methods, args.out / f"{stem}.md", f"{stem}.png", header,
                     from_baseline)
    if from_baseline:
        write_bars(results, args.methods, teacher["accuracy"], args.out / f"{stem}.png",
                   f"lfw_dev after the continuation, {cfg['resolution']}px students, seeds {cfg['seeds']}")
        backend = "pillow"
    else:
        backend = write_plot(results, args.methods, teacher["accuracy"], args.out / f"{stem}.png",
                             f"lfw_dev accuracy, {cfg['resolution']}px students, seeds {cfg['seeds']} "
                             f"(mean, band min..max)")
    print(md)
    log(f"wrote {args.out / (stem + '.md')} and {stem}.png ({backend}); total {wall:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
