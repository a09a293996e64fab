"""Real faces: does PWR beat the baseline and the other heads? Small students on the LFW train split.

    python benchmarks/real_lfw.py --size cpu      # the committed run (see benchmarks/results/real_lfw.md)
    python benchmarks/real_lfw.py --size smoke    # a minute or two: every method, 1 seed, a few steps
    python benchmarks/real_lfw.py --size gpu --device cuda

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

Methods (weights are the paper's, as in ``recipes/``): ``baseline`` (CosFace), ``rkd_da`` (CosFace + 100 RKD-D +
200 RKD-A), ``darkrank`` (CosFace + DarkRank), ``pwr_diff`` and ``pwr_exp`` (100 PWR with teacher-diff margins,
alone), ``pwr_exp_cosface`` (CosFace + 100 PWR-Exp), ``feature`` (CosFace + 10 feature consistency, cosine;
possible because student and teacher are both 128-d). HKD is left out: it needs the teacher's classifier over the
training identities (softmax over the same classes), and the teacher was trained on MS1M's 85,742 identities, not
on these 5,090, so no such classifier exists.
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
METHODS: Dict[str, Tuple[str, float, List[Tuple[str, float, Dict[str, Any]]]]] = {
    "baseline": ("Baseline (CosFace)", 1.0, []),
    "rkd_da": ("CosFace + RKD-DA", 1.0,
               [("rkd_da", 100.0, {"relation": "euclidean", "mean_normalize": False, "huber_delta": 1.0})]),
    "darkrank": ("CosFace + DarkRank", 1.0,
                 [("darkrank", 1.0, {"alpha": 3.0, "beta": 3.0, "list_length": 4, "relation": "euclidean",
                                     "soft": False})]),
    "pwr_diff": ("PWR-Diff (teacher-diff)", 0.0,
                 [("pwr", 100.0, {"relation": "euclidean", "inversion": "diff", "margin": "teacher_diff"})]),
    "pwr_exp": ("PWR-Exp (teacher-diff)", 0.0,
                [("pwr", 100.0, {"relation": "euclidean", "inversion": "exp", "margin": "teacher_diff",
                                 "beta": 1.0})]),
    "pwr_exp_cosface": ("CosFace + PWR-Exp (teacher-diff)", 1.0,
                        [("pwr", 100.0, {"relation": "euclidean", "inversion": "exp", "margin": "teacher_diff",
                                         "beta": 1.0})]),
    "feature": ("CosFace + feature consistency", 1.0, [("feature", 10.0, {"kind": "cosine"})]),
}

# --size presets: steps, eval_every, seeds, resolution, width, batch
SIZES: Dict[str, Dict[str, Any]] = {
    "smoke": dict(steps=12, eval_every=4, seeds=[0], resolution=48, width=16, batch_size=64),
    # the committed run: 2-core CPU shared with other jobs (load ~14), two processes of one thread each
    "cpu": dict(steps=250, eval_every=50, seeds=[0, 1, 2], resolution=48, width=16, batch_size=128),
    # an estimate of what fits 90 minutes on the same 2 cores when idle (see benchmarks/results/real_lfw.md)
    "cpu90": dict(steps=750, eval_every=150, seeds=[0, 1, 2], resolution=48, width=16, batch_size=128),
    "gpu": dict(steps=6000, eval_every=500, seeds=[0, 1, 2], resolution=112, width=64, batch_size=256),
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.npy")
    np.save(tmp, array, allow_pickle=False)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


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
def train_one(method: str, seed: int, cfg: Dict[str, Any], train: Tuple[np.ndarray, np.ndarray, np.ndarray],
              dev: Dict[str, np.ndarray], cache_path: Path, run_dir: Path, device: torch.device) -> Dict[str, Any]:
    """Train one student with ``method`` and ``seed``; returns its curve and final metrics."""
    images, labels, keys = train
    label, cls_weight, heads = METHODS[method]
    torch.manual_seed(seed)
    np.random.seed(seed)
    num_classes = int(labels.max()) + 1
    backbone = TinyMobileFaceNet(num_features=128, width=cfg["width"]).to(device)
    backbone.train()
    pfc = PartialFC(MarginSoftmax(64.0, *MARGIN_LIST), 128, num_classes, 1.0).to(device)
    pfc.train()
    opt = torch.optim.SGD([{"params": backbone.parameters()}, {"params": pfc.parameters()}], lr=cfg["lr"],
                          momentum=0.9, weight_decay=5e-4)
    terms = []
    for name, weight, params in heads:
        head = create_head(name, **params).to(device)
        terms.append(HeadTerm(name, weight, get_head_spec(name).consumes,
                              lambda s, t, _h=head: _h(student=s, teacher=t), head))
    formula = " + ".join([f"{cls_weight:g} * CosFace"] * (cls_weight > 0)
                         + [f"{w:g} * {n}({', '.join(f'{k}={v}' for k, v in p.items())})" for n, w, p in heads])
    run_dir.mkdir(parents=True, exist_ok=True)
    res = cfg["resolution"]
    hooks = DistillHooks(teacher=CachedTeacher(TeacherCache(cache_path)), terms=terms,
                         classification_weight=cls_weight, rank=0, world_size=1, output=str(run_dir), resume=False,
                         frequent=cfg["eval_every"], formula="L = " + formula, input_size=(res, res))
    head_params = hooks.parameters()
    if head_params:
        opt.param_groups.insert(len(opt.param_groups) - 1, {**opt.defaults, "params": head_params})
    steps = cfg["steps"]
    sched = PolynomialWarmupLR(opt, cfg["warmup_steps"], steps)
    n = len(labels)
    spe = n // cfg["batch_size"]
    flip_gen = torch.Generator().manual_seed(10_000 + seed)
    teacher_cos = pair_cosines(dev["teacher"])
    curve: List[Dict[str, float]] = []
    t0 = time.monotonic()
    eval_time = 0.0
    step = 0
    epoch = 0
    losses: List[float] = []
    while step < steps:
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch)).numpy()
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
            torch.nn.utils.clip_grad_norm_(backbone.parameters(), 5)
            opt.step()
            opt.zero_grad()
            sched.step()
            losses.append(float(loss.item()))
            hooks.log(step, None)
            if step % cfg["eval_every"] == 0 or step == steps:
                te = time.monotonic()
                m = evaluate_student(backbone, dev, teacher_cos, device, final=step == steps)
                eval_time += time.monotonic() - te
                m.update(step=step, loss=float(np.mean(losses[-cfg["eval_every"]:])))
                curve.append(m)
                log(f"  {method} s{seed} step {step}/{steps}: loss {m['loss']:.3f} dev acc (no flip) "
                    f"{m['accuracy_noflip']:.4f}" + (f" flip {m['accuracy']:.4f} tpr@1e-2 {m['tpr_at_1e-2']:.4f} tau {m['kendall_tau']:.4f}" if "kendall_tau" in m else "")
                    + f" ({time.monotonic() - t0:.0f} s)")
        epoch += 1
    hooks.end()
    wall = time.monotonic() - t0
    return {"method": method, "label": label, "seed": seed, "formula": "L = " + formula, "curve": curve,
            "final": curve[-1], "wall_s": wall, "eval_s": eval_time, "train_s_per_step": (wall - eval_time) / steps}


# ------------------------------------------------------------------------------------------------ report
def _ms(values: Sequence[float], scale: float = 100.0, digits: int = 2) -> str:
    v = np.asarray(values, np.float64) * scale
    if len(v) == 1:
        return f"{v[0]:.{digits}f}"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"


def write_table(results: List[Dict[str, Any]], teacher: Dict[str, float], cfg: Dict[str, Any], methods: List[str],
                md_path: Path, png_name: str, header: str) -> str:
    lines = [header, "",
             "| method | loss | dev accuracy, flip (%) | TPR@FPR=1e-2 (%) | Kendall tau (teacher vs student) | "
             "dev accuracy, no flip (%) | best-seed acc (%) | wall s / run |",
             "|---|---|---|---|---|---|---|---|",
             f"| Teacher (MobileFaceNet, MS1M, 112x112) | - | {teacher['accuracy'] * 100:.2f} | "
             f"{teacher['tpr_at_1e-2'] * 100:.2f} | 1 | - | - | - |"]
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
                     f"{np.mean([r['wall_s'] for r in rs]):.0f} |")
    lines += ["", f"Mean ± sample standard deviation over seeds {cfg['seeds']} "
                  f"(n = {len(cfg['seeds'])}); accuracy: 10-fold, flip-summed embeddings, 2,830 lfw_dev pairs; "
                  f"Kendall tau-b of the 2,830 pair cosine similarities, student vs teacher.", ""]
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
        fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
        for label, x, mean, lo, hi in series:
            line, = ax.plot(x, mean, marker="o", ms=3, label=label)
            ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.15)
        ax.axhline(teacher_acc * 100, color="k", ls="--", lw=1, label="teacher (112x112)")
        ax.set_xlabel("training step")
        ax.set_ylabel("lfw_dev accuracy (%, 10-fold, no flip)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
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
    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
    d.line([left, py(teacher), w - right, py(teacher)], fill="black")
    for i, (label, x, mean, _, _) in enumerate(series):
        c = colors[i % len(colors)]
        d.line([(px(a), py(b)) for a, b in zip(x, mean)], fill=c, width=2)
        d.text((w - right + 8, top + 16 * i), label, fill=c)
    d.text((w - right + 8, top + 16 * len(series)), "--- teacher", fill="black")
    img.save(path, format="PNG")


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
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    p.add_argument("--data", type=Path, default=None, help="shared data kit (default $INSIGHTFACE_PWR_SHARED or "
                                                          "../shared)")
    p.add_argument("--work", type=Path, default=Path.home() / ".cache" / "insightface-pwr" / "real_lfw",
                   help="cache and run folder, outside the repository")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="table and plot folder")
    p.add_argument("--tag", default=None, help="output name suffix (default: none for --size cpu, else the size)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
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
    for k in ("steps", "eval_every", "seeds", "resolution", "width", "batch_size"):
        if getattr(args, k) is not None:
            cfg[k] = getattr(args, k)
    cfg["lr"] = args.lr
    cfg["warmup_steps"] = int(args.warmup_frac * cfg["steps"])
    tag = args.tag if args.tag is not None else ("" if args.size == "cpu" else args.size)
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
    results = []
    for seed in cfg["seeds"]:  # seeds outer: a partial run still covers every method
        for method in args.methods:
            path = work / "runs" / config_name / f"{method}_s{seed}.json"
            if path.is_file():
                results.append(json.loads(path.read_text()))
                log(f"{method} seed {seed}: done before, {results[-1]['final']}")
                continue
            if args.report_only:
                log(f"{method} seed {seed}: not run yet (--report-only), left out of the table")
                continue
            if args.claim:  # several processes share the runs: each takes the next unclaimed one
                path.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.close(os.open(path.with_suffix(".claim"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                except FileExistsError:
                    log(f"{method} seed {seed}: claimed by another process")
                    continue
            log(f"{method} seed {seed}: training {cfg['steps']} steps")
            r = train_one(method, seed, cfg, train, dev, cache_path, work / "runs" / config_name / f"tmp{os.getpid()}", device)
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, json.dumps(r, indent=1).encode())
            results.append(r)
            log(f"{method} seed {seed}: {r['final']} in {r['wall_s']:.0f} s")
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
        f"- student: TinyMobileFaceNet(width={cfg['width']}, 128-d), {cfg['resolution']}x{cfg['resolution']} input "
        f"(teacher embeddings cached at 112x112); {cfg['steps']} steps of {cfg['batch_size']} images "
        f"({cfg['steps'] * cfg['batch_size'] / len(train[1]):.1f} epochs of the 9,402 LFW train images, "
        f"5,090 identities), SGD lr {cfg['lr']:g} momentum 0.9 wd 5e-4, {cfg['warmup_steps']} warmup steps then "
        f"linear decay to 0, random flips, from scratch",
        f"- in-process single-rank loop mirroring the CPU host's (the distillation through DistillHooks + the "
        f"teacher cache); HKD left out: no teacher classifier over these identities exists"])
    md = write_table(results, teacher, cfg, args.methods, args.out / f"{stem}.md", f"{stem}.png", header)
    backend = write_plot(results, args.methods, teacher["accuracy"], args.out / f"{stem}.png",
                         f"lfw_dev accuracy, {cfg['resolution']}px students, seeds {cfg['seeds']} "
                         f"(mean, band min..max)")
    print(md)
    log(f"wrote {args.out / (stem + '.md')} and {stem}.png ({backend}); total {wall:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
