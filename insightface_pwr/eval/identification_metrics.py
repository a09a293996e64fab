"""Face identification metrics on given embeddings: rank-1 / rank-k (the MegaFace protocol).

Conventions: embeddings are rows, compared by cosine similarity (rows are L2-normalised here). For every probe
``p`` and every *mate* ``g`` (a gallery row with the probe's identity; with ``gallery=None`` the probe set is its
own gallery and a probe is never its own mate), the rank of ``g`` is
``1 + #{candidates c : sim(p, c) >= sim(p, g)}`` (ties count against the mate), where the candidates are the
distractors plus, unless ``distractors_only``, the gallery rows of other identities. MegaFace is
``gallery=None, distractors_only=True`` with the FaceScrub probe set and the MegaFace distractors. Rank-k
accuracy is the fraction of (probe, mate) pairs whose rank is <= k.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np

from .verification_metrics import l2_normalize

__all__ = ["mate_ranks", "rank_k_accuracy"]


def _matrix(x: np.ndarray, name: str, dim: Optional[int] = None) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or (dim is not None and x.shape[1] != dim):
        raise ValueError(f"{name} must be N x {dim if dim else 'D'}, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} holds non-finite values")
    return l2_normalize(x)


def mate_ranks(probes: np.ndarray, probe_labels: Sequence, gallery: Optional[np.ndarray] = None,
               gallery_labels: Optional[Sequence] = None, distractors: Optional[np.ndarray] = None,
               distractors_only: bool = False, chunk: int = 1024) -> np.ndarray:
    """The rank of every (probe, mate) pair, in probe order then gallery order (1 = best)."""
    p = _matrix(probes, "probes")
    plab = np.asarray(probe_labels)
    if len(plab) != len(p):
        raise ValueError(f"{len(p)} probes but {len(plab)} probe labels")
    self_gallery = gallery is None
    g = p if self_gallery else _matrix(gallery, "gallery", p.shape[1])
    glab = plab if self_gallery else np.asarray(gallery_labels)
    if len(glab) != len(g):
        raise ValueError(f"{len(g)} gallery rows but {len(glab)} gallery labels")
    d = (np.zeros((0, p.shape[1])) if distractors is None else _matrix(distractors, "distractors", p.shape[1]))
    ranks = []
    for start in range(0, len(p), chunk):
        sl = slice(start, start + chunk)
        sim_g = p[sl] @ g.T                          # probes x gallery
        sim_d = np.sort(p[sl] @ d.T, axis=1)         # probes x distractors, ascending
        for row in range(sim_g.shape[0]):
            i = start + row
            mates = np.flatnonzero(glab == plab[i])
            if self_gallery:
                mates = mates[mates != i]
            if len(mates) == 0:
                continue
            s = sim_g[row, mates]
            # distractors at least as similar as each mate
            beaten = len(d) - np.searchsorted(sim_d[row], s, side="left")
            if not distractors_only:
                others = np.sort(sim_g[row, glab != plab[i]])
                beaten = beaten + len(others) - np.searchsorted(others, s, side="left")
            ranks.append(1 + beaten)
    return np.concatenate(ranks) if ranks else np.zeros(0, dtype=np.int64)


def rank_k_accuracy(probes: np.ndarray, probe_labels: Sequence, gallery: Optional[np.ndarray] = None,
                    gallery_labels: Optional[Sequence] = None, distractors: Optional[np.ndarray] = None,
                    ks: Sequence[int] = (1, 5, 10), distractors_only: bool = False) -> Dict[int, float]:
    """``{k: fraction of (probe, mate) pairs ranked <= k}``; raises if no probe has a mate."""
    ranks = mate_ranks(probes, probe_labels, gallery, gallery_labels, distractors, distractors_only)
    if len(ranks) == 0:
        raise ValueError("no probe has a mate in the gallery (identities do not overlap)")
    return {int(k): float(np.mean(ranks <= k)) for k in ks}
