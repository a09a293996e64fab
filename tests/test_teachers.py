"""Teachers: state_dict / TorchScript / ONNX files give frozen, graph-free embeddings equal to a reference."""
import numpy as np
import pytest
import torch

from insightface_pwr.data.paths import shared_dir
from insightface_pwr.models.backbones import get_model
from insightface_pwr.distill.teachers import TeacherError, detect_format, load_teacher

CPU = torch.device("cpu")


def _net(name="tiny_cnn", dim=8, seed=0):
    torch.manual_seed(seed)
    net = get_model(name, num_features=dim)
    net.train()
    net(torch.randn(16, 3, 16, 16))  # move the BN running statistics away from their defaults
    return net.eval()


def test_state_dict_teacher_is_frozen_and_equals_the_module(tmp_path):
    net = _net()
    torch.save(net.state_dict(), tmp_path / "model.pt")
    teacher = load_teacher({"weights": str(tmp_path / "model.pt"), "network": "tiny_cnn", "embedding_size": 8},
                           get_model, CPU)
    x = torch.randn(5, 3, 16, 16, requires_grad=True)
    out = teacher(x)
    assert not out.requires_grad and out.dtype == torch.float32
    with torch.no_grad():
        ref = net(x)
    assert torch.equal(out, ref)
    # eval mode: a sample's embedding does not depend on the rest of the batch
    assert torch.allclose(teacher(x[:1]), out[:1], atol=1e-6)
    assert all(not p.requires_grad for p in teacher.module.parameters())


def test_checkpoint_gpu_format_and_ddp_prefix(tmp_path):
    net = _net()
    state = {"module." + k: v for k, v in net.state_dict().items()}
    torch.save({"epoch": 1, "global_step": 3, "state_dict_backbone": state}, tmp_path / "checkpoint_gpu_0.pt")
    teacher = load_teacher({"weights": str(tmp_path / "checkpoint_gpu_0.pt"), "network": "tiny_cnn",
                            "embedding_size": 8}, get_model, CPU)
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(teacher(x), net(x))


def test_architecture_mismatch_lists_keys(tmp_path):
    torch.save(_net("tiny_cnn").state_dict(), tmp_path / "model.pt")
    with pytest.raises(TeacherError) as e:
        load_teacher({"weights": str(tmp_path / "model.pt"), "network": "tiny_mbf", "embedding_size": 8},
                     get_model, CPU)
    msg = str(e.value)
    assert "architecture mismatch" in msg and "missing keys: body.0.0.weight" in msg
    assert "unexpected keys:" in msg and "body.0.weight" in msg
    with pytest.raises(TeacherError, match="shape mismatches: fc.weight"):
        load_teacher({"weights": str(tmp_path / "model.pt"), "network": "tiny_cnn", "embedding_size": 4},
                     get_model, CPU)


def test_missing_file_and_missing_network(tmp_path):
    with pytest.raises(TeacherError, match="teacher file not found: .*absent.pt"):
        load_teacher({"weights": str(tmp_path / "absent.pt"), "network": "tiny_cnn"}, get_model, CPU)
    torch.save(_net().state_dict(), tmp_path / "model.pt")
    with pytest.raises(TeacherError, match="teacher.network is required"):
        load_teacher({"weights": str(tmp_path / "model.pt")}, get_model, CPU)


def test_torchscript_teacher(tmp_path):
    net = _net("tiny_mbf", 6)
    torch.jit.script(net).save(str(tmp_path / "t.torchscript.pt"))
    assert detect_format(tmp_path / "t.torchscript.pt") == "torchscript"
    teacher = load_teacher({"weights": str(tmp_path / "t.torchscript.pt")}, None, CPU)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(teacher(x), net(x), atol=1e-6)


def test_onnx_teacher_against_numpy(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3 * 4 * 4, 5)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input.1"], ["flat"], axis=1),
         helper.make_node("MatMul", ["flat", "W"], ["embedding"])], "tiny",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["batch", 3, 4, 4])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 5])],
        [numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "t.onnx"))
    teacher = load_teacher({"weights": str(tmp_path / "t.onnx")}, None, CPU)
    x = torch.randn(2, 3, 4, 4)
    np.testing.assert_allclose(teacher(x).numpy(), x.reshape(2, -1).numpy() @ w, rtol=1e-5, atol=1e-5)


def test_real_teacher_onnx_equals_torchscript():
    models = shared_dir() / "models"
    onnx_path, ts_path = models / "mbf_y1_ms1m_arcface_128d.onnx", models / "mbf_y1_ms1m_arcface_128d.torchscript.pt"
    if not onnx_path.is_file():
        pytest.fail(f"shared teacher not found at {onnx_path}: set INSIGHTFACE_PWR_SHARED")
    a = load_teacher({"weights": str(onnx_path)}, None, CPU)
    b = load_teacher({"weights": str(ts_path)}, None, CPU)
    torch.manual_seed(0)
    x = torch.rand(2, 3, 112, 112) * 2 - 1
    ea, eb = a(x), b(x)
    assert ea.shape == (2, 128)
    assert torch.allclose(ea, eb, atol=1e-3 * float(eb.abs().max()))


def test_renormalised_teacher_sees_its_own_convention():
    """cache-teacher's --input-mean/--input-std: training images (pixel - 127.5) / 127.5 reach the teacher as
    (pixel - mean) / std."""
    from insightface_pwr.models.runners import Renormalised
    seen = []
    teacher = Renormalised(lambda x: seen.append(x) or x.flatten(1), 127.5, 128.0)
    pixels = torch.randint(0, 256, (2, 3, 4, 4)).float()
    teacher((pixels - 127.5) / 127.5)
    assert torch.allclose(seen[0], (pixels - 127.5) / 128.0, atol=1e-6)
    raw = Renormalised(lambda x: x, 0.0, 1.0)  # a graph that normalises itself gets raw pixels
    assert torch.allclose(raw((pixels - 127.5) / 127.5), pixels, atol=1e-4)
    same = Renormalised(lambda x: x, 127.5, 127.5)
    x = torch.randn(1, 3, 2, 2)
    assert same(x) is x
