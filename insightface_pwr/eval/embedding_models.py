"""Embedding models for evaluation, loaded from files: ONNX, TorchScript, or an InsightFace model pack.

An :class:`EmbeddingModel` maps a batch of ``N x 3 x H x W`` uint8 RGB images to ``N x D`` float32 raw embeddings
(numpy), applying ``(pixel - input_mean) / input_std`` first, then running one of the runners of
:mod:`insightface_pwr.models.runners` (the same code that runs a distillation teacher). arcface_torch's convention
is mean = std = 127.5; an ONNX model given without a normalisation gets InsightFace's rule
(:func:`insightface_pwr.models.runners.onnx_input_normalisation`: mean 0 / std 1 when the graph subtracts and
multiplies its input itself, else 127.5 / 127.5). :func:`embed_images` runs a model in batches with a progress bar.
arcface_torch checkpoints need the network code, so they are loaded by :mod:`insightface_pwr.eval.evaluate`.
"""
from __future__ import annotations

import os
import warnings
from typing import Callable, Optional, Union

import numpy as np
import torch

from ..infra.errors import UserError
from ..infra.progress import progress_bar
from ..models.runners import OnnxRunner, TorchRunner, onnx_input_normalisation
from .model_packs import resolve_model

__all__ = ["EmbeddingModel", "OnnxEmbeddingModel", "TorchEmbeddingModel", "load_embedding_model", "embed_images",
           "ModelFileError"]

PathLike = Union[str, "os.PathLike[str]"]


class ModelFileError(UserError, ValueError):
    """A model file that is not ONNX nor TorchScript, or a bad normalisation."""


class EmbeddingModel:
    """Base class: ``model(images_uint8_nchw) -> N x D float32 numpy`` (raw, not normalised).

    ``runner`` is the format's runner; ``seconds`` the time spent inside it (the model alone)."""

    runner: Callable[[torch.Tensor], torch.Tensor]
    device = torch.device("cpu")
    name = "model"

    def __init__(self, input_mean: float = 127.5, input_std: float = 127.5):
        if not input_std > 0:
            raise ModelFileError(f"input_std must be > 0, got {input_std}")
        self.input_mean, self.input_std = float(input_mean), float(input_std)

    @property
    def seconds(self) -> float:
        return float(getattr(self.runner, "seconds", 0.0))

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be N x 3 x H x W, got shape {tuple(images.shape)}")
        return (images.to(self.device, torch.float32) - self.input_mean) / self.input_std

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        return self.runner(self.normalise(images)).cpu().numpy()


class OnnxEmbeddingModel(EmbeddingModel):
    """An ONNX model with one NCHW float32 input (output ``embedding``, else the first); ``input_mean=None`` or
    ``input_std=None`` reads them from the graph (InsightFace's rule)."""

    def __init__(self, path: PathLike, input_mean: Optional[float] = None, input_std: Optional[float] = None,
                 threads: Optional[int] = None, device: Union[str, torch.device] = "cpu"):
        self.normalisation_source = "given"
        if input_mean is None or input_std is None:
            mean, std, self.normalisation_source = onnx_input_normalisation(path)
            input_mean = mean if input_mean is None else input_mean
            input_std = std if input_std is None else input_std
        super().__init__(input_mean, input_std)
        self.device = torch.device(device)
        self.runner = OnnxRunner(path, threads or torch.get_num_threads(), self.device)
        self.path = self.name = os.fspath(path)


class TorchEmbeddingModel(EmbeddingModel):
    """A ``torch.nn.Module`` (e.g. a TorchScript file or an arcface_torch backbone) in eval mode, no grad."""

    def __init__(self, module: torch.nn.Module, input_mean: float = 127.5, input_std: float = 127.5,
                 device: Union[str, torch.device] = "cpu", fp16: bool = False):
        super().__init__(input_mean, input_std)
        self.device = torch.device(device)
        self.runner = TorchRunner(module.to(self.device), fp16=fp16, timed=True,
                                  optimize=self.device.type == "cpu")
        self.module = self.runner.module


def load_embedding_model(path: PathLike, input_mean: Optional[float] = 127.5, input_std: Optional[float] = 127.5,
                         device: str = "cpu", threads: Optional[int] = None) -> EmbeddingModel:
    """An ONNX (``.onnx``) or TorchScript file, or an InsightFace model pack (a folder, or a pack name under
    ``$INSIGHTFACE_HOME/models`` / ``~/.insightface/models``), as an :class:`EmbeddingModel`.

    ``input_mean``/``input_std`` None: detected from an ONNX graph; 127.5 for TorchScript. A file that is
    neither raises :class:`ModelFileError` saying how to load an arcface_torch checkpoint instead."""
    path = resolve_model(path)
    if path.lower().endswith(".onnx"):
        return OnnxEmbeddingModel(path, input_mean, input_std, threads, device)
    try:
        with warnings.catch_warnings():  # torch >= 2.9 deprecates TorchScript; the files still load
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(path, map_location=device)
    except RuntimeError as e:
        raise ModelFileError(f"{path} is neither an ONNX file (.onnx) nor a TorchScript archive "
                             f"({e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''}); for an "
                             f"arcface_torch state_dict pass --network NAME (run inside arcface_torch or with "
                             f"--arcface-root)") from None
    model = TorchEmbeddingModel(module, 127.5 if input_mean is None else input_mean,
                                127.5 if input_std is None else input_std, device)
    model.name = path
    return model


def embed_images(model: Callable[[torch.Tensor], np.ndarray], images: torch.Tensor, batch_size: int = 64,
                 progress: bool = True, desc: str = "embedding") -> np.ndarray:
    """Run ``model`` over ``images`` (N x 3 x H x W uint8) in batches; returns N x D float32."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    bar = progress_bar(len(images), desc, "img", progress)
    chunks = []
    for start in range(0, len(images), batch_size):
        chunks.append(np.asarray(model(images[start:start + batch_size]), dtype=np.float32))
        if bar is not None:
            bar.update(len(chunks[-1]))
    if bar is not None:
        bar.close()
    if not chunks:
        raise ValueError("no images to embed")
    return np.concatenate(chunks)
