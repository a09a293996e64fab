"""The per-iteration lr schedules against hand-written formulas (arcface_torch's PolynomialLRWarmup, step)."""
import torch

from insightface_pwr.distill.lr_schedules import PolynomialWarmupLR, StepEpochLR


def _opt():
    return torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))]},
                            {"params": [torch.nn.Parameter(torch.zeros(1))]}], lr=0.1, momentum=0.9)


def _upstream_chained(k_max, w, t, power, base=0.1):
    """Upstream's recursive get_lr (lr_scheduler.py): lr_k = lr_{k-1} * decay factor after warmup."""
    lrs, lr = [base], base
    for k in range(1, k_max + 1):
        if k > t:
            pass
        elif k <= w:
            lr = base * k / w
        else:
            lr = lr * ((1.0 - (k - w) / (t - w)) / (1.0 - (k - 1 - w) / (t - w))) ** power
        lrs.append(lr)
    return lrs


def test_polynomial_warmup_matches_upstream_recursion():
    for w, t, power in [(5, 20, 1.0), (0, 10, 2.0), (3, 7, 0.5)]:
        opt = _opt()
        sched = PolynomialWarmupLR(opt, w, t, power)
        got = [opt.param_groups[0]["lr"]]
        for _ in range(t + 3):
            opt.step()
            sched.step()
            got.append(opt.param_groups[1]["lr"])
        ref = _upstream_chained(t + 3, w, t, power)
        assert max(abs(a - b) for a, b in zip(got, ref)) < 1e-12, (w, t, power)


def test_step_epoch_lr_and_state_dict():
    opt = _opt()
    sched = StepEpochLR(opt, steps_per_epoch=3, every_epochs=2, factor=0.1)
    seen = []
    for k in range(13):
        seen.append(opt.param_groups[0]["lr"])  # the lr used by step k + 1
        opt.step()
        sched.step()
    # epochs 0-1 (steps 1..6): 0.1; epochs 2-3: 0.01; epoch 4: 0.001
    assert seen == [0.1] * 6 + [0.1 * 0.1] * 6 + [0.1 * 0.1 * 0.1]
    opt2 = _opt()
    sched2 = StepEpochLR(opt2, steps_per_epoch=3, every_epochs=2, factor=0.1)
    sched2.load_state_dict(sched.state_dict())
    assert sched2.last_epoch == 13
