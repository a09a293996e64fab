"""The fp16 teacher's speed-up is real: upstream's iresnet50 built with fp16=True (its own inner autocast), run
under autocast as the package's TorchRunner runs it, is faster than the same network in float32; and the package's
state_dict teacher with ``fp16=True`` gives the fp32 teacher's embeddings to fp16 precision."""
import statistics
import sys
import time

import pytest
import torch
import torch.nn.functional as F

from insightface_pwr.models.runners import TorchRunner

from upstream_helpers import extract_upstream


@pytest.fixture(scope="module")
def upstream_get_model(tmp_path_factory):
    tree = extract_upstream(tmp_path_factory.mktemp("upstream"), only="backbones")
    sys.path.insert(0, str(tree))
    try:
        from backbones import get_model
        yield get_model
    finally:
        sys.path.remove(str(tree))
        for m in [m for m in sys.modules if m == "backbones" or m.startswith("backbones.")]:
            del sys.modules[m]


def _calibrate(model, images):
    """BatchNorm running statistics of ``images``: a fresh iresnet50 in eval mode gives ~1e26 (inf in fp16)."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    with torch.no_grad():
        model.train()(images)
    model.eval()


def _median_ms(fn, x, iters=15):
    times = []
    for i in range(iters + 3):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn(x)
        torch.cuda.synchronize()
        if i >= 3:
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def test_fp16_teacher_is_faster_and_close(upstream_get_model, device):
    if device.type != "cuda":
        pytest.skip("a speed test: CUDA only")
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    fp32 = upstream_get_model("r50", dropout=0.0, fp16=False, num_features=512)
    fp16 = upstream_get_model("r50", dropout=0.0, fp16=True, num_features=512)
    x = torch.rand(256, 3, 112, 112, device=device) * 2 - 1
    _calibrate(fp32.to(device), x[:64])
    fp16.load_state_dict(fp32.state_dict())
    run32, run16 = TorchRunner(fp32), TorchRunner(fp16.to(device), fp16=True)
    t32, t16 = _median_ms(run32, x), _median_ms(run16, x)
    print(f"r50 teacher, batch 256: fp32 {t32:.1f} ms, fp16 {t16:.1f} ms ({t32 / t16:.2f}x)")
    assert t16 < 0.8 * t32, (t16, t32)
    e16, e32 = run16(x).float(), run32(x).float()
    assert torch.isfinite(e16).all() and e32.std(0).mean() > 0
    cos = F.cosine_similarity(e16, e32)
    assert cos.min() > 0.999, float(cos.min())
