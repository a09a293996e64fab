"""What the tests that train on the CPU host share: a tiny synthetic recipe (``tiny_recipe``), forked host processes
with an optional SIGKILL fault (``run_host``) and the loss log of a run (``losses``)."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from insightface_pwr.host.launch import free_port
from insightface_pwr.host.train import train_process

TINY = {"margin_list": (1.0, 0.0, 0.35), "network": "tiny_cnn", "embedding_size": 8, "rec": "synthetic",
        "num_classes": 8, "num_image": 16, "num_epoch": 1, "warmup_epoch": 0, "val_targets": [], "batch_size": 4,
        "image_size": (16, 16)}


def tiny_recipe(extra: str = "", **values: Any) -> str:
    """The source of a recipe on synthetic 16 x 16 faces and ``tiny_cnn`` (``TINY`` updated by ``values``, one
    ``config.key = value`` line each), then ``extra`` (more recipe lines, e.g. a distill section)."""
    lines = ["from easydict import EasyDict as edict", "config = edict()"]
    lines += [f"config.{k} = {v!r}" for k, v in {**TINY, **values}.items()]
    return "\n".join(lines) + "\n" + extra


def _child(rank: int, world: int, recipe: str, init: str, fault: str, overrides: Optional[dict]) -> None:
    if fault:
        os.environ["INSIGHTFACE_PWR_FAULT"] = fault
    torch.set_num_threads(1)
    try:
        train_process(rank, world, recipe, init, overrides)
    finally:
        os._exit(0)


def run_host(recipe: str, world: int = 2, fault: str = "", overrides: Optional[dict] = None,
             timeout: float = 120) -> List[Optional[int]]:
    """Train ``recipe`` in ``world`` forked host processes; their exit codes (-9: SIGKILLed by ``fault``)."""
    ctx = mp.get_context("fork")
    init = f"tcp://127.0.0.1:{free_port()}"
    procs = [ctx.Process(target=_child, args=(r, world, recipe, init, fault, overrides)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)
        if p.is_alive():
            p.kill()
            p.join()
    return [p.exitcode for p in procs]


def losses(out: Path) -> Dict[int, float]:
    """step -> loss, the LAST record of each step (a resumed run logs the replayed steps again)."""
    recs = [json.loads(line) for line in (Path(out) / "host_losses.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in recs}
