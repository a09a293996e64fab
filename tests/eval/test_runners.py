"""models/runners.py (the one ONNX runner and the one torch runner), ONNX input-normalisation detection
(InsightFace's rule) and InsightFace model packs resolved offline in a temporary model root."""
import os

import numpy as np
import pytest
import torch

from insightface_pwr.eval.embedding_models import load_embedding_model
from insightface_pwr.eval.model_packs import PackError, resolve_model
from insightface_pwr.models.runners import OnnxRunner, RunnerError, TorchRunner, onnx_input_normalisation

def test_onnx_runner_against_numpy(tmp_path, linear_onnx):
    w = np.random.default_rng(0).standard_normal((48, 5)).astype(np.float32)
    runner = OnnxRunner(linear_onnx(tmp_path / "m.onnx", w), threads=1)
    x = torch.randn(3, 3, 4, 4)
    out = runner(x)
    assert out.dtype == torch.float32 and out.shape == (3, 5) and out.device == x.device
    np.testing.assert_allclose(out.numpy(), x.reshape(3, -1).numpy() @ w, rtol=1e-5, atol=1e-5)
    assert runner.seconds > 0
    with pytest.raises(RunnerError, match="N x C x H x W"):
        runner(torch.zeros(3, 48))
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(RunnerError, match="cannot load ONNX model .*bad.onnx"):
        OnnxRunner(tmp_path / "bad.onnx")


def test_torch_runner_frozen_first_output_float32():
    lin = torch.nn.Linear(12, 4)
    module = torch.nn.Sequential(torch.nn.Flatten(), lin, torch.nn.Dropout(0.9))

    class Pair(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = module

        def forward(self, x):
            return self.m(x).double(), x

    runner = TorchRunner(Pair())
    x = torch.randn(2, 3, 2, 2, requires_grad=True)
    out = runner(x)
    assert out.dtype == torch.float32 and not out.requires_grad
    assert all(not p.requires_grad for p in runner.module.parameters()) and not runner.module.training
    with torch.no_grad():  # eval mode: dropout off, so exactly the linear map
        ref = x.reshape(2, -1) @ lin.weight.T + lin.bias
    assert torch.allclose(out, ref, atol=1e-6)


def test_normalisation_detection(tmp_path, shared, linear_onnx):
    w = np.ones((48, 2), np.float32)
    assert onnx_input_normalisation(linear_onnx(tmp_path / "a.onnx", w))[:2] == (127.5, 127.5)
    assert onnx_input_normalisation(linear_onnx(tmp_path / "b.onnx", w, normalise=True))[:2] == (0.0, 1.0)
    props = {"input_mean": "127.5", "input_std": "128"}
    assert onnx_input_normalisation(linear_onnx(tmp_path / "c.onnx", w, props=props))[:2] == (127.5, 128.0)
    with pytest.raises(RunnerError, match="input_std='x'"):
        onnx_input_normalisation(linear_onnx(tmp_path / "d.onnx", w, props={"input_mean": "1", "input_std": "x"}))
    # the shared teacher does not normalise in its graph: InsightFace's rule gives 127.5 / 127.5 (its training
    # used / 128, which the graph cannot tell; pass --input-std 128 for the exact convention)
    teacher = shared / "models" / "mbf_y1_ms1m_arcface_128d.onnx"
    assert onnx_input_normalisation(teacher)[:2] == (127.5, 127.5)
    # a model that normalises itself and one that does not give the same embeddings of uint8 images
    x = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    wr = np.random.default_rng(1).standard_normal((48, 3)).astype(np.float32)
    inside = load_embedding_model(linear_onnx(tmp_path / "in.onnx", wr, normalise=True), None, None)
    outside = load_embedding_model(linear_onnx(tmp_path / "out.onnx", wr), 127.5, 128.0)
    ref = ((x.double().reshape(2, -1).numpy() - 127.5) / 128) @ wr
    np.testing.assert_allclose(inside(x), ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(outside(x), ref, rtol=1e-4, atol=1e-4)
    assert (inside.input_mean, inside.input_std) == (0.0, 1.0)


def test_insightface_pack_in_model_root(tmp_path, shared, monkeypatch, linear_onnx):
    pack = tmp_path / "models" / "mypack"
    pack.mkdir(parents=True)
    os.symlink(shared / "models" / "mbf_y1_ms1m_arcface_128d.onnx", pack / "w600k_mbf.onnx")
    linear_onnx(pack / "2d106det.onnx", np.ones((3 * 192 * 192, 4), np.float32),
            size=192)  # a landmark model's input size: not the recognition model
    linear_onnx(pack / "genderage.onnx", np.ones((3 * 96 * 96, 3), np.float32), size=96)
    monkeypatch.setenv("INSIGHTFACE_HOME", str(tmp_path))
    assert resolve_model("mypack") == str(pack / "w600k_mbf.onnx")
    assert resolve_model(str(pack)) == str(pack / "w600k_mbf.onnx")
    model = load_embedding_model("mypack", None, None)
    assert (model.input_mean, model.input_std) == (127.5, 127.5)
    x = torch.full((1, 3, 112, 112), 200, dtype=torch.uint8)
    direct = OnnxRunner(shared / "models" / "mbf_y1_ms1m_arcface_128d.onnx")(((x.float() - 127.5) / 127.5))
    np.testing.assert_allclose(model(x), direct.numpy(), rtol=1e-5, atol=1e-5)
    with pytest.raises(PackError, match="no such file, folder, nor InsightFace pack .*models/absent"):
        resolve_model("absent")
    (pack / "w600k_mbf.onnx").unlink()
    with pytest.raises(PackError, match="expected exactly one recognition model .*found none"):
        resolve_model("mypack")
