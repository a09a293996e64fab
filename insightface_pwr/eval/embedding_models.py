"""Embedding models for evaluation, loaded from files: ONNX (onnxruntime) and TorchScript.

An :class:`EmbeddingModel` maps a batch of ``N x 3 x H x W`` uint8 RGB images to ``N x D`` float32 raw embeddings,
applying ``(pixel - input_mean) / input_std`` first (arcface_torch's convention is mean = std = 127.5; the
InsightFace model zoo's recognition models, e.g. buffalo_l's ``w600k_r50.onnx``, use the same; some older models
use std 128). :func:`embed_images` runs it in batches with a progress bar. arcface_torch checkpoints need the
network code, so they are loaded by :mod:`insightface_pwr.eval.evaluate`, not here.
"""
from __future__ import annotations

import os
import warnings
from typing import Callable, Optional, Union

import numpy as np
import torch

from ..infra.progress import progress_bar

__all__ = ["EmbeddingModel", "OnnxEmbeddingModel", "TorchEmbeddingModel", "load_embedding_model", "embed_images"]

PathLike = Union[str, "os.PathLike[str]"]


class EmbeddingModel:
    """Base class: ``model(images_uint8_nchw) -> N x D float32 numpy`` (raw, not normalised)."""

    def __init__(self, input_mean: float = 127.5, input_std: float = 127.5):
        if not input_std > 0:
            raise ValueError(f"input_std must be > 0, got {input_std}")
        self.input_mean, self.input_std = float(input_mean), float(input_std)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be N x 3 x H x W, got shape {tuple(images.shape)}")
        return (images.to(torch.float32) - self.input_mean) / self.input_std

    def __call__(self, images: torch.Tensor) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


class OnnxEmbeddingModel(EmbeddingModel):
    """An ONNX model with one NCHW float32 input and the embedding as its first output (onnxruntime, CPU)."""

    def __init__(self, path: PathLike, input_mean: float = 127.5, input_std: float = 127.5,
                 threads: Optional[int] = None):
        super().__init__(input_mean, input_std)
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ImportError("ONNX models need onnxruntime: pip install 'insightface-pwr[onnx]'") from e
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        self.session = ort.InferenceSession(os.fspath(path), options, providers=providers)
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise ValueError(f"{path}: expected one N x 3 x H x W input, got "
                             f"{[(i.name, i.shape) for i in inputs]}")
        self.input_name = inputs[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.path = os.fspath(path)

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        x = self.normalise(images).numpy()
        return np.asarray(self.session.run([self.output_name], {self.input_name: x})[0], dtype=np.float32)


class TorchEmbeddingModel(EmbeddingModel):
    """A ``torch.nn.Module`` (e.g. a TorchScript file or an arcface_torch backbone) in eval mode, no grad."""

    def __init__(self, module: torch.nn.Module, input_mean: float = 127.5, input_std: float = 127.5,
                 device: Union[str, torch.device] = "cpu"):
        super().__init__(input_mean, input_std)
        self.device = torch.device(device)
        self.module = module.to(self.device).eval()

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> np.ndarray:
        out = self.module(self.normalise(images).to(self.device))
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.float().cpu().numpy()


def load_embedding_model(path: PathLike, input_mean: float = 127.5, input_std: float = 127.5,
                         device: str = "cpu") -> EmbeddingModel:
    """An ONNX (``.onnx``) or TorchScript file as an :class:`EmbeddingModel`.

    A file that is neither raises ``ValueError`` saying how to load an arcface_torch checkpoint instead.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model file not found: {path}")
    if path.lower().endswith(".onnx"):
        return OnnxEmbeddingModel(path, input_mean, input_std)
    try:
        with warnings.catch_warnings():  # torch >= 2.9 deprecates TorchScript; the files still load
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(path, map_location=device)
    except RuntimeError as e:
        raise ValueError(f"{path} is neither an ONNX file (.onnx) nor a TorchScript archive ({e.__class__.__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}); for an arcface_torch state_dict pass "
                         f"--network NAME (run inside arcface_torch or with --arcface-root)") from None
    return TorchEmbeddingModel(module, input_mean, input_std, device)


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
