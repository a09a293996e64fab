"""IJB-B / IJB-C 1:1 template verification, reading the layout upstream's ``eval_ijbc.py`` reads, and 1:N
identification (:func:`evaluate_ijb_1n`: gallery and probe lists as InsightFace's IJB 1:N evaluation reads them).

Layout of ``ROOT`` (``NAME`` = ``ijbb`` or ``ijbc``, lower case as upstream):

- ``ROOT/meta/NAME_face_tid_mid.txt``: one line per face, ``image_name template_id media_id``;
- ``ROOT/meta/NAME_template_pair_label.txt``: one line per comparison, ``template_id_1 template_id_2 label``;
- ``ROOT/meta/NAME_name_5pts_score.txt`` (optional): ``image_name x1 y1 ... x5 y5 faceness``, one line per face in
  the order of ``face_tid_mid``; only the last column (the detector's faceness score) is used here;
- the face images under ``ROOT/loose_crop`` (or ``images``): loose crops, aligned here with the five landmarks of
  the score file to the arcface template as upstream does (:mod:`insightface_pwr.eval.face_align`, no OpenCV);
  ``align=False`` (``--already-aligned``) takes them as aligned ``S x S`` crops.

Scoring as upstream (TestMode N1 D1 F1): a face's feature is ``e(image) + e(mirrored image)`` (raw, its norm kept),
times its faceness score when the score file is there; features of one media (video or still) in a template are
averaged, the template feature is the sum of its media features, L2-normalised; a pair's score is the cosine of
its templates. TPR at FPR 1e-6 ... 1e-1 is the largest TPR with FPR <= the target (upstream's table takes the ROC
point whose FPR is *nearest* the target, which may exceed it); FPRs below 1 / negatives are not reported.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..infra.errors import UserError
from .embedding_store import EmbeddingStore
from .verification_metrics import roc_auc, tpr_at_fpr

__all__ = ["IJBError", "read_ijb_meta", "template_features", "pair_scores", "evaluate_ijb", "IJBResult",
           "IJB_FPRS", "read_ijb_faces", "evaluate_ijb_1n", "identification_1n", "IJB1NResult", "IJB_RANKS",
           "IJB_FPIRS"]

IJB_FPRS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


class IJBError(UserError, ValueError):
    """A malformed or missing IJB meta file (the message names the file and line)."""


def _table(path: Path, columns: int, kinds: Sequence[type]) -> List[Tuple]:
    if not path.is_file():
        raise IJBError(f"{str(path)!r}: IJB meta file not found")
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < columns:
                raise IJBError(f"{str(path)!r}, line {n}: expected {columns} columns, got {len(parts)}: "
                               f"{line.strip()!r}")
            try:
                rows.append(tuple(k(v) for k, v in zip(kinds, parts[:columns])))
            except ValueError:
                raise IJBError(f"{str(path)!r}, line {n}: expected {' '.join(k.__name__ for k in kinds)}, got "
                               f"{line.strip()!r}") from None
    if not rows:
        raise IJBError(f"{str(path)!r}: empty")
    return rows


def read_ijb_faces(root: Path, name: str) -> Dict[str, Optional[np.ndarray]]:
    """``names, templates, medias`` of ``meta/NAME_face_tid_mid.txt`` and, when ``meta/NAME_name_5pts_score.txt``
    is there, ``faceness`` and ``landmarks`` (else None): what both protocols read."""
    meta = root / "meta"
    faces = _table(meta / f"{name}_face_tid_mid.txt", 3, (str, int, int))
    out = {"names": np.array([r[0] for r in faces]), "templates": np.array([r[1] for r in faces]),
           "medias": np.array([r[2] for r in faces]), "faceness": None, "landmarks": None}
    score_file = meta / f"{name}_name_5pts_score.txt"
    if score_file.is_file():
        lines = [ln.split() for ln in score_file.read_text().splitlines() if ln.strip()]
        if len(lines) != len(faces) or any(a[0] != b[0] for a, b in zip(lines, faces)):
            raise IJBError(f"{str(score_file)!r}: its image names must be those of {name}_face_tid_mid.txt, in order "
                           f"({len(lines)} lines vs {len(faces)})")
        out["faceness"] = np.array([float(a[-1]) for a in lines])
        out["landmarks"] = _landmarks(lines, score_file)
    return out


def read_ijb_meta(root: Path, name: str) -> Dict[str, np.ndarray]:
    """``names, templates, medias, faceness (or None), landmarks (or None), t1, t2, label`` from ``root/meta``."""
    meta = root / "meta"
    out = read_ijb_faces(root, name)
    pairs = _table(meta / f"{name}_template_pair_label.txt", 3, (int, int, int))
    out.update(t1=np.array([r[0] for r in pairs]), t2=np.array([r[1] for r in pairs]),
               label=np.array([r[2] for r in pairs]))
    unknown = set(out["t1"].tolist() + out["t2"].tolist()) - set(out["templates"].tolist())
    if unknown:
        raise IJBError(f"{str(meta / (name + '_template_pair_label.txt'))!r}: template ids without faces: "
                       f"{sorted(unknown)[:10]}")
    if not set(np.unique(out["label"]).tolist()) <= {0, 1}:
        raise IJBError(f"{name}_template_pair_label.txt: labels must be 0 or 1, got {np.unique(out['label'])}")
    return out


def _landmarks(lines: List[List[str]], path: Path) -> Optional[np.ndarray]:
    """N x 5 x 2 landmarks of the score file's lines (``name x1 y1 ... x5 y5 score``), or None if it has none."""
    if any(len(a) != 12 for a in lines):
        return None
    try:
        return np.array([[float(v) for v in a[1:11]] for a in lines]).reshape(-1, 5, 2)
    except ValueError:
        raise IJBError(f"{str(path)!r}: landmarks must be numbers (name x1 y1 ... x5 y5 score)") from None


