"""gpu_check.sh, step 3: timings, written as a markdown table (one process, one device).

    python benchmarks/gpu/timing.py --tree PATCHED_ARCFACE --teacher WORK/teacher/model.pt --out TABLE.md
        [--cpu-dry-run]

1. PWR (inversion exp, margin teacher_diff, in the ``gather="global"`` wrapper; one rank: the head on the whole
   batch) forward + backward on N x 512 float32 embeddings, N = 1024 and 4096 (dry run: 64, 128);
2. one training step, three arms interleaved round by round: student only (upstream's r18 with fp16=True under
   its own autocast, upstream's PartialFC_V2 with ArcFace, GradScaler, clip_grad_norm_(5), SGD), + a cached
   teacher (the batch's teacher embeddings looked up in a pinned host table and copied to the device without
   blocking, as the data layer carries them; + PWR), + the live teacher (upstream's r50, fp16, through
   :func:`insightface_pwr.distill.teachers.load_teacher` as training builds it; + PWR). Batch 128 (dry run: 6).
Medians of CUDA-synchronised wall times. Targets printed beside the figures (GPU only).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from insightface_pwr.distill.gather import GlobalBatch  # noqa: E402
from insightface_pwr.distill.teachers import load_teacher  # noqa: E402
from insightface_pwr.heads.registry import create_head  # noqa: E402

TARGETS = {"pwr1024": 5.0, "cached": 1.05, "live": 1.5}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_pwr(n: int, device: torch.device, iters: int) -> float:
    """Median ms of PWR forward + backward on n x 512 embeddings."""
    head = GlobalBatch(create_head("pwr", inversion="exp", margin="teacher_diff")).to(device)
    g = torch.Generator(device=device).manual_seed(0)
    s = torch.randn(n, 512, device=device, generator=g).requires_grad_()
    t = torch.randn(n, 512, device=device, generator=g)
    times = []
    for i in range(iters + 3):
        _sync(device)
        start = time.perf_counter()
        head(student=s, teacher=t).backward()
        _sync(device)
        if i >= 3:
            times.append((time.perf_counter() - start) * 1e3)
        s.grad = None
    return statistics.median(times)


def build_step(tree: Path, teacher_path: Path, device: torch.device, fp16: bool, batch: int, classes: int):
    sys.path.insert(0, str(tree))
    from backbones import get_model  # upstream's
    from losses import CombinedMarginLoss
    from partial_fc_v2 import PartialFC_V2
    torch.manual_seed(0)
    backbone = get_model("r18", dropout=0.0, fp16=fp16, num_features=512).to(device).train()
    pfc = PartialFC_V2(CombinedMarginLoss(64, 1.0, 0.5, 0.0), 512, classes, 1.0, fp16).to(device).train()
    opt = torch.optim.SGD([{"params": backbone.parameters()}, {"params": pfc.parameters()}], lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler(device.type, enabled=fp16)
    teacher = load_teacher({"weights": str(teacher_path), "network": "r50", "fp16": fp16, "format": "auto"},
                           get_model, device)
    pwr = create_head("pwr", inversion="exp", margin="teacher_diff").to(device)
    table = torch.randn(4096, 512).pin_memory() if device.type == "cuda" else torch.randn(4096, 512)
    img = torch.randn(batch, 3, 112, 112, device=device)
    labels = torch.randint(0, classes, (batch,), device=device)
    keys = torch.randint(0, 4096, (batch,))

    def step(arm: str) -> None:
        emb = backbone(img)
        loss = pfc(emb, labels.clone())
        if arm == "cached":
            loss = loss + 100.0 * pwr(student=emb, teacher=table[keys].to(device, non_blocking=True))
        elif arm == "live":
            loss = loss + 100.0 * pwr(student=emb, teacher=teacher(img))
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(backbone.parameters(), 5)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
    return step


def time_steps(step, device: torch.device, warmup: int, rounds: int) -> dict:
    arms = ["student", "cached", "live"]
    for _ in range(warmup):
        for arm in arms:
            step(arm)
    times = {a: [] for a in arms}
    for r in range(rounds):
        for arm in arms[r % 3:] + arms[:r % 3]:  # rotating order: drift hits every arm alike
            _sync(device)
            start = time.perf_counter()
            step(arm)
            _sync(device)
            times[arm].append((time.perf_counter() - start) * 1e3)
    return {a: statistics.median(v) for a, v in times.items()}


def table(pwr: dict, steps: dict, device: str, dry: bool) -> str:
    def verdict(value: float, target: float) -> str:
        return "(dry run)" if dry else ("ok" if value <= target else "MISSED")
    rows = ["| measure | figure | target | verdict |", "|---|---|---|---|"]
    for n, ms in pwr.items():
        target = TARGETS["pwr1024"] if n == min(pwr) else None
        rows.append(f"| PWR exp/teacher_diff/global fwd+bwd, N = {n} | {ms:.2f} ms | "
                    f"{'<= %.0f ms' % target if target else '-'} | {verdict(ms, target) if target else '-'} |")
    base = steps["student"]
    rows.append(f"| student-only step (r18, partial FC, SGD) | {base:.2f} ms | - | - |")
    for arm, what in (("cached", "cached-teacher step"), ("live", "live fp16 r50 teacher step")):
        ratio = steps[arm] / base
        rows.append(f"| {what} | {steps[arm]:.2f} ms = {ratio:.3f}x | <= {TARGETS[arm]}x | "
                    f"{verdict(ratio, TARGETS[arm])} |")
    return f"Device: {device}\n\n" + "\n".join(rows) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tree", type=Path, required=True)
    p.add_argument("--teacher", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--cpu-dry-run", action="store_true")
    args = p.parse_args(argv)
    dry = args.cpu_dry_run
    if not dry and not torch.cuda.is_available():
        p.error("no CUDA device; use --cpu-dry-run")
    device = torch.device("cpu") if dry else torch.device("cuda", 0)
    if dry:  # upstream's partial FC calls .cuda(): the one CPU stand-in of the dry run
        torch.Tensor.cuda = lambda self, *a, **k: self
    else:
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    dist.init_process_group("gloo" if dry else "nccl", rank=0, world_size=1)  # upstream's partial FC needs one
    try:
        pwr = {n: time_pwr(n, device, 3 if dry else 20) for n in ((64, 128) if dry else (1024, 4096))}
        step = build_step(args.tree, args.teacher, device, not dry, 6 if dry else 128, 16 if dry else 10000)
        steps = time_steps(step, device, 1 if dry else 5, 3 if dry else 30)
    finally:
        dist.destroy_process_group()
    name = "CPU (dry run)" if dry else torch.cuda.get_device_name(device)
    text = table(pwr, steps, name, dry)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
