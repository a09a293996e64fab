"""``insightface-pwr eval``: verification accuracy of an embedding model on InsightFace ``.bin`` files.

Per ``.bin``: the 10-fold accuracy with plain and flip-summed embeddings (mean and std over folds), TPR at the
FPRs the pair count supports and the ROC AUC (both on flip-summed embeddings), as in
:mod:`insightface_pwr.eval.verification_metrics`. Models: ONNX, TorchScript, or an arcface_torch backbone
checkpoint (``model.pt`` or ``checkpoint_gpu_0.pt``) with ``--network NAME`` (its code comes from arcface_torch's
``backbones`` package: run inside arcface_torch or pass ``--arcface-root``). Inputs are RGB, normalised as
``(pixel - input_mean) / input_std``.
"""
from __future__ import annotations

import math
import os
from typing import Any, Callable, Dict, List, Optional, Sequence


from ..data.verification_bin import VerificationBin, load_bin
from ..infra.errors import UserError
from ..models.weights import load_backbone
from .embedding_models import EmbeddingModel, TorchEmbeddingModel
from .embedding_store import EmbeddingStore
from .verification_metrics import VerificationResult, evaluate_verification

__all__ = ["evaluate_bin", "evaluate_set", "load_sets", "resolve_set", "load_checkpoint_model", "format_table",
           "format_matrix", "KNOWN_SETS", "SetError"]


def load_checkpoint_model(path: str, network: str, factory: Callable[..., Any], num_features: int = 512,
                          input_mean: float = 127.5, input_std: float = 127.5, device: str = "cpu"
                          ) -> EmbeddingModel:
    """A backbone built by ``factory`` (upstream's ``get_model`` or the package's backbones, see
    :func:`insightface_pwr.integration.arcface_torch.upstream.model_factory`) with the weights of a checkpoint."""
    backbone = load_backbone(path, network, factory, "model", fp16=False, num_features=num_features)
    return TorchEmbeddingModel(backbone, input_mean, input_std, device)


KNOWN_SETS = ("lfw", "cfp_fp", "cfp_ff", "agedb_30", "calfw", "cplfw", "vgg2_fp")


class SetError(UserError, ValueError):
    """A verification set that is neither a known name under the data folder nor a file."""


def resolve_set(spec: str, data_dir: Optional[str] = None) -> str:
    """The ``.bin`` path of ``spec``: a path to a file, or a name (``lfw``, ``cfp_fp``, ... or any other stem)
    meaning ``<data_dir>/<name>.bin``."""
    if os.path.isfile(spec):
        return spec
    looks_like_name = os.sep not in spec and not spec.endswith(".bin")
    if looks_like_name and data_dir is not None and os.path.isfile(os.path.join(data_dir, spec + ".bin")):
        return os.path.join(data_dir, spec + ".bin")
    if looks_like_name:
        where = (f"{os.path.join(data_dir, spec + '.bin')!r} not found" if data_dir is not None
                 else "a name needs --data-dir")
        known = " (InsightFace's sets: " + ", ".join(KNOWN_SETS) + ")"
        raise SetError(f"verification set {spec!r}: {where}; give a .bin path or a name under --data-dir{known}")
    raise SetError(f"verification set {spec!r}: file not found")


def load_sets(specs: Sequence[str], data_dir: Optional[str] = None, limit_pairs: Optional[int] = None
              ) -> List[VerificationBin]:
    """Resolve and load every set before any is evaluated (a typo in the last one fails at once)."""
    paths = [resolve_set(s, data_dir) for s in specs]
    sets = []
    for path in paths:
        vbin = load_bin(path)
        if limit_pairs is not None:
            vbin.images, vbin.issame = vbin.images[:2 * limit_pairs], vbin.issame[:limit_pairs]
        sets.append(vbin)
    return sets


def evaluate_set(store: EmbeddingStore, vbin: VerificationBin, folds: int = 10) -> VerificationResult:
    """Metrics of one loaded set, its embeddings taken from (and added to) ``store``."""
    plain, flipped = store.embed(vbin.images, vbin.path, vbin.name)
    return evaluate_verification(vbin.name, plain, vbin.issame, flipped=flipped, folds=folds)


def evaluate_bin(model: EmbeddingModel, path: str, batch_size: int = 64, folds: int = 10, image_size: int = 112,
                 limit_pairs: Optional[int] = None, progress: bool = True) -> VerificationResult:
    """Embed every image of a ``.bin`` and its mirror image (each distinct image once), then compute the
    verification metrics."""
    [vbin] = load_sets([str(path)], None, limit_pairs)
    return evaluate_set(EmbeddingStore(model, image_size, batch_size, progress=progress), vbin, folds)


def _fmt(x: Optional[float], pct: bool = True) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{100 * x:.2f}" if pct else f"{x:.4f}"


def format_table(results: List[VerificationResult]) -> str:
    fprs = sorted({k for r in results for k in r.tpr_at_fpr}, key=float, reverse=True)
    head = ["set", "pairs", "acc %", "acc flip %", *[f"TPR@FPR={f}" for f in fprs], "AUC"]
    rows = [[r.name, str(r.pairs), f"{_fmt(r.accuracy)} +- {_fmt(r.accuracy_std)}",
             f"{_fmt(r.accuracy_flip)} +- {_fmt(r.accuracy_flip_std)}",
             *[_fmt(r.tpr_at_fpr.get(f)) for f in fprs], _fmt(r.auc, pct=False)] for r in results]
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in rows])


def format_matrix(models: Sequence[str], sets: Sequence[str], acc: Dict[str, Dict[str, VerificationResult]]) -> str:
    """Models x sets: 10-fold accuracy of flip-summed embeddings (%)."""
    head = ["model", *sets]
    rows = [[m, *[_fmt(acc[m][s].accuracy_flip) for s in sets]] for m in models]
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in rows])
