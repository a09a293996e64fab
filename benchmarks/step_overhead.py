"""Step time on the CPU host: student only vs live teacher vs cached teacher, side by side in one run.

    OMP_NUM_THREADS=2 python benchmarks/step_overhead.py [--shared ../shared] [--records 256] [--batch-size 32]
        [--steps 12] [--heads rkd_d] [--student tiny_mbf] [--threads 1]

What it does:
1. writes the first ``--records`` LFW image records (real JPEG faces, ../shared/data/lfw/train) to a temporary
   RecordIO set with the data layer's writer, and caches the real teacher (MobileFaceNet, ONNX, 128-d) over it with
   :func:`insightface_pwr.distill.teacher_cache.build_cache` (both flips; the cache rate is printed);
2. builds three identical students (host backbone ``--student``, 128-d, host partial FC, SGD, DDP over a 1-process
   gloo group) and, through ``build_hooks``, the same heads twice: with the live teacher and with
   ``distill.teacher.cache``;
3. runs the host's step (``backbone(img)``, ``partial_fc``, ``hooks.step``, backward, clip_grad_norm_(5),
   ``opt.step``) on the same batches (random records, each mirrored with probability 1/2 as the training transform
   does), the three arms interleaved in a rotating order each round so that load from other processes hits all
   three alike. The cached arm's timed step includes publishing the batch keys (what the loader does) and the
   lookup. Images are decoded before timing (decoding costs the same in every arm and would only shrink the
   ratios). The live ONNX teacher runs with ``--threads`` threads and onnxruntime's spin-waiting off (its idle
   threads would otherwise burn CPU that the next arm is charged with).

Prints per arm the median wall and CPU (process) time per step, the teacher call's median (live forward / cache
lookup), and the ratios to student-only. The verdict uses the CPU-time medians: on a shared machine wall time
swings with other processes' load, CPU seconds of this process much less. Target: cached / student-only <= 1.05.
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from easydict import EasyDict as edict
from torch import distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from insightface_pwr.integration.arcface_torch import build_hooks  # noqa: E402
from insightface_pwr.distill.batch_keys import BATCH_KEYS  # noqa: E402
from insightface_pwr.data.paths import shared_dir  # noqa: E402
from insightface_pwr.data.recordio import IRHeader, MXIndexedRecordIO, pack, unpack  # noqa: E402
from insightface_pwr.models.backbones import get_model  # noqa: E402
from insightface_pwr.host.launch import free_port  # noqa: E402
from insightface_pwr.host.partial_fc import MarginSoftmax, PartialFC  # noqa: E402
from insightface_pwr.distill.teacher_cache import build_cache, image_records, sha256_file  # noqa: E402
from insightface_pwr.distill.teachers import load_teacher  # noqa: E402


def write_subset(src: Path, dst: Path, n: int) -> int:
    """The first ``n`` image records of ``src`` as an InsightFace-layout set in ``dst``; returns num_classes."""
    reader = MXIndexedRecordIO(str(src / "train.idx"), str(src / "train.rec"), "r")
    dst.mkdir(parents=True, exist_ok=True)
    payloads, labels = [], []
    for key in range(1, n + 1):
        header, _ = unpack(reader.read_idx(key))
        label = header.label if np.isscalar(header.label) else header.label[0]
        payloads.append(reader.read_idx(key))
        labels.append(int(label))
    classes = max(labels) + 1
    w = MXIndexedRecordIO(str(dst / "train.idx"), str(dst / "train.rec"), "w")
    w.write_idx(0, pack(IRHeader(2, [n + 1, n + 1], 0, 0), b""))
    for key, rec in enumerate(payloads, 1):
        w.write_idx(key, rec)
    w.close()
    reader.close()
    return classes


class Timed:
    """Wraps the hooks' teacher callable and records each call's wall time."""

    def __init__(self, fn):
        self.fn, self.times = fn, []
        self.embedding_size = getattr(fn, "embedding_size", None)

    def __call__(self, x):
        t = time.perf_counter()
        out = self.fn(x)
        self.times.append(time.perf_counter() - t)
        return out


def quiet_onnx(teacher, path: Path, threads: int) -> None:
    """Re-open an ONNX teacher's session with ``threads`` intra-op threads and no spin-waiting: onnxruntime's idle
    threads otherwise spin after each run and burn CPU that the next arm's step would be charged with."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    teacher.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shared", default=str(shared_dir()))
    p.add_argument("--teacher", default=None, help="default: <shared>/models/mbf_y1_ms1m_arcface_128d.onnx")
    p.add_argument("--records", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=12, help="timed steps per arm (after --warmup)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--heads", default="rkd_d", help="comma-separated head names (weight 1 each)")
    p.add_argument("--student", default="tiny_mbf")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: CPU seconds per step are then robust to other load)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    shared = Path(args.shared)
    teacher_path = Path(args.teacher or shared / "models" / "mbf_y1_ms1m_arcface_128d.onnx")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    work = Path(tempfile.mkdtemp(prefix="step_overhead_"))
    num_classes = write_subset(shared / "data" / "lfw" / "train", work / "rec", args.records)

    t0 = time.perf_counter()
    teacher = load_teacher({"weights": str(teacher_path), "format": "auto"}, None, torch.device("cpu"))
    meta = build_cache(teacher, {"path": str(teacher_path), "sha256": sha256_file(teacher_path),
                                 "format": teacher.kind, "network": None},
                       work / "rec", work / "cache.npy", flip="both", batch_size=64, progress=False)
    cache_s = time.perf_counter() - t0
    print(f"cache: {meta['count']} records x 2 flips of {teacher_path.name} in {cache_s:.1f} s "
          f"({2 * meta['count'] / cache_s:.1f} img/s), {(work / 'cache.npy').stat().st_size / 1e6:.2f} MB")

    records = image_records(work / "rec")
    g = torch.Generator().manual_seed(0)
    rounds = args.warmup + args.steps
    batches = []
    for _ in range(rounds):
        idx = torch.randint(0, len(records.keys), (args.batch_size,), generator=g)
        keys = torch.tensor([records.keys[i] for i in idx.tolist()])
        flips = torch.rand(args.batch_size, generator=g) < 0.5
        img = torch.stack([records.image(k, f) for k, f in zip(keys.tolist(), flips.tolist())])
        labels = torch.tensor([records.label(k) for k in keys.tolist()])
        batches.append((img, labels, keys, flips))

    heads = [edict(name=h.strip(), weight=1.0) for h in args.heads.split(",") if h.strip()]

    def arm(mode: str):
        torch.manual_seed(0)
        backbone = torch.nn.parallel.DistributedDataParallel(get_model(args.student, num_features=128),
                                                             broadcast_buffers=False, find_unused_parameters=True)
        backbone.train()
        pfc = PartialFC(MarginSoftmax(64, 1.0, 0.5, 0.0), 128, num_classes, 1.0)
        opt = torch.optim.SGD([{"params": backbone.parameters()}, {"params": pfc.parameters()}], lr=0.01,
                              momentum=0.9, weight_decay=5e-4)
        hooks = None
        if mode != "student-only":
            t = edict(weights=str(teacher_path), input_size=(112, 112))
            if mode == "cached teacher":
                t.cache = str(work / "cache.npy")
            cfg = edict(rec=str(work / "rec"), embedding_size=128, num_classes=num_classes, output=str(work / mode),
                        frequent=10 ** 9, margin_list=(1.0, 0.5, 0.0), num_image=args.records,
                        distill=edict(teacher=t, heads=heads))
            hooks = build_hooks(cfg, backbone=backbone, partial_fc=pfc, optimizer=opt, rank=0, world_size=1,
                                local_rank=0, model_factory=get_model)
            if hasattr(hooks.teacher, "session"):
                quiet_onnx(hooks.teacher, teacher_path, args.threads)
            hooks.teacher = Timed(hooks.teacher)
        return edict(mode=mode, backbone=backbone, pfc=pfc, opt=opt, hooks=hooks, times=[], cpu=[], hook_cpu=[])

    arms = [arm("student-only"), arm("live teacher"), arm("cached teacher")]

    def step(a, batch, global_step):
        img, labels, keys, flips = batch
        t, c = time.perf_counter(), time.process_time()
        if a.mode == "cached teacher":
            BATCH_KEYS.publish(img, keys, flips)  # what the publishing loader does as it yields the batch
        emb = a.backbone(img)
        loss = a.pfc(emb, labels)
        if a.hooks is not None:
            h = time.process_time()
            loss = a.hooks.step(global_step, img, emb, labels, loss)
            a.hook_cpu.append(time.process_time() - h)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(a.backbone.parameters(), 5)
        a.opt.step()
        a.opt.zero_grad()
        loss.item()
        return time.perf_counter() - t, time.process_time() - c

    for r, batch in enumerate(batches):
        order = arms[r % 3:] + arms[:r % 3]
        for a in order:
            wall, cpu = step(a, batch, r + 1)
            if r >= args.warmup:
                a.times.append(wall)
                a.cpu.append(cpu)
            a.last = (wall, cpu)
        print(f"  round {r + 1}/{rounds}: " + "  ".join(f"{a.mode} {a.last[0]:.3f}s ({a.last[1]:.3f} cpu-s)"
                                                       for a in arms), flush=True)

    print(f"\nstep time, {args.steps} timed steps per arm (after {args.warmup} warm-up), batch {args.batch_size} "
          f"x 3 x 112 x 112, student {args.student} (128-d), heads {args.heads}, teacher {teacher_path.name}, "
          f"torch threads {args.threads}")
    print(f"{'arm':<16}{'wall median s':>14}{'wall mean s':>12}{'CPU median s':>13}{'teacher call ms':>16}"
          f"{'hooks.step CPU ms':>18}{'wall ratio':>11}{'CPU ratio':>10}")
    base_wall, base_cpu = statistics.median(arms[0].times), statistics.median(arms[0].cpu)
    for a in arms:
        med, cpu = statistics.median(a.times), statistics.median(a.cpu)
        tt = (f"{1000 * statistics.median(a.hooks.teacher.times[args.warmup:]):.2f}" if a.hooks is not None
              else "-")
        hs = f"{1000 * statistics.median(a.hook_cpu[args.warmup:]):.2f}" if a.hooks is not None else "-"
        print(f"{a.mode:<16}{med:>14.3f}{statistics.mean(a.times):>12.3f}{cpu:>13.3f}{tt:>16}{hs:>18}"
              f"{med / base_wall:>11.3f}{cpu / base_cpu:>10.3f}")
    paired_cpu = statistics.median(c / s for c, s in zip(arms[2].cpu, arms[0].cpu))
    paired_wall = statistics.median(c / s for c, s in zip(arms[2].times, arms[0].times))
    pairs = np.array([c / s for c, s in zip(arms[2].cpu, arms[0].cpu)])
    boot = np.random.default_rng(0).choice(pairs, (2000, pairs.size)).mean(1)
    print(f"paired (same round) cached / student-only, median over rounds: CPU {paired_cpu:.3f}, wall "
          f"{paired_wall:.3f}; CPU mean {pairs.mean():.3f}, 95% bootstrap interval "
          f"[{np.quantile(boot, 0.025):.3f}, {np.quantile(boot, 0.975):.3f}]")
    wall_ratio = statistics.median(arms[2].times) / base_wall
    cpu_ratio = statistics.median(arms[2].cpu) / base_cpu
    live_ratio = statistics.median(arms[1].cpu) / base_cpu
    print(f"\nlive / student-only = {live_ratio:.3f} (CPU), cached / student-only = {cpu_ratio:.3f} (CPU), "
          f"{wall_ratio:.3f} (wall); target <= 1.05 (CPU): {'MET' if cpu_ratio <= 1.05 else 'MISSED'}")
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
