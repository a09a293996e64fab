"""Face verification metrics on embeddings of image pairs (InsightFace / LFW protocol).

Conventions: ``embeddings`` is ``2P x D``, pair ``i`` being rows ``2i`` and ``2i + 1``; ``issame`` is a length-P
bool array. Embeddings are L2-normalised, and a pair's *distance* is the squared euclidean distance of the
normalised embeddings (in [0, 4]); a pair is predicted "same" when ``distance < threshold``.

* :func:`kfold_accuracy` - 10-fold accuracy: pairs split into 10 contiguous folds (the first ``P % 10`` folds one
  pair longer); for each fold the threshold maximising accuracy on the other 9 folds (grid 0, 0.01, ..., 3.99,
  first maximum) is applied to the held-out fold; mean and (population) std over the folds.
* :func:`tpr_at_fpr` - the largest true-positive rate over thresholds whose false-positive rate is <= each target,
  on all pairs; a target below ``1 / negatives`` is not supported by the pair count and is left out.
* :func:`roc_auc` - the area under the ROC curve (probability that a same pair is closer than a different pair,
  ties counting one half).
* :func:`flip_sum` - InsightFace's flip test: ``normalise(embedding(image) + embedding(mirrored image))``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

__all__ = ["VerificationResult", "pair_distances", "kfold_accuracy", "tpr_at_fpr", "roc_auc", "flip_sum",
           "evaluate_verification", "DEFAULT_FPRS", "THRESHOLDS"]

THRESHOLDS = np.arange(0, 4, 0.01)
DEFAULT_FPRS = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (a zero row stays zero)."""
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def flip_sum(embeddings: np.ndarray, flipped: np.ndarray) -> np.ndarray:
    """``normalise(e + e_flip)`` row by row (raw embeddings in, unit rows out)."""
    embeddings, flipped = np.asarray(embeddings, np.float64), np.asarray(flipped, np.float64)
    if embeddings.shape != flipped.shape:
        raise ValueError(f"embeddings {embeddings.shape} and flipped embeddings {flipped.shape} differ in shape")
    return l2_normalize(embeddings + flipped)


def _check_pairs(embeddings: np.ndarray, issame: Sequence[bool]) -> np.ndarray:
    embeddings = np.asarray(embeddings)
    issame = np.asarray(issame)
    if embeddings.ndim != 2 or embeddings.shape[0] != 2 * issame.shape[0] or issame.ndim != 1:
        raise ValueError(f"embeddings must be 2P x D for P = len(issame) = {issame.shape[0]} pairs, got "
                         f"{embeddings.shape}")
    if not np.isfinite(embeddings).all():
        raise ValueError(f"embeddings hold {int((~np.isfinite(embeddings)).sum())} non-finite value(s)")
    return embeddings


def pair_distances(embeddings: np.ndarray, issame: Sequence[bool]) -> np.ndarray:
    """Squared euclidean distance of each pair's L2-normalised embeddings (length P, values in [0, 4])."""
    e = l2_normalize(_check_pairs(embeddings, issame))
    return np.sum((e[0::2] - e[1::2]) ** 2, axis=1)


