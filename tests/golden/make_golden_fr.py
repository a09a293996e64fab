#!/usr/bin/env python
"""Regenerate ``tests/golden/fr_golden.json``: values, student gradients and state (EKD anchors, AdaDistill
centres) computed by the PUBLISHED reference code of the face-recognition heads, for fixed float64 inputs.

- Tencent/TFace ``recognition/tasks/ekd/distillation/ekd.py`` (class ``EKD``) at commit 171ec143: ``ekd``.
- fdbtrs/AdaDistill ``utils/losses.py`` (classes ``AdaptiveAArcFace`` / ``AdaptiveACosFace``) at 0842186b:
  ``adadistill`` (the cross-entropy of the returned logits, ``CrossEntropyLoss`` as in ``train_AdaDistill.py``).

The reference files are read at run time, from a work tree or from a bare git directory at the pinned commit,
checked against their SHA-256, copied into a temporary directory and imported from there: their code is never
committed here. Get them with, e.g.::

    git clone https://github.com/Tencent/TFace /tmp/tface && git -C /tmp/tface checkout 171ec1434aca0972e111663ac646c9c1e3e44b5b
    git clone https://github.com/fdbtrs/AdaDistill /tmp/adadistill && git -C /tmp/adadistill checkout 0842186b6e2e07e13aa0e605919dca63a0d3f0fc
    python tests/golden/make_golden_fr.py --tface /tmp/tface --adadistill /tmp/adadistill
    # or straight from bare mirrors (the pinned commits are read with git show):
    python tests/golden/make_golden_fr.py --tface /work/.mirror/Tencent+TFace/repo \
        --adadistill /work/.mirror/fdbtrs+AdaDistill/repo

How the references are run (no change to their math):
- EKD: one module per sequence, called several times on new batches, so the anchors move. A sequence with other
  hyper-parameters sets the instance attributes the reference reads (``topk``, ``t``, ``momentum``, ``anchor``)
  and, for other anchors, re-creates its two zero buffers with the new length (the reference builds them from
  its default list in ``__init__``). The module is ``.double()``: its buffers are float64 from the start (the
  reference would turn them float64 at the first float64 update anyway).
- AdaDistill: the classes are built with ``adaptive_weighted_alpha=True`` (the released training script passes
  ``adaptive_alpha=``, which raises TypeError; its non-adaptive branch reads undefined names and is not run
  here). The module is ``.double()`` and its ``kernel`` (D x C) is set to the fixture's initial centres
  (transposed). ``torch.set_default_dtype(torch.float64)`` is in force while it runs: the reference builds its
  margin one-hot with ``torch.zeros`` of the default dtype, which in float32 would round m to float32(m) (a 1e-8
  change of the margin). The file imports ``torch.distributed`` (present in every torch build); nothing is stubbed.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from typing import Any, Dict, List

import numpy as np

FORMAT_VERSION = 1
TFACE = {"url": "https://github.com/Tencent/TFace", "commit": "171ec1434aca0972e111663ac646c9c1e3e44b5b",
         "file": "recognition/tasks/ekd/distillation/ekd.py",
         "sha256": "a518a9512740abcce2d0149f492e15fd643ff3ccaab309b37f972ab24d6cb4ac"}
ADADISTILL = {"url": "https://github.com/fdbtrs/AdaDistill", "commit": "0842186b6e2e07e13aa0e605919dca63a0d3f0fc",
              "file": "utils/losses.py",
              "sha256": "7cadf0dd4fec9fe69508a2507057dccffb15add666ad2898f794cdb49081b21b"}


# ----------------------------------------------------------------------------------------------------------------
# The sequences (deterministic float64 inputs; JSON keeps every float exactly).
# ----------------------------------------------------------------------------------------------------------------
def _labels(rng: np.random.Generator, n: int, kind: str) -> np.ndarray:
    if kind == "pairs":  # 0, 0, 1, 1, ... shuffled
        lab = np.arange(n) // 2
    elif kind == "quads":
        lab = np.arange(n) // 4
    elif kind == "distinct":
        lab = np.arange(n)
    elif kind == "tface":  # half drawn from many identities, half balanced (8 identities x 4, as TFace's sampler)
        lab = np.concatenate([rng.integers(1000, 100000, n // 2), 10 + np.arange(n - n // 2) // 4])
        return lab.astype(np.int64)
    else:
        raise ValueError(kind)
    return rng.permutation(lab).astype(np.int64)


def _embeddings(rng: np.random.Generator, labels: np.ndarray, ds: int, dt: int) -> tuple:
    """Teacher = class centre + noise; student = a fixed random projection of the teacher + more noise (raw
    scale, not unit norm), so the student and teacher similarities are related but not equal."""
    classes = {int(c): rng.standard_normal(dt) for c in np.unique(labels)}
    t = np.stack([classes[int(c)] for c in labels]) + 0.8 * rng.standard_normal((len(labels), dt))
    proj = rng.standard_normal((dt, ds)) / np.sqrt(dt)
    s = 1.7 * (t @ proj + 0.6 * rng.standard_normal((len(labels), ds)))
    return s, 2.3 * t


EKD_SEQS = [  # id, params (our names), N, D_s, D_t, label kind, calls, duplicate rows (dst, src)
    ("ekd_n8_topk_above", {}, 8, 16, 24, "pairs", 3, None),
    ("ekd_n32_topk10", {"topk": 10}, 32, 16, 24, "quads", 4, None),
    ("ekd_n64_tface", {}, 64, 16, 20, "tface", 3, None),
    ("ekd_n128_topk500", {"topk": 500}, 128, 8, 12, "quads", 2, None),
    ("ekd_n16_dup", {"topk": 40}, 16, 12, 20, "pairs", 3, (9, 2)),
    ("ekd_n16_fast_anchors", {"topk": 30, "t": 0.05, "anchors": [2, 3, 7, 50], "momentum": 0.5}, 16, 12, 20,
     "quads", 5, None),
    ("ekd_n8_no_positive", {"nan_on_empty": True}, 8, 16, 24, "distinct", 2, None),
]
ADA_SEQS = [  # id, params (our names), C, D, N, calls
    ("ada_arc_c10", {"margin_type": "arcface", "m": 0.45, "s": 64.0}, 10, 16, 12, 3),
    ("ada_cos_c10", {"margin_type": "cosface", "m": 0.35, "s": 64.0}, 10, 16, 12, 3),
    ("ada_arc_c40_s32", {"margin_type": "arcface", "m": 0.5, "s": 32.0}, 40, 8, 32, 3),
]


def build_sequences(seed: int = 20220) -> List[Dict[str, Any]]:
    """Every sequence with its inputs (no reference outputs)."""
    rng = np.random.default_rng(seed)
    seqs = []
    for sid, params, n, ds, dt, kind, ncalls, dup in EKD_SEQS:
        calls = []
        for _ in range(ncalls):
            lab = _labels(rng, n, kind)
            if dup is not None:
                lab[dup[0]] = lab[dup[1]]
            s, t = _embeddings(rng, lab, ds, dt)
            if dup is not None:  # a duplicated image: equal rows in both models
                s[dup[0]], t[dup[0]] = s[dup[1]], t[dup[1]]
            calls.append({"student": s.tolist(), "teacher": t.tolist(), "labels": lab.tolist()})
        seqs.append({"id": sid, "head": "ekd", "params": params, "calls": calls})
    for sid, params, c, d, n, ncalls in ADA_SEQS:
        centres = 0.01 * rng.standard_normal((c, d))
        calls = []
        for _ in range(ncalls):
            lab = rng.integers(0, c, n).astype(np.int64)  # repeated labels: the last occurrence wins
            s, t = _embeddings(rng, lab, d, d)
            calls.append({"student": s.tolist(), "teacher": t.tolist(), "labels": lab.tolist()})
        seqs.append({"id": sid, "head": "adadistill",
                     "params": dict(params, num_classes=c, embedding_size=d, adaptive_weighted_alpha=True),
                     "init_state": {"centres": centres.tolist()}, "calls": calls})
    return seqs


# ----------------------------------------------------------------------------------------------------------------
# Running the references.
# ----------------------------------------------------------------------------------------------------------------
def _read_reference(source: str, ref: Dict[str, str]) -> bytes:
    """The pinned file from a work tree (``source/file``) or a bare git directory (``git show commit:file``)."""
    if os.path.isfile(os.path.join(source, ref["file"])):
        with open(os.path.join(source, ref["file"]), "rb") as fh:
            data = fh.read()
    else:
        data = subprocess.run(["git", "--git-dir", source, "show", f"{ref['commit']}:{ref['file']}"],
                              check=True, capture_output=True).stdout
    got = hashlib.sha256(data).hexdigest()
    if got != ref["sha256"]:
        raise SystemExit(f"{ref['url']} {ref['file']}: sha256 {got}, expected {ref['sha256']} (commit "
                         f"{ref['commit']}); check out the pinned commit")
    return data


def _import_copy(data: bytes, name: str, tmp: str):
    path = os.path.join(tmp, name + ".py")
    with open(path, "wb") as fh:
        fh.write(data)
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_ekd(mod: Any, seq: Dict[str, Any]) -> None:
    import torch
    p = seq["params"]
    ref = mod.EKD().double()
    ref.topk = p.get("topk", ref.topk)
    ref.t = p.get("t", ref.t)
    ref.momentum = p.get("momentum", ref.momentum)
    if "anchors" in p:
        ref.anchor = list(p["anchors"])
        ref.s_anchor = torch.zeros(len(ref.anchor), dtype=torch.float64)
        ref.t_anchor = torch.zeros(len(ref.anchor), dtype=torch.float64)
    for call in seq["calls"]:
        s = torch.tensor(call["student"], dtype=torch.float64, requires_grad=True)
        t = torch.tensor(call["teacher"], dtype=torch.float64)
        loss = ref(s, t, torch.tensor(call["labels"], dtype=torch.int64))
        loss.backward()
        v = float(loss.detach())
        call["value"] = v if v == v else "nan"
        call["grad_student"] = s.grad.tolist()
        call["state"] = {"s_anchor": ref.s_anchor.tolist(), "t_anchor": ref.t_anchor.tolist()}


def run_adadistill(mod: Any, seq: Dict[str, Any]) -> None:
    import torch
    p = seq["params"]
    cls = mod.AdaptiveAArcFace if p["margin_type"] == "arcface" else mod.AdaptiveACosFace
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        ref = cls(in_features=p["embedding_size"], out_features=p["num_classes"], s=p["s"], m=p["m"],
                  adaptive_weighted_alpha=True).double()
        with torch.no_grad():
            ref.kernel.copy_(torch.tensor(seq["init_state"]["centres"], dtype=torch.float64).t())
        criterion = torch.nn.CrossEntropyLoss()
        for call in seq["calls"]:
            s = torch.tensor(call["student"], dtype=torch.float64, requires_grad=True)
            t = torch.tensor(call["teacher"], dtype=torch.float64)
            y = torch.tensor(call["labels"], dtype=torch.int64)
            logits = ref(s, t, y)[0]
            loss = criterion(logits, y)
            loss.backward()
            call["value"] = float(loss.detach())
            call["grad_student"] = s.grad.tolist()
            call["state"] = {"centres": ref.kernel.detach().t().tolist()}
    finally:
        torch.set_default_dtype(old)


def main(argv: List[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tface", required=True, help="Tencent/TFace work tree at the pinned commit, or a bare git dir")
    ap.add_argument("--adadistill", required=True, help="fdbtrs/AdaDistill work tree or bare git dir")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "fr_golden.json"))
    args = ap.parse_args(argv)
    import torch
    seqs = build_sequences()
    with tempfile.TemporaryDirectory() as tmp:
        ekd_mod = _import_copy(_read_reference(args.tface, TFACE), "tface_ekd_reference", tmp)
        ada_mod = _import_copy(_read_reference(args.adadistill, ADADISTILL), "adadistill_losses_reference", tmp)
        for seq in seqs:
            (run_ekd if seq["head"] == "ekd" else run_adadistill)(ekd_mod if seq["head"] == "ekd" else ada_mod, seq)
            seq["reference"] = dict(TFACE if seq["head"] == "ekd" else ADADISTILL)
    doc = {"format": FORMAT_VERSION, "dtype": "float64", "runtime": {"torch": torch.__version__,
                                                                    "numpy": np.__version__},
           "references": {"tface": TFACE, "adadistill": ADADISTILL},
           "not_covered": [
               {"head": "adadistill", "params": {"adaptive_weighted_alpha": False},
                "why": "the reference's non-adaptive branch reads self.t_alpha (never set) and returns lam "
                       "(undefined there): it cannot run"},
               {"head": "coupleface_provisional", "why": "no reference code exists (provisional definition)"}],
           "sequences": seqs}
    tmp_out = args.out + ".tmp"
    with open(tmp_out, "w") as fh:
        json.dump(doc, fh, separators=(",", ":"))
        fh.write("\n")
    os.replace(tmp_out, args.out)
    print(f"wrote {args.out}: {len(seqs)} sequences, {sum(len(s['calls']) for s in seqs)} calls", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
