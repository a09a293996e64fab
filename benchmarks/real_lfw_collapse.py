"""Why PWR-Exp scores ~50% in real_lfw's from_baseline preset: two measurements on the students it saved.

    python benchmarks/real_lfw_collapse.py scale          # PWR loss vs the student's distance scale, at the baseline
    python benchmarks/real_lfw_collapse.py bn pwr_exp_s0 pwr_diff_s0 ...   # saved students: dev distances, BN

``scale``: the baseline student of ``--seed`` (saved by ``real_lfw.py --size from_baseline`` in ``--work``) embeds
``--batches`` random training batches of 128 (BatchNorm in training mode, as in a training step); its embeddings are
scaled around their batch mean, ``e_c = mean + c (e - mean)``, which shrinks (c < 1) or stretches (c > 1) every
distance between the L2-normalised rows, and the PWR loss against the cached teacher is printed for each c and each
variant (teacher-diff margin). A loss that falls as c falls rewards collapsing the distance scale.

``bn``: for each saved student (``<run>.pt`` in the from_baseline run folder), the dev pairs' squared distances
(2 - 2 cos, no flip) with BatchNorm in eval mode (running statistics) and with batch statistics: 10-fold accuracy on
InsightFace's 0.01 threshold grid and with every midpoint as a threshold, the 1st and 99th percentile of the
distances, and the final BatchNorm1d's bias and scale norms (the embedding = bias + scale * normalised feature).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from insightface_pwr.data.paths import shared_dir  # noqa: E402
from insightface_pwr.data.verification_bin import load_bin  # noqa: E402
from insightface_pwr.distill.teacher_cache import TeacherCache  # noqa: E402
from insightface_pwr.eval.verification_metrics import kfold_accuracy  # noqa: E402
from insightface_pwr.heads import *  # noqa: E402,F401,F403  (registers the heads)
from insightface_pwr.heads.registry import create_head  # noqa: E402
from insightface_pwr.models.backbones import TinyMobileFaceNet  # noqa: E402

PRESET = dict(resolution=56, width=24, base="r56_w24_b128_s300_lr0.1_wu15_e50",
              runs="fb300e50_r56_w24_b128_s60_lr0.1_wu3_e30")


def load(path: Path, width: int) -> TinyMobileFaceNet:
    m = TinyMobileFaceNet(128, width)
    m.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["backbone"])
    return m


def scale(args: argparse.Namespace) -> None:
    w = args.work
    m = load(w / "runs" / PRESET["base"] / f"baseline_s{args.seed}.pt", PRESET["width"]).train()
    imgs = np.load(w / f"train_{PRESET['resolution']}.u8.npy", mmap_mode="r")
    keys = np.load(w / "train_keys.npy")
    cache = TeacherCache(w / "teacher_train_112.f16.npy")
    heads = {"PWR-Diff": dict(inversion="diff"), "PWR-Exp beta 0.25": dict(inversion="exp", beta=0.25),
             "PWR-Exp beta 1": dict(inversion="exp", beta=1.0), "PWR-Exp beta 4": dict(inversion="exp", beta=4.0),
             "PWR-Exp beta 16": dict(inversion="exp", beta=16.0),
             "PWR-Exp beta 1, cosine": dict(inversion="exp", beta=1.0, relation="cosine")}
    heads = {k: create_head("pwr", **{"relation": "euclidean", "margin": "teacher_diff", **v}) for k, v in heads.items()}
    cs = [0.25, 0.5, 1.0, 2.0, 4.0]
    rng = np.random.default_rng(args.seed)
    res = {k: [] for k in heads}
    for b in range(args.batches):
        idx = np.sort(rng.choice(len(keys), 128, replace=False))
        with torch.no_grad():
            e = m((torch.from_numpy(np.ascontiguousarray(imgs[idx])).float() - 127.5) / 127.5)
            t = torch.from_numpy(cache.lookup_numpy(keys[idx], np.zeros(128, bool)))
            mu = e.mean(0, keepdim=True)
            for k, h in heads.items():
                res[k].append([float(h(student=mu + c * (e - mu), teacher=t)) for c in cs])
        en, tn = torch.nn.functional.normalize(e), torch.nn.functional.normalize(t)
        iu = torch.triu_indices(128, 128, 1)
        print(f"batch {b}: median euclidean distance of the normalised rows: student "
              f"{torch.cdist(en, en)[iu[0], iu[1]].median():.3f}, teacher {torch.cdist(tn, tn)[iu[0], iu[1]].median():.3f}")
    print(f"PWR loss (teacher-diff margin, mean of {args.batches} batches) at spread scale c = {cs}; "
          f"last column: loss(0.25) / loss(1)")
    for k, v in res.items():
        v = np.mean(v, 0)
        print(f"  {k:24s} " + " ".join(f"{x:9.4g}" for x in v) + f"   {v[0] / v[2]:.2f}")


def bn(args: argparse.Namespace) -> None:
    w = args.work
    dev = np.load(w / f"dev_{PRESET['resolution']}.u8.npy")
    issame = np.asarray(load_bin(args.data / "data/lfw/lfw_dev.bin").issame, bool)

    def dist(m: torch.nn.Module, train_bn: bool) -> np.ndarray:
        m.train(train_bn)
        with torch.no_grad():
            e = np.concatenate([m((torch.from_numpy(dev[s:s + 256]).float() - 127.5) / 127.5).numpy()
                                for s in range(0, len(dev), 256)])
        e /= np.linalg.norm(e, axis=1, keepdims=True)
        return 2 - 2 * np.sum(e[0::2] * e[1::2], 1)

    def stats(d: np.ndarray) -> str:
        u = np.unique(d)
        mids = np.r_[u[0] - 1e-9, (u[1:] + u[:-1]) / 2, u[-1] + 1e-9]
        p1, p99 = np.percentile(d, [1, 99])
        return (f"acc grid {kfold_accuracy(d, issame)['accuracy'] * 100:.2f}, all thresholds "
                f"{kfold_accuracy(d, issame, thresholds=mids)['accuracy'] * 100:.2f}, distances {p1:.4f}..{p99:.4f}")

    for name in args.runs:
        folder = PRESET["base"] if name.startswith("baseline") else PRESET["runs"]
        path = w / "runs" / folder / f"{name}.pt"
        m = load(path, PRESET["width"])
        f = m.features
        print(f"{name}: |BN bias| {f.bias.norm():.2f} |BN scale| {f.weight.norm():.2f}\n"
              f"  eval BN (running stats): {stats(dist(m, False))}\n"
              f"  batch statistics:        {stats(dist(load(path, PRESET['width']), True))}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=("scale", "bn"))
    p.add_argument("runs", nargs="*", help="bn: saved runs, e.g. pwr_exp_s0 pwr_diff_s0 baseline_s0")
    p.add_argument("--work", type=Path, default=Path.home() / ".cache" / "insightface-pwr" / "real_lfw")
    p.add_argument("--data", type=Path, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batches", type=int, default=3)
    args = p.parse_args()
    args.data = (args.data or shared_dir()).resolve()
    torch.set_num_threads(1)
    scale(args) if args.what == "scale" else bn(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
