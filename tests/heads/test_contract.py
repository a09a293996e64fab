"""The same contract checks for every registered head (inputs built from ``spec.consumes``)."""
from __future__ import annotations

import inspect
import re
import sys

import pytest
import torch

from insightface_pwr.heads.base import debug_checks
from insightface_pwr.heads.registry import create_head, get_head_spec, list_heads

N, D = 6, 5

# construction parameters a head cannot do without (every other head is built with its defaults)
HEAD_PARAMS = {"adadistill": dict(num_classes=4, embedding_size=D)}


def build(name: str):
    """Head ``name`` with HEAD_PARAMS; torch is seeded first, so a head with random state (adadistill's initial
    centres) is the same every time it is built."""
    torch.manual_seed(0)
    return create_head(name, **HEAD_PARAMS.get(name, {}))


def make_inputs(name: str, n: int = N, dtype: torch.dtype = torch.float64, seed: int = 0) -> dict:
    """Keyword inputs of head ``name``: embeddings (D_t = D_s + 1 unless the head needs equal sizes) or logits;
    ``labels`` (int64, classes 0, 0, 1, 1, 2, 2, ...: positive and negative pairs) for a head that uses labels."""
    spec = get_head_spec(name)
    g = torch.Generator().manual_seed(seed)
    if spec.consumes == "logits":
        return {"student_logits": 5 * torch.randn(n, 7, generator=g, dtype=torch.float64).to(dtype),
                "teacher_logits": 5 * torch.randn(n, 7, generator=g, dtype=torch.float64).to(dtype)}
    dt = D if spec.cls.same_dim else D + 1
    inputs = {"student": torch.randn(n, D, generator=g, dtype=torch.float64).to(dtype),
              "teacher": torch.randn(n, dt, generator=g, dtype=torch.float64).to(dtype)}
    if spec.cls.uses_labels:
        inputs["labels"] = torch.arange(n, dtype=torch.int64) // 2
    return inputs


def extras(inputs: dict) -> dict:
    """The inputs after the student and the teacher (the labels, for a head that uses them)."""
    return {k: v for k, v in list(inputs.items())[2:]}


def student_key(inputs: dict) -> str:
    return next(iter(inputs))


def run(name: str, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    key = student_key(inputs)
    inputs = dict(inputs)
    inputs[key] = inputs[key].clone().requires_grad_(True)
    out = build(name)(**inputs)
    out.backward()
    return out, inputs[key].grad


@pytest.fixture(params=list_heads())
def name(request) -> str:
    return request.param


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_finite_scalar_with_gradient_to_the_student(name, dtype):
    out, grad = run(name, make_inputs(name, dtype=dtype))
    assert out.dim() == 0 and out.dtype == dtype and torch.isfinite(out)
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_single_sample(name):
    spec = get_head_spec(name)
    out, grad = run(name, make_inputs(name, n=1))
    assert out.requires_grad and torch.isfinite(out) and torch.isfinite(grad).all()
    if spec.consumes == "embeddings" and not spec.cls.same_dim:  # relational: no pair -> attached zero
        assert out.item() == 0.0 and torch.equal(grad, torch.zeros_like(grad))


def test_teacher_receives_no_gradient(name):
    inputs = make_inputs(name)
    s_key, t_key = list(inputs)[:2]
    inputs[s_key].requires_grad_(True)
    inputs[t_key].requires_grad_(True)
    build(name)(**inputs).backward()
    assert inputs[t_key].grad is None or not inputs[t_key].grad.any()


def test_deterministic(name):
    out1, grad1 = run(name, make_inputs(name, seed=3))
    out2, grad2 = run(name, make_inputs(name, seed=3))
    assert torch.equal(out1, out2) and torch.equal(grad1, grad2)


def _bad_variants(x: torch.Tensor) -> list:
    nan = x.clone()
    nan[0, 0] = float("nan")
    return [(x[0], ValueError, "2-D"), (x.unsqueeze(0), ValueError, "2-D"), (x.to(torch.int64), TypeError, "floating"),
            (x[:0], ValueError, "empty"), (nan, ValueError, "non-finite")]


@pytest.mark.parametrize("which", [0, 1])
def test_bad_input_errors_name_the_tensor_and_shape(name, which):
    inputs = make_inputs(name)
    key = list(inputs)[which]
    head = build(name)
    for bad, exc, what in _bad_variants(inputs[key]):
        with debug_checks(), pytest.raises(exc) as err:  # finiteness is read only with debug checks on
            head(**{**inputs, key: bad})
        msg = str(err.value)
        assert msg.startswith(key + " ") and what in msg and str(tuple(bad.shape)) in msg, msg


def test_mismatched_batch_size(name):
    inputs = make_inputs(name)
    s_key, t_key = list(inputs)[:2]
    short = inputs[t_key][:-1]
    with pytest.raises(ValueError) as err:
        build(name)(**{s_key: inputs[s_key], t_key: short}, **extras(inputs))
    msg = str(err.value)
    assert s_key in msg and t_key in msg and str(tuple(inputs[s_key].shape)) in msg and str(tuple(short.shape)) in msg


def test_docstring_cites_a_paper_and_shows_a_recipe(name):
    spec = get_head_spec(name)
    module_doc = inspect.getdoc(sys.modules[spec.cls.__module__]) or ""
    assert re.search(r"\b(19|20)\d\d\b", spec.paper), spec.paper
    assert spec.paper.split()[0].rstrip(",") in module_doc  # first author of the cited paper
    assert f'name="{name}"' in module_doc  # a recipe snippet
    assert spec.summary


def test_non_finite_input_passes_without_debug_checks(name):
    # no value check (a device sync) per step by default: a NaN flows through (GradScaler skips such steps)
    inputs = make_inputs(name)
    key = list(inputs)[0]
    bad = inputs[key].clone()
    bad[0, 0] = float("nan")
    with debug_checks(False):
        build(name)(**{**inputs, key: bad})


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_finite_with_duplicate_rows(name, dtype):
    # autocast hands half-precision embeddings/logits; eps constants like 1e-10 underflow in float16
    inputs = make_inputs(name, dtype=torch.float64)
    s_key, t_key = list(inputs)[:2]
    inputs[s_key][3] = inputs[s_key][1]
    inputs[t_key][2] = inputs[t_key][0]
    out, grad = run(name, {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()})
    assert torch.isfinite(out) and torch.isfinite(grad).all() and grad.dtype == dtype
    ref, _ = run(name, inputs)
    assert float(out.detach()) == pytest.approx(float(ref.detach()), rel=0.05, abs=1e-3)
