"""Fixtures of the evaluation tests: small ONNX models built in the test (the shared data kit's fixtures are in
tests/conftest.py)."""
import numpy as np
import pytest


def _save(path, nodes, inits, in_shape, out_shape, props=None):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, in_shape)],
                              [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, out_shape)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    if props:
        helper.set_model_props(model, props)
    onnx.save(model, str(path))
    return path


def _linear(path, w, normalise=False, props=None, size=4):
    """An ONNX file: embedding = flatten(x) @ w, optionally after an in-graph (x - 127.5) * (1/128)."""
    from onnx import helper
    w = np.asarray(w, np.float32)
    nodes, inits, src = [], {"W": w}, "input.1"
    if normalise:
        inits.update(M=np.float32([127.5]), S=np.float32([1 / 128]))
        nodes += [helper.make_node("Sub", ["input.1", "M"], ["sub"], name="Sub_0"),
                  helper.make_node("Mul", ["sub", "S"], ["mul"], name="Mul_1")]
        src = "mul"
    nodes += [helper.make_node("Flatten", [src], ["flat"], axis=1),
              helper.make_node("MatMul", ["flat", "W"], ["embedding"])]
    return _save(path, nodes, inits, ["n", 3, size, size], ["n", w.shape[1]], props)


@pytest.fixture
def linear_onnx():
    """``linear_onnx(path, w, normalise=False, props=None, size=4)`` writes a linear ONNX embedding model."""
    pytest.importorskip("onnx")
    return _linear