def template_features(feats: np.ndarray, templates: np.ndarray, medias: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """``(unique template ids, L2-normalised template features)``: media means summed per template."""
    uniq, inverse = np.unique(templates, return_inverse=True)
    out = np.zeros((len(uniq), feats.shape[1]))
    # media key = (template, media): mean over the faces of one media of one template, then sum over medias
    keys = np.stack([inverse, medias], 1)
    _, media_of, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    media_of = media_of.ravel()
    media_sum = np.zeros((len(counts), feats.shape[1]))
    np.add.at(media_sum, media_of, feats)
    media_template = np.zeros(len(counts), dtype=np.int64)
    media_template[media_of] = inverse
    np.add.at(out, media_template, media_sum / counts[:, None])
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    return uniq, out / np.maximum(norm, 1e-12)


def pair_scores(uniq: np.ndarray, tfeats: np.ndarray, t1: np.ndarray, t2: np.ndarray) -> np.ndarray:
    pos = {t: i for i, t in enumerate(uniq.tolist())}
    a = np.array([pos[t] for t in t1.tolist()])
    b = np.array([pos[t] for t in t2.tolist()])
    return np.sum(tfeats[a] * tfeats[b], axis=1)


@dataclass
class IJBResult:
    name: str
    faces: int
    templates: int
    pairs: int
    tpr_at_fpr: Dict[str, float] = field(default_factory=dict)
    auc: float = float("nan")
    faceness: bool = False

    def as_dict(self) -> Dict[str, object]:
        return dict(self.__dict__)


def _face_features(store: EmbeddingStore, base: Path, name: str, images: Optional[str], meta: Dict[str, np.ndarray],
                   use_faceness: bool, normalise: bool, align: bool = True) -> Tuple[np.ndarray, int, bool]:
    """Every face's flip-summed feature (L2-normalised first when ``normalise``), times its faceness score when the
    score file is there and ``use_faceness``; with the number of faces and whether the scores were used. With
    ``align`` and landmarks in the score file, each loose crop is first aligned to the arcface template
    (:mod:`insightface_pwr.eval.face_align`, as upstream's ``eval_ijbc.py``)."""
    folder = Path(images) if images else (base / "loose_crop" if (base / "loose_crop").is_dir() else base / "images")
    blobs = []
    for n in meta["names"].tolist():
        path = folder / n
        if not path.is_file():
            raise IJBError(f"{str(path)!r}: face image of {name}_face_tid_mid.txt not found (aligned crops expected "
                           f"under {str(folder)!r})")
        blobs.append(path.read_bytes())
    if align and meta.get("landmarks") is not None:
        from .face_align import align_face_png
        blobs = [align_face_png(b, lmk, str(folder / n), store.image_size)
                 for b, lmk, n in zip(blobs, meta["landmarks"], meta["names"].tolist())]
    plain, flip = store.embed(blobs, str(folder), name)
    feats = plain.astype(np.float64) + flip
    if normalise:
        feats = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    weighted = use_faceness and meta["faceness"] is not None
    if weighted:
        feats = feats * meta["faceness"][:, None]
    return feats, len(blobs), weighted


def evaluate_ijb(store: EmbeddingStore, root: str, name: str = "ijbc", images: Optional[str] = None,
                 fprs: Sequence[float] = IJB_FPRS, use_faceness: bool = True, align: bool = True) -> IJBResult:
    base = Path(os.fspath(root))
    name = name.lower()
    meta = read_ijb_meta(base, name)
    feats, faces, weighted = _face_features(store, base, name, images, meta, use_faceness, normalise=False,
                                            align=align)
    uniq, tfeats = template_features(feats, meta["templates"], meta["medias"])
    scores = pair_scores(uniq, tfeats, meta["t1"], meta["t2"])
    same = meta["label"].astype(bool)
    dist = 2 - 2 * scores  # squared euclidean of unit vectors: same order as -cosine
    result = IJBResult(name=name, faces=faces, templates=len(uniq), pairs=len(scores), faceness=weighted)
    if same.any() and not same.all():
        result.tpr_at_fpr = tpr_at_fpr(dist, same, fprs)
        result.auc = roc_auc(dist, same)
    return result


# ------------------------------------------------------------------------------------------ 1:N identification
IJB_RANKS = (1, 5, 10)
IJB_FPIRS = (0.01, 0.1)


def _template_subjects(path: Path) -> Dict[int, int]:
    """``template id -> subject id`` of a 1:N list (CSV with a header; TEMPLATE_ID, SUBJECT_ID first)."""
    if not path.is_file():
        raise IJBError(f"{str(path)!r}: IJB 1:N list not found")
    out: Dict[int, int] = {}
    lines = path.read_text().splitlines()
    for n, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        parts = line.split(",")
        try:
            t, subject = int(parts[0]), int(parts[1])
        except (ValueError, IndexError):
            raise IJBError(f"{str(path)!r}, line {n}: expected TEMPLATE_ID,SUBJECT_ID,..., "
                           f"got {line.strip()!r}") from None
        if out.setdefault(t, subject) != subject:
            raise IJBError(f"{str(path)!r}, line {n}: template {t} has two subjects ({out[t]} and {subject})")
    if not out:
        raise IJBError(f"{str(path)!r}: no templates")
    return out


def identification_1n(probe: np.ndarray, probe_ids: np.ndarray, gallery: np.ndarray, gallery_ids: np.ndarray,
                      ranks: Sequence[int] = IJB_RANKS, fpirs: Sequence[float] = IJB_FPIRS) -> Dict[str, Dict]:
    """Closed-set rank-k (the mate among the k most similar gallery templates; ties count against it) and
    TPIR at FPIR f as the IJB 1:N evaluation of InsightFace computes it: the threshold is the ceil(f x probes)-th
    largest non-mate similarity over all probe/gallery pairs, TPIR the share of probes whose mate scores above it.
    Every probe subject must have exactly one gallery template (else IJBError)."""
    where = {int(s): i for i, s in enumerate(gallery_ids.tolist())}
    if len(where) != len(gallery_ids):
        raise IJBError("the 1:N gallery holds several templates of one subject")
    missing = sorted({int(s) for s in probe_ids.tolist()} - set(where))
    if missing:
        raise IJBError(f"the 1:N probes name subjects without a gallery template: {missing[:10]}")
    mate = np.array([where[int(s)] for s in probe_ids.tolist()])
    sim = probe @ gallery.T
    rows = np.arange(len(probe))
    mate_sim = sim[rows, mate]
    better = (sim >= mate_sim[:, None]).sum(1) - 1  # gallery templates at least as similar as the mate
    nonmate = sim.copy()
    nonmate[rows, mate] = -np.inf
    nonmate = np.sort(nonmate.ravel())[::-1]
    tpir = {}
    for f in fpirs:
        k = math.ceil(len(probe) * f)
        if 1 <= k <= len(nonmate) and np.isfinite(nonmate[k - 1]):
            tpir[f"{f:g}"] = float((mate_sim > nonmate[k - 1]).mean())
    return {"rank": {str(k): float((better < k).mean()) for k in ranks}, "tpir_at_fpir": tpir}


@dataclass
class IJB1NResult:
    name: str
    faces: int
    gallery_templates: int
    probe_templates: int
    rank: Dict[str, float] = field(default_factory=dict)
    tpir_at_fpir: Dict[str, float] = field(default_factory=dict)
    faceness: bool = False

    def as_dict(self) -> Dict[str, object]:
        return dict(self.__dict__)


def evaluate_ijb_1n(store: EmbeddingStore, root: str, name: str = "ijbc", images: Optional[str] = None,
                    use_faceness: bool = True, align: bool = True) -> IJB1NResult:
    """IJB-B/IJB-C 1:N: gallery ``meta/NAME_1N_gallery_G1.csv`` + ``G2.csv`` (IJB-B: ``S1``/``S2``), probes
    ``meta/NAME_1N_probe_mixed.csv``; each face's flip-summed feature L2-normalised, times its faceness score (as
    InsightFace's 1:N script), media means summed per template, normalised."""
    base = Path(os.fspath(root))
    name = name.lower()
    meta_dir = base / "meta"
    meta = read_ijb_faces(base, name)
    halves = ("G1", "G2") if name == "ijbc" else ("S1", "S2")
    gallery: Dict[int, int] = {}
    for h in halves:
        gallery.update(_template_subjects(meta_dir / f"{name}_1N_gallery_{h}.csv"))
    probes = _template_subjects(meta_dir / f"{name}_1N_probe_mixed.csv")
    known = set(meta["templates"].tolist())
    unknown = sorted((set(gallery) | set(probes)) - known)
    if unknown:
        raise IJBError(f"{name}: 1:N templates without faces in {name}_face_tid_mid.txt: {unknown[:10]}")
    feats, n_faces, weighted = _face_features(store, base, name, images, meta, use_faceness, normalise=True,
                                              align=align)
    uniq, tfeats = template_features(feats, meta["templates"], meta["medias"])
    row = {t: i for i, t in enumerate(uniq.tolist())}
    g_t, p_t = sorted(gallery), sorted(probes)
    metrics = identification_1n(tfeats[[row[t] for t in p_t]], np.array([probes[t] for t in p_t]),
                                tfeats[[row[t] for t in g_t]], np.array([gallery[t] for t in g_t]))
    return IJB1NResult(name=name, faces=n_faces, gallery_templates=len(g_t), probe_templates=len(p_t),
                       faceness=weighted, **metrics)
