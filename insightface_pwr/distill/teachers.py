"""Frozen teachers: a callable ``teacher(images) -> embeddings`` that never builds a graph.

Three kinds of file:
- a backbone ``state_dict`` (arcface_torch's ``model.pt``, or a ``checkpoint_gpu_*.pt`` holding
  ``state_dict_backbone``), built with a model factory (upstream's ``get_model`` inside arcface_torch);
- a TorchScript file (``torch.jit.load``);
- an ONNX file, run by onnxruntime (float32 in, float32 out; CUDA provider when the images are on CUDA and
  onnxruntime has it).
Every teacher is in eval mode with ``requires_grad`` off and runs under ``torch.no_grad()``; the embeddings come
back as float32 on the images' device. ``fp16`` (module teachers on CUDA only) runs the module under autocast.

Input convention: the teacher sees the student's images unchanged (arcface_torch feeds (pixel/255 - 0.5)/0.5, NCHW
RGB float32); a teacher trained with another normalisation must be exported with it built in.
"""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional

import torch
from torch import nn

from ..models.runners import OnnxRunner, RunnerError, TorchRunner
from ..models.weights import (CheckpointError, WeightsError, extract_backbone_state,  # noqa: F401
                              load_backbone, load_weights_strict)

__all__ = ["Teacher", "ModuleTeacher", "OnnxTeacher", "load_teacher", "detect_format", "load_weights_strict",
           "TeacherError", "extract_backbone_state"]


class TeacherError(WeightsError):
    """The teacher (or student_init) file is missing or does not fit the network."""


class Teacher:
    """A frozen embedding function. ``__call__(images: N x 3 x H x W) -> N x D float32``, no graph."""

    kind = "teacher"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class ModuleTeacher(Teacher):
    """A torch module (built from a state_dict, or TorchScript), frozen; run by
    :class:`insightface_pwr.models.runners.TorchRunner`."""

    def __init__(self, module: nn.Module, kind: str, fp16: bool = False) -> None:
        self.runner = TorchRunner(module, fp16)
        self.module, self.kind, self.fp16 = self.runner.module, kind, fp16

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.runner(images)


class OnnxTeacher(Teacher):
    """An ONNX model run by :class:`insightface_pwr.models.runners.OnnxRunner` (first input, output ``embedding``
    or else the first output; CUDA provider on the images' CUDA device when onnxruntime has it)."""

    kind = "onnx"

    def __init__(self, path: Path, threads: Optional[int] = None, device: Optional[torch.device] = None) -> None:
        """``threads``: onnxruntime's intra-op threads (None: its default). Spin-waiting is off: between teacher
        calls the threads would otherwise keep spinning and take CPU from the training step."""
        try:
            self.runner = OnnxRunner(path, threads, device or "cpu")
        except RunnerError as e:
            raise TeacherError(f"ONNX teacher: {e}") from e
        self.input_name, self.output_name = self.runner.input_name, self.runner.output_name

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.runner(images)


def detect_format(path: Path) -> str:
    """"onnx" (suffix .onnx), "torchscript" (a zip archive with a ``code/`` folder) or "state_dict"."""
    if path.suffix.lower() == ".onnx":
        return "onnx"
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            if any("/code/" in n for n in z.namelist()):
                return "torchscript"
    return "state_dict"


def load_teacher(spec: Mapping[str, Any], model_factory: Optional[Callable[..., nn.Module]],
                 device: torch.device) -> Teacher:
    """Build the frozen teacher described by ``config.distill.teacher`` (validated by the recipe loader).

    ``model_factory(network, dropout=0.0, fp16=False, num_features=D)`` builds a backbone by name (upstream's
    ``get_model``); needed only for a state_dict teacher."""
    path = Path(spec["weights"])
    if not path.is_file():
        raise TeacherError(f"config.distill.teacher.weights: teacher file not found: {str(path)!r}")
    fmt = spec.get("format", "auto")
    fmt = detect_format(path) if fmt == "auto" else fmt
    fp16 = bool(spec.get("fp16", False))
    if fp16 and (device.type != "cuda" or fmt == "onnx"):
        raise TeacherError(f"config.distill.teacher.fp16 needs a torch teacher on CUDA (format {fmt!r}, "
                           f"device {device}); set fp16=False")
    if fmt == "onnx":
        return OnnxTeacher(path, device=device)
    if fmt == "torchscript":
        try:
            module = torch.jit.load(str(path), map_location=device)
        except Exception as e:  # noqa: BLE001
            raise TeacherError(f"cannot load TorchScript teacher {str(path)!r}: {type(e).__name__}: {e}") from e
        return ModuleTeacher(module, "torchscript", fp16)
    network = spec.get("network")
    if not network:
        raise TeacherError(f"config.distill.teacher.network is required for the state_dict teacher {str(path)!r} "
                           f"(the arcface_torch backbone name, e.g. 'r50')")
    if model_factory is None:
        raise TeacherError("a state_dict teacher needs a model factory (upstream get_model); none was given")
    # fp16 reaches the factory too: upstream's iresnet/mobilefacenet run ``autocast(self.fp16)`` inside, which
    # with fp16=False would switch the caller's autocast off again (the trunk would run in float32)
    kwargs: Dict[str, Any] = {"fp16": fp16}
    if spec.get("embedding_size") is not None:
        kwargs["num_features"] = spec["embedding_size"]
    try:
        module = load_backbone(path, network, model_factory, "teacher weights", **kwargs)
    except (WeightsError, CheckpointError) as e:
        raise TeacherError(str(e).replace("teacher weights: cannot build network", "config.distill.teacher.network: "
                                          "cannot build").replace("teacher weights: unknown network",
                                                                  "config.distill.teacher.network: unknown network")) from e
    return ModuleTeacher(module.to(device), "state_dict", fp16)
