#!/usr/bin/env python
"""Regenerate ``tests/golden/heads_golden.json``: loss values and student gradients computed by the PUBLISHED
reference implementations of the distillation heads, for fixed float64 inputs.

- github mnikitin/KD-PWR (``utils/loss/*.py``, MXNet): the default convention of every head (pwr, rkd_d, rkd_a,
  rkd_da, darkrank, hkd). Run in a SEPARATE interpreter with mxnet 1.9.1 and numpy 1.23.5 (``--mx-python``,
  default ``$INSIGHTFACE_PWR_MXNET_PYTHON`` or ``/work/mxenv/bin/python``): this script re-launches itself there
  with ``--stage mxnet`` and exchanges JSON over stdin/stdout.
- github lenscloth/RKD (``metric/loss.py``, PyTorch): ``convention="rkd"`` of rkd_d, rkd_a, rkd_da, darkrank
  (run in this interpreter, which needs torch).

The reference code is imported from the directories given on the command line; it is never copied into this
repository. Get a copy of each (either works)::

    git clone https://github.com/mnikitin/KD-PWR /tmp/kd-pwr
    git -C /tmp/kd-pwr checkout c4a95b1b2db27aaa93265b53950979bf32836725
    git clone https://github.com/lenscloth/RKD /tmp/rkd
    git -C /tmp/rkd checkout 0a6c3c0c190722d428322bf71703c0ae86c25242
    # or, from a bare mirror (no network):
    mkdir -p /tmp/kd-pwr /tmp/rkd
    git -C /work/.mirror/mnikitin+KD-PWR/repo archive c4a95b1b2db27aaa93265b53950979bf32836725 | tar -x -C /tmp/kd-pwr
    git -C /work/.mirror/lenscloth+RKD/repo archive 0a6c3c0c190722d428322bf71703c0ae86c25242 | tar -x -C /tmp/rkd

then::

    python tests/golden/make_golden.py --kd-pwr /tmp/kd-pwr --rkd /tmp/rkd \
        --kd-pwr-commit c4a95b1b2db27aaa93265b53950979bf32836725 \
        --rkd-commit 0a6c3c0c190722d428322bf71703c0ae86c25242 --out tests/golden/heads_golden.json

(``--*-commit`` may be left out for a ``git clone``: the commit is then read with ``git rev-parse HEAD``.)

Reduction: a KD-PWR ``gluon.loss.Loss`` returns what its ``hybrid_forward`` returns (a scalar for PWR and
DarkRank, one value per anchor row for RKD-D / RKD-A / HKD); the training loop (KD-PWR ``utils/train.py``) takes
``weight * L(student, teacher)``, then ``loss_term.mean()`` of each term, sums the terms with ``add_n`` and calls
``backward``. So the recorded value is ``L(S, T).mean()`` (weight 1) and the gradient is that of this mean with
respect to the student input; rkd_da is ``L_rkd_d(S, T).mean() + 2 * L_rkd_a(S, T).mean()`` in one autograd
record (the training loop with weights 1 and 2). The RKD losses return scalars (``run_distill.py`` adds
``dist_ratio * dist + angle_ratio * angle``; rkd_da uses ratios 1 and 2).

This module imports only the standard library and numpy at the top level, so the MXNet stage can run it.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from typing import Any, Dict, List, Tuple

import numpy as np

FORMAT_VERSION = 1
KD_PWR_FILES = ("utils/loss/pwr.py", "utils/loss/rkd.py", "utils/loss/darkrank.py", "utils/loss/hkd.py",
                "utils/train.py")
RKD_FILES = ("metric/loss.py", "metric/utils.py")
KD_PWR_URL = "https://github.com/mnikitin/KD-PWR"
RKD_URL = "https://github.com/lenscloth/RKD"
# KD-PWR metric names -> our relation names.
RELATION = {"l2": "euclidean", "cs": "cosine"}


# ----------------------------------------------------------------------------------------------------------------
# Inputs (deterministic, float64).
# ----------------------------------------------------------------------------------------------------------------
def build_inputs(seed: int = 20201) -> Dict[str, Dict[str, List[List[float]]]]:
    """The input batches, as nested lists of Python floats (exactly representable in JSON).

    - ``rand8``: N=8 i.i.d. normal rows (std 0.3), D_s=16, D_t=24;
    - ``lowrank12``: N=12 rows of rank-3 structure plus small noise (distances spread over [0, 2]: exercises the
      linear branch of the Huber loss and large PWR inversions), D_s=16, D_t=24;
    - ``ties8``: N=8, like rand8 but teacher rows 4 and 6 copy rows 1 and 2 exactly (tied teacher relations;
      used for pwr / rkd_* only, never for darkrank, whose order would be ambiguous);
    - ``feat8``: N=8, D_s=D_t=16, student = teacher + noise (for ``feature``);
    - ``logits8`` / ``logits12``: N x C=20 logits (scale 3 and 10: soft and peaky softmaxes) for ``hkd``.
    """
    rng = np.random.default_rng(seed)
    out: Dict[str, Dict[str, np.ndarray]] = {}
    out["rand8"] = {"student": 0.3 * rng.standard_normal((8, 16)), "teacher": 0.3 * rng.standard_normal((8, 24))}
    zs, zt = rng.standard_normal((12, 3)), rng.standard_normal((12, 3))
    out["lowrank12"] = {
        "student": 0.3 * (zs @ rng.standard_normal((3, 16))) / np.sqrt(3) + 0.02 * rng.standard_normal((12, 16)),
        "teacher": 0.3 * (zt @ rng.standard_normal((3, 24))) / np.sqrt(3) + 0.02 * rng.standard_normal((12, 24)),
    }
    t = 0.3 * rng.standard_normal((8, 24))
    t[4] = t[1]
    t[6] = t[2]
    out["ties8"] = {"student": 0.3 * rng.standard_normal((8, 16)), "teacher": t}
    ft = 0.3 * rng.standard_normal((8, 16))
    out["feat8"] = {"student": ft + 0.1 * rng.standard_normal((8, 16)), "teacher": ft}
    out["logits8"] = {"student": 3.0 * rng.standard_normal((8, 20)), "teacher": 3.0 * rng.standard_normal((8, 20))}
    out["logits12"] = {"student": 10.0 * rng.standard_normal((12, 20)),
                       "teacher": 10.0 * rng.standard_normal((12, 20))}
    return {k: {kk: vv.tolist() for kk, vv in v.items()} for k, v in out.items()}


# ----------------------------------------------------------------------------------------------------------------
# Cases: our head name and parameters, the reference call that produces them.
# ----------------------------------------------------------------------------------------------------------------
def _case(head: str, params: Dict[str, Any], inputs: str, ref: Dict[str, Any], **extra: Any) -> Dict[str, Any]:
    pid = ",".join(f"{k}={v}" for k, v in params.items())
    return dict(id=f"{head}[{pid}]@{inputs}", head=head, params=params, inputs=inputs, ref=ref, **extra)


def build_cases() -> List[Dict[str, Any]]:
    """Every case: ``head``/``params`` as OUR registry names them, ``ref`` the reference call (stage, class,
    constructor keyword arguments)."""
    cases: List[Dict[str, Any]] = []
    pwr_batches = ("rand8", "lowrank12", "ties8")
    margins = (("const", 0.0), ("const", 0.1), ("teacher_std", None), ("teacher_diff", None))
    for metric in ("l2", "cs"):
        rel = RELATION[metric]
        for mtype, mval in margins:
            our_margin: Any = mval if mtype == "const" else mtype
            ref_m = dict(diff_margin_type=mtype, diff_margin=mval if mval is not None else 0.0)
            variants = [
                ({"inversion": "diff"}, dict(loss_type="diff_power", diff_power=1.0)),
                ({"inversion": "power", "p": 1.0}, dict(loss_type="diff_power", diff_power=1.0)),
                ({"inversion": "power", "p": 2.0}, dict(loss_type="diff_power", diff_power=2.0)),
                ({"inversion": "exp", "beta": 1.0}, dict(loss_type="diff_exp", diff_exp_beta=1.0)),
                ({"inversion": "exp", "beta": 2.0}, dict(loss_type="diff_exp", diff_exp_beta=2.0)),
            ]
            for ours, ref_kw in variants:
                params = {"relation": rel, **ours, "margin": our_margin}
                for b in pwr_batches:
                    cases.append(_case("pwr", params, b, dict(
                        stage="mxnet", file="utils/loss/pwr.py", cls="PairwiseRankingLoss",
                        kwargs=dict(dist_func=metric, **ref_kw, **ref_m))))
        for beta in (1.0, 2.0):
            for b in pwr_batches:
                cases.append(_case("pwr", {"relation": rel, "inversion": "ranknet", "beta": beta}, b, dict(
                    stage="mxnet", file="utils/loss/pwr.py", cls="PairwiseRankingLoss",
                    kwargs=dict(dist_func=metric, loss_type="ranknet", ranknet_beta=beta))))
    # RKD, default convention (KD-PWR)
    rel_batches = ("rand8", "lowrank12", "ties8")
    for metric in ("l2", "cs"):
        for mean_norm in (False, True):
            for b in rel_batches:
                cases.append(_case("rkd_d", {"relation": RELATION[metric], "mean_normalize": mean_norm}, b, dict(
                    stage="mxnet", file="utils/loss/rkd.py", cls="RelativeDistanceLoss",
                    kwargs=dict(metric_func=metric, mean_normalize=mean_norm, huber_delta=1.0))))
        cases.append(_case("rkd_d", {"relation": RELATION[metric], "mean_normalize": False, "huber_delta": 0.5},
                           "lowrank12", dict(stage="mxnet", file="utils/loss/rkd.py", cls="RelativeDistanceLoss",
                                             kwargs=dict(metric_func=metric, mean_normalize=False,
                                                         huber_delta=0.5))))
    for b in rel_batches:
        cases.append(_case("rkd_a", {}, b, dict(stage="mxnet", file="utils/loss/rkd.py", cls="RelativeAngleLoss",
                                                kwargs=dict(huber_delta=1.0))))
    cases.append(_case("rkd_a", {"huber_delta": 0.5}, "lowrank12", dict(
        stage="mxnet", file="utils/loss/rkd.py", cls="RelativeAngleLoss", kwargs=dict(huber_delta=0.5))))
    for metric in ("l2", "cs"):
        for b in rel_batches:
            cases.append(_case("rkd_da", {"relation": RELATION[metric]}, b, dict(
                stage="mxnet", file="utils/loss/rkd.py", cls="RelativeDistanceLoss + 2 * RelativeAngleLoss",
                kwargs=dict(metric_func=metric, mean_normalize=False, huber_delta=1.0))))
    # DarkRank hard (the soft path of the reference does not run: see ``not_covered`` in the JSON)
    for metric in ("l2", "cs"):
        for b in ("rand8", "lowrank12"):
            cases.append(_case("darkrank", {"relation": RELATION[metric]}, b, dict(
                stage="mxnet", file="utils/loss/darkrank.py", cls="DarkRankLoss",
                kwargs=dict(metric_func=metric, loss_type="hard", alpha=3.0, beta=3.0, list_length=4))))
        cases.append(_case("darkrank", {"relation": RELATION[metric], "alpha": 2.0, "beta": 1.0,
                                        "list_length": 6}, "lowrank12", dict(
            stage="mxnet", file="utils/loss/darkrank.py", cls="DarkRankLoss",
            kwargs=dict(metric_func=metric, loss_type="hard", alpha=2.0, beta=1.0, list_length=6))))
    # Hinton KD (the reference does not multiply by T^2; t2_scale=True cases are the reference times T^2)
    for temp in (4.0, 1.0):
        for b in ("logits8", "logits12"):
            ref = dict(stage="mxnet", file="utils/loss/hkd.py", cls="SoftLogitsLoss", kwargs=dict(temperature=temp))
            cases.append(_case("hkd", {"temperature": temp}, b, ref))
            cases.append(_case("hkd", {"temperature": temp, "t2_scale": True}, b, dict(ref),
                               derived=f"reference value and gradient times T^2 = {temp * temp}"))
    # feature: no reference implementation exists in either repository; an independent MXNet evaluation of the
    # HEADS.md formula (MXNet L2Normalization, eps 1e-10) serves as the golden value.
    for kind in ("cosine", "l2"):
        cases.append(_case("feature", {"kind": kind}, "feat8", dict(
            stage="mxnet", file=None, cls="HEADS.md formula in MXNet ops", kwargs=dict(kind=kind))))
    # convention="rkd" (lenscloth/RKD, PyTorch, raw embeddings)
    for b in rel_batches:
        cases.append(_case("rkd_d", {"convention": "rkd"}, b, dict(
            stage="torch", file="metric/loss.py", cls="RkdDistance", kwargs={})))
        cases.append(_case("rkd_a", {"convention": "rkd"}, b, dict(
            stage="torch", file="metric/loss.py", cls="RKdAngle", kwargs={})))
        cases.append(_case("rkd_da", {"convention": "rkd"}, b, dict(
            stage="torch", file="metric/loss.py", cls="RkdDistance + 2 * RKdAngle", kwargs={})))
    for b in ("rand8", "lowrank12"):
        cases.append(_case("darkrank", {"convention": "rkd"}, b, dict(
            stage="torch", file="metric/loss.py", cls="HardDarkRank",
            kwargs=dict(alpha=3.0, beta=3.0, permute_len=3))))
    cases.append(_case("darkrank", {"convention": "rkd", "alpha": 2.0, "beta": 3.0, "list_length": 5},
                       "lowrank12", dict(stage="torch", file="metric/loss.py", cls="HardDarkRank",
                                         kwargs=dict(alpha=2.0, beta=3.0, permute_len=4))))
    ids = [c["id"] for c in cases]
    assert len(ids) == len(set(ids)), "duplicate case ids"
    return cases


# ----------------------------------------------------------------------------------------------------------------
# MXNet stage (runs under the mxnet interpreter; imports only KD-PWR's utils/loss modules).
# ----------------------------------------------------------------------------------------------------------------
def _mx_precision_check(mx: Any) -> Dict[str, float]:
    """Show that the MXNet ops used compute in float64 (float32 would give errors around 1e-8)."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((9, 13))
    xa = mx.nd.array(x, dtype="float64")
    checks = {}
    ref = x / np.sqrt((x * x).sum(1, keepdims=True) + 1e-10)
    l2n = mx.nd.L2Normalization(xa, mode="instance").asnumpy()
    checks["L2Normalization(instance)"] = float(np.abs(l2n - ref).max())
    checks["linalg.syrk"] = float(np.abs(mx.nd.linalg.syrk(xa, transpose=False).asnumpy() - x @ x.T).max())
    z = x / 4.0
    lsm = z - z.max(1, keepdims=True)
    lsm = lsm - np.log(np.exp(lsm).sum(1, keepdims=True))
    checks["log_softmax(T=4)"] = float(np.abs(mx.nd.log_softmax(xa, -1, temperature=4.0).asnumpy() - lsm).max())
    checks["softmax(T=4)"] = float(np.abs(mx.nd.softmax(xa, temperature=4.0).asnumpy() - np.exp(lsm)).max())
    for k, v in checks.items():
        if not v < 1e-13:
            raise RuntimeError(f"MXNet op {k} deviates from float64 numpy by {v:.3g}: not computing in float64")
    return checks


