"""Workers of test_nccl_global.py, in their own module: torch.multiprocessing's spawn imports them by name.

Each rank: a Linear "backbone" in DDP (same initial weights everywhere), its local slice of a fixed global batch,
the head through the package's distribution wrapper (GlobalBatch for PWR, ClassSharded for HKD over this rank's
class shard of a classifier, logits from arcface_torch's AllGather convention), backward; it saves the loss, the
DDP-averaged backbone gradient and (HKD) its classifier shard's gradient. world_size 1 is the reference: the same
code on the concatenated batch."""
import os

import torch
import torch.nn.functional as F
from torch import distributed as dist

from insightface_pwr.distill.collectives import all_gather_no_grad, all_gather_with_grad
from insightface_pwr.distill.gather import ClassSharded, GlobalBatch
from insightface_pwr.distill.sharding import shard_range
from insightface_pwr.heads.registry import create_head

N_GLOBAL, D_IN, D, C = 64, 24, 32, 20


def _data(device):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(N_GLOBAL, D_IN, generator=g)
    t = torch.randn(N_GLOBAL, D, generator=g)
    w_student, w_teacher = torch.randn(C, D, generator=g), torch.randn(C, D, generator=g)
    backbone = torch.nn.Linear(D_IN, D)
    with torch.no_grad():
        backbone.weight.copy_(torch.randn(D, D_IN, generator=g) * 0.2)
        backbone.bias.zero_()
    return x.to(device), t.to(device), w_student.to(device), w_teacher.to(device), backbone.to(device)


def run(rank, world, port, backend, out_dir, use_cuda):
    device = torch.device("cuda", rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        results = {}
        for head_name in ("pwr", "hkd"):
            x, t, w_s, w_t, backbone = _data(device)
            ddp = torch.nn.parallel.DistributedDataParallel(backbone, device_ids=[rank] if use_cuda else None)
            n = N_GLOBAL // world
            x, t = x[rank * n:(rank + 1) * n], t[rank * n:(rank + 1) * n]
            emb = ddp(x)
            if head_name == "pwr":
                module = GlobalBatch(create_head("pwr", inversion="exp", margin="teacher_diff"))
                loss = module(student=emb, teacher=t)
                shard_grad = None
            else:
                start, count = shard_range(C, world, rank)
                shard = w_s[start:start + count].clone().requires_grad_()
                student = F.linear(F.normalize(all_gather_with_grad(emb)), F.normalize(shard)) * 16
                teacher = F.linear(F.normalize(all_gather_no_grad(t)), F.normalize(w_t[start:start + count])) * 16
                module = ClassSharded(create_head("hkd", temperature=4.0))
                loss = module(student_logits=student, teacher_logits=teacher)
            loss.backward()
            shard_grad = None if head_name == "pwr" else shard.grad.cpu()
            results[head_name] = {"loss": loss.detach().cpu(), "weight_grad": backbone.weight.grad.cpu(),
                                  "bias_grad": backbone.bias.grad.cpu(), "shard_grad": shard_grad}
        torch.save(results, os.path.join(out_dir, f"rank{rank}_of{world}.pt"))
    finally:
        dist.destroy_process_group()
