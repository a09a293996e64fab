"""The class-sharded wrapper of ``hkd`` with one shard equals the registered ``hkd`` head (values and gradients)."""
import pytest
import torch

from insightface_pwr import create_head
from insightface_pwr.distill.gather import ClassSharded


@pytest.mark.parametrize("t2_scale", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_shard_equals_hkd_head(t2_scale, dtype):
    g = torch.Generator().manual_seed(1)
    s = (torch.randn(6, 9, generator=g) * 20).to(dtype)
    t = (torch.randn(6, 9, generator=g) * 20).to(dtype)
    s1, s2 = s.clone().requires_grad_(), s.clone().requires_grad_()
    got = ClassSharded(create_head("hkd", temperature=4.0, t2_scale=t2_scale))(student_logits=s1, teacher_logits=t)
    ref = create_head("hkd", temperature=4.0, t2_scale=t2_scale)(student_logits=s2, teacher_logits=t)
    got.backward()
    ref.backward()
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    assert torch.allclose(got, ref.to(got.dtype), rtol=tol, atol=tol)
    assert torch.allclose(s1.grad, s2.grad, rtol=tol, atol=tol)
    assert s1.grad.dtype == dtype