def _mx_feature(F: Any, s: Any, t: Any, kind: str) -> Any:
    sn, tn = F.L2Normalization(s, mode="instance"), F.L2Normalization(t, mode="instance")
    if kind == "cosine":
        return (1.0 - F.sum(sn * tn, axis=1)).mean()
    return F.sum(F.square(sn - tn), axis=1).mean()


def run_mxnet_stage(kd_pwr_dir: str) -> None:
    """Read {"inputs", "cases"} from stdin, write {"results", "precision_check", "not_covered", "versions"}."""
    req = json.load(sys.stdin)
    sys.path.insert(0, os.path.abspath(kd_pwr_dir))
    import mxnet as mx
    from mxnet import autograd
    from utils.loss.darkrank import DarkRankLoss
    from utils.loss.hkd import SoftLogitsLoss
    from utils.loss.pwr import PairwiseRankingLoss
    from utils.loss.rkd import RelativeAngleLoss, RelativeDistanceLoss

    classes = dict(PairwiseRankingLoss=PairwiseRankingLoss, RelativeDistanceLoss=RelativeDistanceLoss,
                   RelativeAngleLoss=RelativeAngleLoss, DarkRankLoss=DarkRankLoss, SoftLogitsLoss=SoftLogitsLoss)
    results = {}
    for case in req["cases"]:
        ref = case["ref"]
        inp = req["inputs"][case["inputs"]]
        s = mx.nd.array(np.array(inp["student"], dtype=np.float64), dtype="float64")
        t = mx.nd.array(np.array(inp["teacher"], dtype=np.float64), dtype="float64")
        s.attach_grad()
        kw = dict(ref["kwargs"])
        with autograd.record():
            if ref["cls"] == "RelativeDistanceLoss + 2 * RelativeAngleLoss":
                ld = RelativeDistanceLoss(**kw)
                la = RelativeAngleLoss(huber_delta=kw["huber_delta"])
                loss = ld(s, t).mean() + 2.0 * la(s, t).mean()
            elif ref["cls"] == "HEADS.md formula in MXNet ops":
                loss = _mx_feature(mx.nd, s, t, kw["kind"])
            else:
                loss = classes[ref["cls"]](**kw)(s, t).mean()  # what utils/train.py does with each term
        loss.backward()
        value = loss.asnumpy().reshape(-1)
        grad = s.grad.asnumpy()
        if value.dtype != np.float64 or grad.dtype != np.float64:
            raise RuntimeError(f"{case['id']}: MXNet returned {value.dtype}/{grad.dtype}, expected float64")
        results[case["id"]] = {"value": float(value[0]), "grad_student": grad.tolist()}

    # The soft (ListNet) path of DarkRankLoss: does it run at all?
    not_covered = []
    inp = req["inputs"]["rand8"]
    s = mx.nd.array(np.array(inp["student"]), dtype="float64")
    t = mx.nd.array(np.array(inp["teacher"]), dtype="float64")
    try:
        with autograd.record():
            out = DarkRankLoss(metric_func="l2", loss_type="soft")(s, t).mean()
        soft_status = f"ran, value {float(out.asnumpy().reshape(-1)[0])!r} (not used: formula not the spec's)"
    except Exception as exc:  # the reference is buggy: record why
        first = str(exc).splitlines()[0] if str(exc) else ""
        soft_status = (f"DarkRankLoss(loss_type='soft') raises {type(exc).__name__}: {first[:120]} ... "
                       f"(utils/loss/darkrank.py, _compute_loss_soft: F.exp(perm_teacher_logprob) is given a "
                       f"Python list of NDArrays)")
    not_covered.append({"head": "darkrank", "params": {"soft": True}, "why": soft_status})
    json.dump({"results": results, "precision_check": _mx_precision_check(mx), "not_covered": not_covered,
               "versions": {"mxnet": mx.__version__, "numpy": np.__version__}}, sys.stdout)


