"""``run_gloo_processes(fn, world_size, *args)``: run ``fn(rank, world_size, *args)`` in forked gloo processes and
return the per-rank results (keep them to numpy arrays and Python values). A failing rank fails the test with its
traceback."""
import multiprocessing as mp
import os
import traceback

import torch
import torch._dynamo  # noqa: F401  (DDP imports it: import once here, not in every forked process)
from torch import distributed as dist

from insightface_pwr.host.launch import free_port


def _entry(fn, rank, world_size, port, queue, received, args):
    code = 0
    try:
        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
        queue.put((rank, True, fn(rank, world_size, *args)))
    except BaseException:  # noqa: BLE001  (report everything to the parent)
        queue.put((rank, False, traceback.format_exc()))
        code = 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        queue.close()
        queue.join_thread()
        # a tensor in the payload travels as a shared-memory descriptor that this process serves until the parent
        # has unpickled it: exiting first is a race (ConnectionResetError in the parent)
        received.wait(60)
        os._exit(code)


def run_gloo_processes(fn, world_size, *args, timeout=120):
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    port = free_port()
    received = ctx.Event()
    procs = [ctx.Process(target=_entry, args=(fn, r, world_size, port, queue, received, args))
             for r in range(world_size)]
    for p in procs:
        p.start()
    results = {}
    try:
        for _ in range(world_size):
            rank, ok, payload = queue.get(timeout=timeout)
            if not ok:
                raise AssertionError(f"rank {rank} of {world_size} failed:\n{payload}")
            results[rank] = payload
    finally:
        received.set()
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
    return [results[r] for r in range(world_size)]
