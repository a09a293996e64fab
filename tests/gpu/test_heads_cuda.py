"""Every registered head on the device equals the CPU (values and the student's gradient) in float32 and float64;
under fp16 and bf16 autocast its loss and gradient are finite and close to float32's."""
import pytest
import torch
import torch.nn.functional as F

from insightface_pwr.heads.registry import create_head, get_head_spec, list_heads

N, D, C = 48, 64, 12
PARAMS = {"adadistill": dict(num_classes=C, embedding_size=D), "ekd": dict(topk=16, anchors=(2, 4, 8)),
          "coupleface_provisional": dict(num_negatives=4), "darkrank": dict(list_length=4)}


def _inputs(name, dtype, device):
    g = torch.Generator().manual_seed(0)
    if get_head_spec(name).consumes == "logits":
        s, t = torch.randn(N, C, generator=g) * 8, torch.randn(N, C, generator=g) * 8
    else:
        t = torch.randn(N, D, generator=g)
        s = t + 0.5 * torch.randn(N, D, generator=g)
    labels = torch.arange(N) % C
    return s.to(device, dtype).requires_grad_(), t.to(device, dtype), labels.to(device)


def _run(name, dtype, device, autocast=None):
    spec = get_head_spec(name)
    torch.manual_seed(0)  # adadistill's centres come from the global RNG
    head = create_head(name, **PARAMS.get(name, {})).to(device=device, dtype=dtype)
    s, t, labels = _inputs(name, dtype, device)
    kwargs = dict(student_logits=s, teacher_logits=t) if spec.consumes == "logits" else dict(student=s, teacher=t)
    if getattr(spec.cls, "uses_labels", False):
        kwargs["labels"] = labels
    with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
        loss = head(**kwargs)
    loss.float().backward()
    return loss.detach().double().cpu(), s.grad.double().cpu()


@pytest.mark.parametrize("name", list_heads())
@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-4), (torch.float64, 1e-10)], ids=["fp32", "fp64"])
def test_head_on_device_equals_cpu(name, dtype, rtol, device):
    cpu_loss, cpu_grad = _run(name, dtype, torch.device("cpu"))
    dev_loss, dev_grad = _run(name, dtype, device)
    assert torch.isfinite(cpu_loss) and cpu_grad.abs().max() > 0, name
    torch.testing.assert_close(dev_loss, cpu_loss, rtol=rtol, atol=rtol * 1e-2)
    scale = cpu_grad.abs().max()
    assert (dev_grad - cpu_grad).abs().max() <= rtol * 10 * scale, name


@pytest.mark.parametrize("name", list_heads())
@pytest.mark.parametrize("autocast", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_head_under_autocast_is_finite_and_close(name, autocast, device):
    ref_loss, ref_grad = _run(name, torch.float32, device)
    loss, grad = _run(name, torch.float32, device, autocast=autocast)
    assert torch.isfinite(loss) and torch.isfinite(grad).all(), f"{name} under {autocast}"
    assert abs(loss - ref_loss) <= 0.05 * abs(ref_loss) + 1e-3, (name, float(loss), float(ref_loss))
    cos = F.cosine_similarity(grad.flatten(), ref_grad.flatten(), dim=0)
    assert cos > 0.98, (name, float(cos))