def fold_slices(n: int, folds: int) -> List[slice]:
    """``folds`` contiguous slices covering ``range(n)``, the first ``n % folds`` one longer (scikit-learn's KFold)."""
    if not 1 < folds <= n:
        raise ValueError(f"need 2 <= folds <= pairs, got folds={folds} for {n} pairs")
    sizes = [n // folds + (1 if i < n % folds else 0) for i in range(folds)]
    starts = np.cumsum([0] + sizes)
    return [slice(int(starts[i]), int(starts[i + 1])) for i in range(folds)]


def kfold_accuracy(dist: np.ndarray, issame: np.ndarray, folds: int = 10,
                   thresholds: np.ndarray = THRESHOLDS) -> Dict[str, object]:
    """10-fold verification accuracy of pair distances; returns mean, std, per-fold accuracies and thresholds."""
    dist, issame = np.asarray(dist, np.float64), np.asarray(issame, bool)
    correct = (dist[None, :] < thresholds[:, None]) == issame[None, :]  # thresholds x pairs
    accs, chosen = [], []
    for test in fold_slices(len(dist), folds):
        train = np.ones(len(dist), bool)
        train[test] = False
        best = int(np.argmax(correct[:, train].mean(axis=1)))
        chosen.append(float(thresholds[best]))
        accs.append(float(correct[best, test].mean()))
    return {"accuracy": float(np.mean(accs)), "accuracy_std": float(np.std(accs)), "fold_accuracies": accs,
            "thresholds": chosen}


def _roc_points(dist: np.ndarray, issame: np.ndarray):
    """True and false positive counts when accepting every pair with distance <= each distinct distance."""
    order = np.argsort(dist, kind="stable")
    d, same = dist[order], issame[order]
    last = np.r_[d[1:] != d[:-1], True]  # the last pair of each run of equal distances
    tp, fp = np.cumsum(same)[last], np.cumsum(~same)[last]
    return np.r_[0, tp], np.r_[0, fp]


def tpr_at_fpr(dist: np.ndarray, issame: np.ndarray, fprs: Sequence[float] = DEFAULT_FPRS) -> Dict[str, float]:
    """``{"1e-03": tpr, ...}`` for each target FPR the pair count supports (``target * negatives >= 1``)."""
    dist, issame = np.asarray(dist, np.float64), np.asarray(issame, bool)
    pos, neg = int(issame.sum()), int((~issame).sum())
    if pos == 0 or neg == 0:
        raise ValueError(f"TPR at FPR needs same and different pairs, got {pos} same and {neg} different")
    tp, fp = _roc_points(dist, issame)
    out = {}
    for target in fprs:
        if target * neg < 1:
            continue
        ok = fp <= np.floor(target * neg * (1 + 1e-9))
        out[f"{target:.0e}"] = float(tp[ok].max() / pos)
    return out


def roc_auc(dist: np.ndarray, issame: np.ndarray) -> float:
    """Area under the ROC curve of ``-distance`` as a same-person score (Mann-Whitney, ties count 1/2)."""
    dist, issame = np.asarray(dist, np.float64), np.asarray(issame, bool)
    pos, neg = int(issame.sum()), int((~issame).sum())
    if pos == 0 or neg == 0:
        raise ValueError(f"AUC needs same and different pairs, got {pos} same and {neg} different")
    tp, fp = _roc_points(dist, issame)
    tpr, fpr = tp / pos, fp / neg
    return float(np.sum((fpr[1:] - fpr[:-1]) * (tpr[1:] + tpr[:-1]) / 2))


@dataclass
class VerificationResult:
    """Metrics of one verification set (accuracies in [0, 1])."""

    name: str
    pairs: int
    accuracy: float
    accuracy_std: float
    accuracy_flip: Optional[float] = None
    accuracy_flip_std: Optional[float] = None
    auc: float = float("nan")
    tpr_at_fpr: Dict[str, float] = field(default_factory=dict)
    threshold: float = float("nan")

    def as_dict(self) -> Dict[str, object]:
        return dict(self.__dict__)


def evaluate_verification(name: str, embeddings: np.ndarray, issame: Sequence[bool],
                          flipped: Optional[np.ndarray] = None, folds: int = 10,
                          fprs: Sequence[float] = DEFAULT_FPRS) -> VerificationResult:
    """All metrics of one set; AUC and TPR@FPR use the flip-summed embeddings when ``flipped`` is given.

    A set with only same (or only different) pairs gets ``auc = nan`` and an empty ``tpr_at_fpr``.
    """
    issame = np.asarray(issame, bool)
    plain = kfold_accuracy(pair_distances(embeddings, issame), issame, folds)
    result = VerificationResult(name=name, pairs=len(issame), accuracy=plain["accuracy"],
                                accuracy_std=plain["accuracy_std"])
    dist = pair_distances(embeddings, issame)
    if flipped is not None:
        dist = pair_distances(flip_sum(_check_pairs(embeddings, issame), _check_pairs(flipped, issame)), issame)
        flip = kfold_accuracy(dist, issame, folds)
        result.accuracy_flip, result.accuracy_flip_std = flip["accuracy"], flip["accuracy_std"]
        result.threshold = float(np.median(flip["thresholds"]))
    else:
        result.threshold = float(np.median(plain["thresholds"]))
    if issame.any() and not issame.all():  # AUC and TPR@FPR need both kinds of pairs (else NaN and {})
        result.auc = roc_auc(dist, issame)
        result.tpr_at_fpr = tpr_at_fpr(dist, issame, fprs)
    return result
