"""ONNX teachers run on the rank's own device: OnnxRunner's CUDA session is created with the CUDA provider and the
images' device index as device_id (read back from the session's provider options), on every visible GPU, and
gives the CPU session's embeddings."""
import pytest
import torch

from insightface_pwr.data.paths import shared_dir
from insightface_pwr.models.runners import OnnxRunner

MODEL = shared_dir() / "models" / "mbf_y1_ms1m_arcface_128d.onnx"


def test_onnx_runner_uses_the_images_device(device):
    ort = pytest.importorskip("onnxruntime")
    if device.type != "cuda":
        pytest.skip("CUDA only")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip(f"onnxruntime {ort.__version__} has no CUDA provider ({ort.get_available_providers()})")
    assert MODEL.is_file(), f"the shared kit's ONNX teacher {MODEL} is absent"
    runner = OnnxRunner(MODEL, device="cpu")
    x = torch.rand(8, 3, 112, 112) * 2 - 1
    ref = runner(x)
    for index in range(torch.cuda.device_count()):
        dev = torch.device("cuda", index)
        out = runner(x.to(dev))
        session = runner._sessions[str(dev)]
        assert session.get_providers()[0] == "CUDAExecutionProvider"
        assert session.get_provider_options()["CUDAExecutionProvider"]["device_id"] == str(index)
        assert out.device == dev
        torch.testing.assert_close(out.cpu(), ref, rtol=1e-3, atol=1e-3)
