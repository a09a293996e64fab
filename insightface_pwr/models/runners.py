"""One runner per model format: ``runner(x) -> embeddings``, the only place that runs an ONNX or torch model.

Both runners take a float32 ``N x C x H x W`` tensor that is already normalised (the caller owns the input
convention) and return ``N x D`` float32 embeddings on the input's device, without building a graph:

- :class:`OnnxRunner` - an onnxruntime session per device: CUDA (``device_id`` = the input's CUDA index) when the
  input is on CUDA and onnxruntime has the CUDA provider, else CPU; ``threads`` sets the intra-op threads;
  spin-waiting is off (idle threads would otherwise keep spinning between calls and take CPU from the rest of
  the process). Output ``embedding`` if the graph has one, else its first output.
- :class:`TorchRunner` - an ``nn.Module`` or TorchScript module, in eval mode with ``requires_grad`` off, run under
  ``torch.no_grad()``; ``fp16`` runs it under CUDA autocast (float16) when the input is on CUDA. A tuple or list
  output gives its first element.

:func:`onnx_input_normalisation` reads an ONNX graph to tell whether it normalises its input itself, as
InsightFace's ``model_zoo.ArcFaceONNX`` does.
"""
from __future__ import annotations

import os
import time
from typing import Dict, Optional, Tuple, Union

import torch
from torch import nn

from ..infra.errors import UserError

__all__ = ["RunnerError", "OnnxRunner", "TorchRunner", "Renormalised", "onnx_input_normalisation"]

PathLike = Union[str, "os.PathLike[str]"]


class RunnerError(UserError, ValueError):
    """A model file that cannot be loaded or run (the message names the file and what was expected)."""


def _check_input(x: torch.Tensor, what: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise RunnerError(f"{what}: input must be an N x C x H x W tensor, got {shape}")


class OnnxRunner:
    """An ONNX model run by onnxruntime; ``seconds`` accumulates the time spent inside ``session.run``."""

    def __init__(self, path: PathLike, threads: Optional[int] = None, device: Union[str, torch.device] = "cpu"):
        try:
            import onnxruntime as ort
        except ImportError as e:  # pragma: no cover  (onnxruntime is in the test, onnx and insightface extras)
            raise RunnerError(f"{os.fspath(path)!r} is an ONNX file: install onnxruntime "
                              f"(pip install 'insightface-pwr[onnx]')") from e
        self._ort, self.path, self.threads = ort, os.fspath(path), threads
        self._sessions: Dict[str, object] = {}
        self.seconds = 0.0
        session = self._session(torch.device(device))  # load now: a bad file fails here, not at the first batch
        self.input_name = session.get_inputs()[0].name
        outputs = [o.name for o in session.get_outputs()]
        self.output_name = "embedding" if "embedding" in outputs else outputs[0]

    def _session(self, device: torch.device):
        key = str(device) if device.type == "cuda" else "cpu"
        if key not in self._sessions:
            ort = self._ort
            providers: list = ["CPUExecutionProvider"]
            if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
                index = device.index if device.index is not None else torch.cuda.current_device()
                providers.insert(0, ("CUDAExecutionProvider", {"device_id": int(index)}))
            options = ort.SessionOptions()
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.add_session_config_entry("session.inter_op.allow_spinning", "0")
            options.log_severity_level = 3
            if self.threads is not None:
                options.intra_op_num_threads, options.inter_op_num_threads = int(self.threads), 1
            try:
                self._sessions[key] = ort.InferenceSession(self.path, options, providers=providers)
            except Exception as e:  # noqa: BLE001  (onnxruntime raises its own exception types)
                raise RunnerError(f"cannot load ONNX model {self.path!r}: {type(e).__name__}: {e}") from e
        return self._sessions[key]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.path)
        session = self._session(x.device)
        if x.is_cuda and "CUDAExecutionProvider" in session.get_providers():
            return self._run_bound(session, x)
        arr = x.detach().to(torch.float32).cpu().contiguous().numpy()
        start = time.perf_counter()
        (out,) = session.run([self.output_name], {self.input_name: arr})
        self.seconds += time.perf_counter() - start
        return torch.from_numpy(out).to(device=x.device, dtype=torch.float32)

    def _run_bound(self, session, x: torch.Tensor) -> torch.Tensor:
        """CUDA: I/O binding on the tensor's own memory and a preallocated output on the same device (no round
        trip through the host). onnxruntime reads the input on its own stream, so torch's stream is synchronised
        first (the one wait of the call)."""
        import numpy as np
        x = x.detach().to(torch.float32).contiguous()
        index = x.device.index if x.device.index is not None else torch.cuda.current_device()
        dim = self._output_dim(session, x)
        out = torch.empty((x.shape[0], dim), dtype=torch.float32, device=x.device)
        binding = session.io_binding()
        binding.bind_input(self.input_name, "cuda", index, np.float32, list(x.shape), x.data_ptr())
        binding.bind_output(self.output_name, "cuda", index, np.float32, list(out.shape), out.data_ptr())
        start = time.perf_counter()
        torch.cuda.current_stream(x.device).synchronize()
        session.run_with_iobinding(binding)
        self.seconds += time.perf_counter() - start
        return out

    def _output_dim(self, session, x: torch.Tensor) -> int:
        if getattr(self, "_dim", None) is None:
            shape = next(o.shape for o in session.get_outputs() if o.name == self.output_name)
            if len(shape) == 2 and isinstance(shape[1], int):
                self._dim = int(shape[1])
            else:  # a symbolic embedding size: learn it from one plain run
                (out,) = session.run([self.output_name], {self.input_name: x[:1].cpu().numpy()})
                self._dim = int(out.shape[1])
        return self._dim


