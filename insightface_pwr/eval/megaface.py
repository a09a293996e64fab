"""MegaFace-style identification and verification on a probe / distractor layout of aligned faces.

Layout of ``ROOT``: ``ROOT/probe`` and ``ROOT/distractors``, each either an image folder (``probe/<identity>/<img>``;
``distractors/<img>`` at any depth) or an InsightFace RecordIO folder (``train.rec`` + ``train.idx``; the probe
labels are the identities, distractor labels are ignored). Images are aligned ``S x S`` crops (FaceScrub probes and
MegaFace distractors as InsightFace's ``megaface`` scripts align them). Each image is embedded with its mirror
(flip-summed, L2-normalised), and compared by cosine similarity.

* Identification (MegaFace challenge 1): for every probe image ``p`` and every other image ``g`` of its identity,
  ``g`` is the gallery's only mate among the ``D`` distractors; its rank is ``1 + #{distractors d : sim(p, d) >=
  sim(p, g)}`` (ties count against the mate). Rank-k accuracy is the fraction of (p, g) pairs ranked <= k.
* Verification: positives are the probe-probe pairs of one identity (each unordered pair once), negatives every
  probe-distractor pair; TPR at FPR ``f`` is the largest fraction of positives accepted by a threshold that accepts
  at most ``floor(f * negatives)`` negatives (only FPRs with ``f * negatives >= 1`` are reported). The negatives are
  streamed (only the highest ``floor(max f * negatives) + 1`` scores are kept), so a million distractors fit.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..infra.errors import UserError
from .embedding_store import EmbeddingStore
from .identification_metrics import mate_ranks
from .verification_metrics import l2_normalize

__all__ = ["MegaFaceError", "read_face_set", "megaface_metrics", "evaluate_megaface", "MegaFaceResult",
           "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class MegaFaceError(UserError, ValueError):
    """A MegaFace layout that is missing a part or holds too little to evaluate."""


def _is_rec(folder: Path) -> bool:
    return (folder / "train.rec").is_file() and (folder / "train.idx").is_file()


def read_face_set(folder: Path, labelled: bool) -> Tuple[List[bytes], List[str], List[str]]:
    """``(encoded images, labels, sources)`` of an image folder or a RecordIO folder.

    Image folder: with ``labelled``, ``folder/<identity>/<image>`` (the identity is the sub-folder name); else
    every image file under ``folder`` (label ""). Files are sorted by path."""
    if not folder.is_dir():
        raise MegaFaceError(f"{str(folder)!r}: folder not found (expected an image folder or a RecordIO folder)")
    images: List[bytes] = []
    labels: List[str] = []
    sources: List[str] = []
    if _is_rec(folder):
        from ..data.dataset import FaceDataset
        from ..data.recordio import unpack
        ds = FaceDataset(folder)
        for key in ds.keys:
            header, payload = unpack(ds.reader.read_idx(int(key)), source=ds.rec_path, key=int(key))
            label = header.label if np.isscalar(header.label) else header.label[0]
            images.append(payload)
            labels.append(str(int(label)) if labelled else "")
            sources.append(f"{ds.rec_path}#{int(key)}")
        return images, labels, sources
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    for p in files:
        rel = p.relative_to(folder).parts
        if labelled and len(rel) != 2:
            raise MegaFaceError(f"{str(p)!r}: probe images must be <probe>/<identity>/<image>, got depth {len(rel)}")
        images.append(p.read_bytes())
        labels.append(rel[0] if labelled else "")
        sources.append(str(p))
    if not images:
        raise MegaFaceError(f"{str(folder)!r}: no images ({', '.join(IMAGE_SUFFIXES)}) and no train.rec/train.idx")
    return images, labels, sources


def _top_scores(probes: np.ndarray, distractors: np.ndarray, keep: int, chunk: int) -> np.ndarray:
    """The ``keep`` highest probe-distractor cosine similarities (unsorted), over chunks of probes."""
    best = np.empty(0)
    for start in range(0, len(probes), chunk):
        scores = (probes[start:start + chunk] @ distractors.T).ravel()
        merged = np.concatenate([best, scores])
        best = merged if len(merged) <= keep else np.partition(merged, len(merged) - keep)[-keep:]
    return best


def _tpr(pos: np.ndarray, top_neg: np.ndarray, negatives: int, fprs: Sequence[float]) -> Dict[str, float]:
    """Largest TPR whose accepted negatives are <= floor(f * negatives): accept scores above the
    (allowed + 1)-th highest negative score (all of them when every negative may be accepted)."""
    out = {}
    desc = np.sort(top_neg)[::-1]
    for f in fprs:
        allowed = int(np.floor(f * negatives * (1 + 1e-9)))
        if allowed < 1:
            continue
        thr = desc[allowed] if allowed < negatives else -np.inf
        out[f"{f:.0e}"] = float(np.mean(pos > thr))
    return out


@dataclass
class MegaFaceResult:
    probes: int
    identities: int
    distractors: int
    rank: Dict[int, float] = field(default_factory=dict)
    tpr_at_fpr: Dict[str, float] = field(default_factory=dict)
    positives: int = 0
    negatives: int = 0

    def as_dict(self) -> Dict[str, object]:
        return {**self.__dict__, "rank": {str(k): v for k, v in self.rank.items()}}


def megaface_metrics(probes: np.ndarray, labels: Sequence, distractors: np.ndarray, ks: Sequence[int] = (1, 10),
                     fprs: Sequence[float] = (1e-6, 1e-5, 1e-4), memory_floats: int = 2 ** 25) -> MegaFaceResult:
    """Identification rank-k and verification TPR@FPR from embeddings (rows; normalised here)."""
    p, d = l2_normalize(probes), l2_normalize(distractors)
    labels = np.asarray(labels)
    if len(labels) != len(p):
        raise MegaFaceError(f"{len(p)} probe embeddings but {len(labels)} labels")
    if len(d) == 0:
        raise MegaFaceError("no distractors")
    chunk = max(1, memory_floats // max(len(d), 1))
    ranks = mate_ranks(p, labels, distractors=d, distractors_only=True, chunk=chunk)
    if len(ranks) == 0:
        raise MegaFaceError("no probe identity has two images: no (probe, mate) pair to rank")
    same = labels[:, None] == labels[None, :]
    iu = np.triu_indices(len(p), 1)
    pos = (p @ p.T)[iu][same[iu]]
    negatives = len(p) * len(d)
    keep = min(negatives, int(np.floor(max(fprs) * negatives * (1 + 1e-9))) + 1)
    top = _top_scores(p, d, keep, chunk)
    return MegaFaceResult(probes=len(p), identities=len(set(labels.tolist())), distractors=len(d),
                          rank={int(k): float(np.mean(ranks <= k)) for k in ks},
                          tpr_at_fpr=_tpr(pos, top, negatives, fprs), positives=len(pos), negatives=negatives)


def evaluate_megaface(store: EmbeddingStore, root: str, ks: Sequence[int] = (1, 10),
                      fprs: Sequence[float] = (1e-6, 1e-5, 1e-4), max_distractors: Optional[int] = None
                      ) -> MegaFaceResult:
    """Read ``root``'s probe and distractor sets, embed them (flip-summed) and compute :func:`megaface_metrics`."""
    base = Path(os.fspath(root))
    for part in ("probe", "distractors"):
        if not (base / part).is_dir():
            raise MegaFaceError(f"{str(base / part)!r}: not found; a MegaFace root holds probe/ and distractors/ "
                                f"(image folders or RecordIO folders)")
    p_img, p_lab, _ = read_face_set(base / "probe", labelled=True)
    d_img, _, _ = read_face_set(base / "distractors", labelled=False)
    if max_distractors is not None:
        d_img = d_img[:max_distractors]
    pe, pf = store.embed(p_img, str(base / "probe"), "probes")
    de, df = store.embed(d_img, str(base / "distractors"), "distractors")
    return megaface_metrics(pe + pf, p_lab, de + df, ks, fprs)
