"""hkd against a slow loop over samples and classes written from shared/spec/HEADS.md (math module)."""
from __future__ import annotations

import math

import pytest
import torch

from insightface_pwr.heads.hkd import HintonKDLoss, kl_from_log_probs
from insightface_pwr.heads.registry import create_head

TOL = {torch.float64: dict(rtol=1e-9, atol=1e-12), torch.float32: dict(rtol=1e-4, atol=1e-6)}


def make_logits(n: int, c: int, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of margin-softmax size (|x| up to ~30); teacher row 1 repeats row 0 and has tied classes."""
    g = torch.Generator().manual_seed(seed)
    s = 10.0 * torch.randn(n, c, generator=g, dtype=torch.float64)
    t = 10.0 * torch.randn(n, c, generator=g, dtype=torch.float64)
    t[:, 1] = t[:, 0]
    if n >= 2:
        t[1] = t[0]
    return s.to(dtype), t.to(dtype)


def softmax_row(row: list, temp: float) -> list:
    m = max(row)
    e = [math.exp((v - m) / temp) for v in row]
    total = sum(e)
    return [v / total for v in e]


def ref_loss_and_grad(s: torch.Tensor, t: torch.Tensor, temp: float, t2: bool) -> tuple[float, list]:
    """Value and the hand-derived gradient d/ds_ic = (p_s,ic - p_t,ic) / (T N) (times T^2 with t2), in float64."""
    n, c = s.shape
    loss, grad = 0.0, []
    for i in range(n):
        ps = softmax_row([float(v) for v in s[i]], temp)
        pt = softmax_row([float(v) for v in t[i]], temp)
        loss += sum(pt[k] * (math.log(pt[k]) - math.log(ps[k])) for k in range(c) if pt[k] > 0)
        grad.append([(ps[k] - pt[k]) / (temp * n) for k in range(c)])
    scale = temp ** 2 if t2 else 1.0
    return scale * loss / n, [[scale * v for v in row] for row in grad]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("temperature, t2_scale", [(4.0, False), (1.0, False), (4.0, True), (0.5, True)])
def test_matches_loop(dtype, temperature, t2_scale):
    head = create_head("hkd", temperature=temperature, t2_scale=t2_scale)
    for n, c, seed in [(5, 7, 0), (1, 3, 1), (2, 11, 2)]:
        s, t = make_logits(n, c, dtype, seed)
        x = s.clone().requires_grad_(True)
        out = head(student_logits=x, teacher_logits=t)
        out.backward()
        value, grad = ref_loss_and_grad(s.double(), t.double(), temperature, t2_scale)
        assert out.dtype == dtype and out.dim() == 0
        torch.testing.assert_close(out.detach(), torch.tensor(value, dtype=dtype), **TOL[dtype])
        torch.testing.assert_close(x.grad, torch.tensor(grad, dtype=dtype), **TOL[dtype])


def test_zero_when_equal_and_positive_otherwise():
    s, t = make_logits(4, 6, torch.float64, 3)
    assert HintonKDLoss()(student_logits=t.clone(), teacher_logits=t).item() == pytest.approx(0.0, abs=1e-14)
    assert HintonKDLoss()(student_logits=s, teacher_logits=t).item() > 0.0


def test_sharded_classes_reuse_the_per_sample_kl():
    # what the partial-FC integration does: global log-softmaxes, KL summed per shard, shards added up
    s, t = make_logits(4, 10, torch.float64, 4)
    log_ps, log_pt = torch.log_softmax(s / 4.0, dim=1), torch.log_softmax(t / 4.0, dim=1)
    sharded = kl_from_log_probs(log_pt[:, :3], log_ps[:, :3]) + kl_from_log_probs(log_pt[:, 3:], log_ps[:, 3:])
    torch.testing.assert_close(sharded.mean(), HintonKDLoss()(student_logits=s, teacher_logits=t))


@pytest.mark.parametrize("bad, match", [(dict(temperature=0.0), "temperature"), (dict(temperature=-2.0), "temperature"),
                                        (dict(temperature=float("nan")), "temperature"), (dict(t2_scale=1), "t2_scale")])
def test_bad_parameters(bad, match):
    with pytest.raises(ValueError, match=match):
        HintonKDLoss(**bad)