class TorchRunner:
    """A frozen torch module (built from a state_dict, or TorchScript); ``seconds`` accumulates its run time
    (on CUDA only with ``timed=True``, which synchronises after each call)."""

    def __init__(self, module: nn.Module, fp16: bool = False, timed: bool = False, optimize: bool = False) -> None:
        """``optimize``: a TorchScript module is frozen and passed through ``torch.jit.optimize_for_inference``
        (on CPU about 2x faster for MobileFaceNet, on par with onnxruntime; same outputs to ~1e-6); it then has
        no parameters. Left as is if that fails."""
        module = module.eval()
        if optimize and isinstance(module, torch.jit.ScriptModule):
            try:
                module = torch.jit.optimize_for_inference(torch.jit.freeze(module))
            except Exception:  # noqa: BLE001  (an unfreezable module runs unoptimised)
                pass
        self.module = module
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.fp16, self.timed = bool(fp16), bool(timed)
        self.seconds = 0.0

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, type(self.module).__name__)
        start = time.perf_counter()
        if self.fp16 and x.is_cuda:
            with torch.autocast(device_type="cuda", dtype=torch.float16):
                out = self.module(x)
        else:
            out = self.module(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        out = out.to(device=x.device, dtype=torch.float32)
        if x.is_cuda and self.timed:
            torch.cuda.synchronize(x.device)
        self.seconds += time.perf_counter() - start
        return out


class Renormalised:
    """``inner`` fed ``(pixel - input_mean) / input_std`` when given images normalised as
    ``(pixel - from_mean) / from_std`` (arcface_torch's training images: 127.5 / 127.5)."""

    def __init__(self, inner, input_mean: float, input_std: float, from_mean: float = 127.5,
                 from_std: float = 127.5) -> None:
        if not input_std > 0 or not from_std > 0:
            raise RunnerError(f"input_std must be > 0, got {input_std} (from {from_std})")
        self.inner, self.scale = inner, from_std / input_std
        self.shift = (from_mean - input_mean) / input_std
        self.kind = getattr(inner, "kind", "teacher")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale == 1.0 and self.shift == 0.0:
            return self.inner(x)
        return self.inner(x * self.scale + self.shift)


def onnx_input_normalisation(path: PathLike) -> Tuple[float, float, str]:
    """``(input_mean, input_std, reason)`` for an ONNX recognition model, by InsightFace's rule
    (``insightface.model_zoo.arcface_onnx.ArcFaceONNX``): if the graph's first 8 nodes include a subtraction and a
    multiplication (node names starting ``Sub``/``_minus`` and ``Mul``/``_mul``; here also their op types) the
    graph normalises its input itself -> ``(0.0, 1.0)``; otherwise ``(127.5, 127.5)``.

    Model metadata ``input_mean`` and ``input_std`` (``onnx.helper.set_model_props``), when present, win."""
    try:
        import onnx
    except ImportError as e:
        raise RunnerError(f"detecting the input normalisation of {os.fspath(path)!r} needs the onnx package "
                          f"(pip install onnx), or pass --input-mean and --input-std") from e
    try:
        model = onnx.load(os.fspath(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001
        raise RunnerError(f"cannot read ONNX model {os.fspath(path)!r}: {type(e).__name__}: {e}") from e
    props = {p.key: p.value for p in model.metadata_props}
    if "input_mean" in props and "input_std" in props:
        try:
            mean, std = float(props["input_mean"]), float(props["input_std"])
        except ValueError:
            raise RunnerError(f"{os.fspath(path)!r}: metadata input_mean={props['input_mean']!r}, "
                              f"input_std={props['input_std']!r}: expected numbers") from None
        return mean, std, "the model's metadata (input_mean, input_std)"
    find_sub = find_mul = False
    for node in model.graph.node[:8]:
        if node.name.startswith(("Sub", "_minus")) or node.op_type == "Sub":
            find_sub = True
        if node.name.startswith(("Mul", "_mul")) or node.op_type == "Mul":
            find_mul = True
    if find_sub and find_mul:
        return 0.0, 1.0, "the graph subtracts and multiplies its input itself (InsightFace's rule)"
    return 127.5, 127.5, "no Sub/Mul among the graph's first nodes (InsightFace's rule: (pixel - 127.5) / 127.5)"