# ----------------------------------------------------------------------------------------------------------------
# Torch stage (lenscloth/RKD, this interpreter).
# ----------------------------------------------------------------------------------------------------------------
def run_torch_stage(rkd_dir: str, inputs: Dict[str, Any], cases: List[Dict[str, Any]]) -> Tuple[Dict, Dict]:
    import warnings

    import torch

    sys.path.insert(0, os.path.abspath(rkd_dir))
    from metric.loss import HardDarkRank, RKdAngle, RkdDistance

    results = {}
    for case in cases:
        ref = case["ref"]
        inp = inputs[case["inputs"]]
        s = torch.tensor(inp["student"], dtype=torch.float64, requires_grad=True)
        t = torch.tensor(inp["teacher"], dtype=torch.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # reduction='elementwise_mean' is deprecated (means 'mean')
            if ref["cls"] == "RkdDistance":
                loss = RkdDistance()(s, t)
            elif ref["cls"] == "RKdAngle":
                loss = RKdAngle()(s, t)
            elif ref["cls"] == "RkdDistance + 2 * RKdAngle":
                loss = RkdDistance()(s, t) + 2.0 * RKdAngle()(s, t)
            elif ref["cls"] == "HardDarkRank":
                loss = HardDarkRank(**ref["kwargs"])(s, t)
            else:
                raise ValueError(f"unknown torch reference {ref['cls']!r}")
        loss.backward()
        results[case["id"]] = {"value": float(loss.detach()), "grad_student": s.grad.tolist()}
    return results, {"torch": torch.__version__}


# ----------------------------------------------------------------------------------------------------------------
def _commit(directory: str, given: str | None, name: str) -> str:
    if given:
        return given
    try:
        return subprocess.run(["git", "-C", directory, "rev-parse", "HEAD"], check=True, capture_output=True,
                              text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        raise SystemExit(f"{directory} is not a git checkout: pass --{name}-commit with the commit it was "
                         f"extracted from")


def _sha256(directory: str, files: Tuple[str, ...]) -> Dict[str, str]:
    out = {}
    for f in files:
        path = os.path.join(directory, f)
        if not os.path.isfile(path):
            raise SystemExit(f"{path} not found: is {directory} a copy of the reference repository?")
        with open(path, "rb") as fh:
            out[f] = hashlib.sha256(fh.read()).hexdigest()
    return out


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def main(argv: List[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kd-pwr", required=True, help="copy of github mnikitin/KD-PWR")
    ap.add_argument("--rkd", help="copy of github lenscloth/RKD (not needed with --stage mxnet)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "heads_golden.json"))
    ap.add_argument("--kd-pwr-commit", help="commit of the KD-PWR copy (default: git rev-parse HEAD)")
    ap.add_argument("--rkd-commit", help="commit of the RKD copy (default: git rev-parse HEAD)")
    ap.add_argument("--mx-python",
                    default=os.environ.get("INSIGHTFACE_PWR_MXNET_PYTHON", "/work/mxenv/bin/python"),
                    help="interpreter with mxnet 1.9.1 and numpy 1.23.5")
    ap.add_argument("--stage", choices=("all", "mxnet"), default="all", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.stage == "mxnet":
        run_mxnet_stage(args.kd_pwr)
        return 0
    if not args.rkd:
        ap.error("--rkd is required")
    kd_commit = _commit(args.kd_pwr, args.kd_pwr_commit, "kd-pwr")
    rkd_commit = _commit(args.rkd, args.rkd_commit, "rkd")
    kd_sha, rkd_sha = _sha256(args.kd_pwr, KD_PWR_FILES), _sha256(args.rkd, RKD_FILES)

    inputs = build_inputs()
    cases = build_cases()
    mx_cases = [c for c in cases if c["ref"]["stage"] == "mxnet"]
    th_cases = [c for c in cases if c["ref"]["stage"] == "torch"]
    env = dict(os.environ, OMP_NUM_THREADS="1", MXNET_ENGINE_TYPE="NaiveEngine")
    proc = subprocess.run([args.mx_python, os.path.abspath(__file__), "--stage", "mxnet", "--kd-pwr", args.kd_pwr],
                          input=json.dumps({"inputs": inputs, "cases": mx_cases}), capture_output=True, text=True,
                          env=env)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"the MXNet stage failed (exit {proc.returncode}) under {args.mx_python}")
    mx_out = json.loads(proc.stdout)
    th_results, th_versions = run_torch_stage(args.rkd, inputs, th_cases)
    results = {**mx_out["results"], **th_results}

    out_cases = []
    for c in cases:
        r = results[c["id"]]
        scale = 1.0
        if "derived" in c:  # hkd t2_scale=True: the reference times T^2
            scale = c["params"]["temperature"] ** 2
        ref = c["ref"]
        repo = "kd-pwr" if ref["stage"] == "mxnet" else "rkd"
        entry = {"id": c["id"], "head": c["head"], "params": c["params"], "inputs": c["inputs"],
                 "reference": {"repo": repo, "file": ref["file"], "call": ref["cls"], "kwargs": ref["kwargs"]},
                 "value": r["value"] * scale,
                 "grad_student": [[g * scale for g in row] for row in r["grad_student"]]}
        if ref["file"] is None:
            entry["reference"]["repo"] = None
            entry["reference"]["note"] = ("no reference implementation of this head exists in KD-PWR or RKD: an "
                                          "independent evaluation of the HEADS.md formula with MXNet ops")
        if "derived" in c:
            entry["derived"] = c["derived"]
        out_cases.append(entry)

    doc = {
        "format": FORMAT_VERSION,
        "generated_by": "tests/golden/make_golden.py",
        "dtype": "float64",
        "references": {
            "kd-pwr": {"url": KD_PWR_URL, "commit": kd_commit, "sha256": kd_sha,
                       "runtime": {k: v for k, v in mx_out["versions"].items()}},
            "rkd": {"url": RKD_URL, "commit": rkd_commit, "sha256": rkd_sha, "runtime": th_versions},
        },
        "reduction": ("value = L(S, T).mean() as KD-PWR utils/train.py reduces every loss term (weight 1); "
                      "grad_student = d value / d S. RKD losses return scalars. rkd_da = rkd_d + 2 * rkd_a "
                      "in one autograd graph."),
        "precision_check": {"mxnet_vs_numpy_float64_max_abs": mx_out["precision_check"]},
        "not_covered": mx_out["not_covered"],
        "inputs": inputs,
        "cases": out_cases,
    }
    text = json.dumps(doc, indent=None, separators=(",", ":"))
    _write_atomic(args.out, text + "\n")
    print(f"wrote {args.out}: {len(out_cases)} cases, {len(text) / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
