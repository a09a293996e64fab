"""InsightFace model packs (``buffalo_l``, ``antelopev2``, ...) as a source of recognition models.

A pack is a folder of ONNX files (detection, landmarks, attributes, recognition). As ``insightface.model_zoo``
does, a pack name is looked up in the model root ``$INSIGHTFACE_HOME/models/<name>`` (default
``~/.insightface/models/<name>``), and the recognition model is the ONNX file whose single input is
``N x 3 x S x S`` with ``S >= 112``, ``S % 16 == 0`` and ``S != 192`` and whose output is an ``N x D`` embedding (InsightFace's
router: 192 px inputs are landmark models, 96 px attribute models, several outputs detection models). Nothing is
downloaded: a pack that is not on disk is an error naming where it was looked for.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Union

from ..infra.errors import UserError

__all__ = ["PackError", "model_root", "resolve_model", "recognition_model"]

PathLike = Union[str, "os.PathLike[str]"]


class PackError(UserError, ValueError):
    """A model that is neither a file nor an InsightFace pack on disk, or a pack without one recognition model."""


def model_root() -> Path:
    """InsightFace's model root: ``$INSIGHTFACE_HOME/models`` or ``~/.insightface/models``."""
    return Path(os.environ.get("INSIGHTFACE_HOME", "~/.insightface")).expanduser() / "models"


def _is_recognition(path: Path) -> bool:
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001  (not a loadable model: not the recognition model)
        return False
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) != 1 or len(inputs[0].shape) != 4 or len(outputs[0].shape) != 2:
        return False
    _, c, h, w = inputs[0].shape
    return c == 3 and isinstance(h, int) and h == w and h >= 112 and h % 16 == 0 and h != 192  # 192: landmarks


def recognition_model(pack: Path) -> str:
    """The one recognition ONNX file of the pack folder ``pack``."""
    files = sorted(pack.glob("*.onnx"))
    found: List[Path] = [f for f in files if _is_recognition(f)]
    if len(found) != 1:
        raise PackError(f"InsightFace pack {str(pack)!r}: expected exactly one recognition model (an ONNX file with "
                        f"one N x 3 x S x S input, S >= 112, and one N x D output), found "
                        f"{[f.name for f in found] or 'none'} among {[f.name for f in files] or 'no .onnx files'}")
    return str(found[0])


def resolve_model(spec: PathLike) -> str:
    """A model file path from a file path, a pack folder or a pack name in :func:`model_root`."""
    path = Path(os.fspath(spec)).expanduser()
    if path.is_file():
        return str(path)
    if path.is_dir():
        return recognition_model(path)
    named = model_root() / os.fspath(spec)
    if os.sep not in os.fspath(spec) and named.is_dir():
        return recognition_model(named)
    raise PackError(f"model {os.fspath(spec)!r}: no such file, folder, nor InsightFace pack {str(named)!r} "
                    f"(model root: $INSIGHTFACE_HOME/models, default ~/.insightface/models)")
