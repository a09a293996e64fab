"""``insightface-pwr megaface`` and ``insightface-pwr ijb`` on small synthetic layouts, against brute-force
references written here with explicit loops (embeddings from a linear ONNX model computed independently)."""
import json
import math

import numpy as np
import pytest
from PIL import Image

from insightface_pwr.cli import main
from insightface_pwr.eval.ijb import IJBError
from insightface_pwr.eval.megaface import MegaFaceError

S = 8


def _img(rng, base):
    return np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)


def _feat(arr, w):
    """Flip-summed raw feature of one H x W x 3 image through flatten((x - 127.5) / 127.5) @ w."""
    chw = arr.transpose(2, 0, 1).astype(np.float64)
    return ((chw.reshape(-1) - 127.5) / 127.5) @ w + ((chw[:, :, ::-1].reshape(-1) - 127.5) / 127.5) @ w


def _unit(v):
    return v / math.sqrt(sum(x * x for x in v))


def _cos(a, b):
    return float(np.dot(_unit(a), _unit(b)))


def _brute_tpr(pos, neg, f):
    """Largest TPR over all thresholds t (accept score >= t) with #accepted negatives <= floor(f * |neg|)."""
    allowed = math.floor(f * len(neg) * (1 + 1e-9))
    best = 0.0
    for t in sorted(set(pos) | set(neg)) + [math.inf]:
        if sum(1 for s in neg if s >= t) <= allowed:
            best = max(best, sum(1 for s in pos if s >= t) / len(pos))
    return best


@pytest.fixture
def model(tmp_path, linear_onnx):
    w = np.random.default_rng(5).standard_normal((3 * S * S, 6))
    return str(linear_onnx(tmp_path / "m.onnx", w, size=S)), w


COMMON = ["--input-mean", "127.5", "--input-std", "127.5", "--image-size", str(S), "--no-progress",
          "--threads", "1", "--batch-size", "4", "--json"]


def test_megaface_against_brute_force(tmp_path, model, capsys):
    path, w = model
    rng = np.random.default_rng(0)
    root = tmp_path / "mf"
    probes, distractors = [], []
    for ident in range(4):
        base = rng.uniform(0, 255, (S, S, 3))
        (root / "probe" / f"id{ident}").mkdir(parents=True)
        for k in range(3):
            arr = _img(rng, base)
            Image.fromarray(arr).save(root / "probe" / f"id{ident}" / f"{k}.png")
            probes.append((ident, arr))
    (root / "distractors" / "sub").mkdir(parents=True)
    for k in range(30):
        arr = rng.integers(0, 256, (S, S, 3), dtype=np.uint8)
        Image.fromarray(arr).save(root / "distractors" / ("sub" if k % 2 else "") / f"d{k}.png")
        distractors.append(arr)
    fprs = [0.1, 0.01, 0.003, 0.001]
    assert main(["megaface", str(root), "--model", path, "--rank", "1", "2", "10", "--fpr", *map(str, fprs)]
                + COMMON) == 0
    [r] = json.loads(capsys.readouterr().out)
    pf = [_feat(a, w) for _, a in probes]
    df = [_feat(a, w) for a in distractors]
    ranks = []
    for i, (ci, _) in enumerate(probes):
        for j, (cj, _) in enumerate(probes):
            if i != j and ci == cj:
                s = _cos(pf[i], pf[j])
                ranks.append(1 + sum(1 for d in df if _cos(pf[i], d) >= s))
    for k in (1, 2, 10):
        assert r["rank"][str(k)] == pytest.approx(sum(x <= k for x in ranks) / len(ranks))
    pos = [_cos(pf[i], pf[j]) for i in range(12) for j in range(i + 1, 12) if probes[i][0] == probes[j][0]]
    neg = [_cos(p, d) for p in pf for d in df]
    assert r["positives"] == len(pos) == 12 and r["negatives"] == len(neg) == 360
    assert set(r["tpr_at_fpr"]) == {"1e-01", "1e-02", "3e-03"}  # 0.001 * 360 < 1: not supported
    for f in fprs[:3]:
        assert r["tpr_at_fpr"][f"{f:.0e}"] == pytest.approx(_brute_tpr(pos, neg, f))
    assert 0 < r["rank"]["10"] and r["rank"]["1"] <= r["rank"]["2"] <= r["rank"]["10"]
    # the same faces as RecordIO folders (insightface-pwr build-rec) give the same figures
    from insightface_pwr.data.build import build_recordio
    flat = tmp_path / "flat" / "all"
    flat.mkdir(parents=True)
    for p in (root / "distractors").rglob("*.png"):
        (flat / f"{p.parent.name}_{p.name}").write_bytes(p.read_bytes())
    rec = tmp_path / "mf_rec"
    build_recordio(root / "probe", rec / "probe", progress=False)
    build_recordio(tmp_path / "flat", rec / "distractors", progress=False)
    assert main(["megaface", str(rec), "--model", path, "--rank", "1", "2", "10", "--fpr", *map(str, fprs)]
                + COMMON) == 0
    [r_rec] = json.loads(capsys.readouterr().out)
    assert r_rec["rank"] == r["rank"] and r_rec["tpr_at_fpr"] == r["tpr_at_fpr"]
    assert (r_rec["probes"], r_rec["distractors"], r_rec["identities"]) == (12, 30, 4)
    (root / "distractors").rename(root / "gone")
    with pytest.raises(MegaFaceError, match="distractors'?: not found"):
        from insightface_pwr.eval.megaface import evaluate_megaface
        evaluate_megaface(None, str(root))


def _write_ijb(root, name, faces, pairs, faceness=None):
    (root / "meta").mkdir(parents=True, exist_ok=True)
    (root / "meta" / f"{name}_face_tid_mid.txt").write_text("".join(f"{n} {t} {m}\n" for n, t, m in faces))
    (root / "meta" / f"{name}_template_pair_label.txt").write_text("".join(f"{a} {b} {l}\n" for a, b, l in pairs))
    if faceness is not None:
        (root / "meta" / f"{name}_name_5pts_score.txt").write_text(
            "".join(f"{n} " + " ".join(["50.0"] * 10) + f" {s}\n" for (n, _, _), s in zip(faces, faceness)))


def test_ijb_against_brute_force(tmp_path, model, capsys):
    path, w = model
    rng = np.random.default_rng(1)
    root = tmp_path / "ijb"
    (root / "loose_crop").mkdir(parents=True)
    faces, arrays = [], {}
    bases = [rng.uniform(0, 255, (S, S, 3)) for _ in range(3)]
    for t in range(8):  # template t shows subject t % 3; 1..3 faces, medias shared by some faces
        for k in range(1 + t % 3):
            n = f"{t}_{k}.jpg" if k else f"{t}.png"
            arr = _img(rng, bases[t % 3])
            Image.fromarray(arr).save(root / "loose_crop" / n, quality=100) if n.endswith("jpg") else \
                Image.fromarray(arr).save(root / "loose_crop" / n)
            arrays[n] = np.asarray(Image.open(root / "loose_crop" / n).convert("RGB"))
            faces.append((n, 100 + t, 7 * t + (k // 2)))
    pairs = [(100 + a, 100 + b, int(a % 3 == b % 3)) for a in range(8) for b in range(a + 1, 8)]
    faceness = rng.uniform(0.5, 1.0, len(faces)).round(3)
    _write_ijb(root, "ijbb", faces, pairs, faceness)
    assert main(["ijb", str(root), "--target", "IJBB", "--already-aligned", "--model", path] + COMMON) == 0
    [r] = json.loads(capsys.readouterr().out)
    # reference: template = sum over medias of the mean faceness-weighted flip-summed feature, then cosine
    templates = {}
    for (n, t, m), s in zip(faces, faceness):
        templates.setdefault(t, {}).setdefault(m, []).append(_feat(arrays[n], w) * s)
    tfeat = {t: sum(sum(fs) / len(fs) for fs in media.values()) for t, media in templates.items()}
    scores = [(_cos(tfeat[a], tfeat[b]), l) for a, b, l in pairs]
    pos, neg = [s for s, l in scores if l], [s for s, l in scores if not l]
    assert r["templates"] == 8 and r["pairs"] == len(pairs) and r["faceness"] is True
    assert set(r["tpr_at_fpr"]) == {"1e-01"}  # 18 negatives support only FPR 1e-1
    assert r["tpr_at_fpr"]["1e-01"] == pytest.approx(_brute_tpr(pos, neg, 0.1))
    auc = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg) / (len(pos) * len(neg))
    assert r["auc"] == pytest.approx(auc)
    # a pair naming a template without faces, and a missing image, are one-line errors naming the file
    _write_ijb(root, "ijbb", faces, pairs + [(100, 999, 1)])
    assert main(["ijb", str(root), "--target", "IJBB", "--model", path] + COMMON) == 1
    assert "template ids without faces: [999]" in capsys.readouterr().err
    _write_ijb(root, "ijbb", faces, pairs)
    (root / "loose_crop" / "0.png").unlink()
    with pytest.raises(IJBError, match="0.png'?: face image of ijbb_face_tid_mid.txt not found"):
        from insightface_pwr.eval.ijb import evaluate_ijb
        evaluate_ijb(None, str(root), "IJBB")


def _write_1n(root, name, gallery_halves, probes):
    for half, rows in gallery_halves.items():
        (root / "meta" / f"{name}_1N_gallery_{half}.csv").write_text(
            "TEMPLATE_ID,SUBJECT_ID,FILENAME\n" + "".join(f"{t},{s},x.jpg\n" for t, s in rows))
    (root / "meta" / f"{name}_1N_probe_mixed.csv").write_text(
        "TEMPLATE_ID,SUBJECT_ID,FILENAME\n" + "".join(f"{t},{s},x.jpg\n" for t, s in probes))


def test_ijb_1n_against_brute_force(tmp_path, model, capsys):
    path, w = model
    rng = np.random.default_rng(2)
    root = tmp_path / "ijb1n"
    (root / "loose_crop").mkdir(parents=True)
    bases = [rng.uniform(0, 255, (S, S, 3)) for _ in range(5)]
    faces, arrays = [], {}
    subject_of = {}
    # gallery templates 10..14 (one per subject 0..4, two faces, one media each), probes 20..31 (subject t % 5)
    for t in list(range(10, 15)) + list(range(20, 32)):
        subject = (t - 10) if t < 15 else (t % 5)
        subject_of[t] = subject
        for k in range(2 if t < 15 else 1 + t % 2):
            n = f"{t}_{k}.png"
            arr = _img(rng, bases[subject]) if t < 26 else _img(rng, bases[(subject + 1) % 5] * 0.5 + 60)
            Image.fromarray(arr).save(root / "loose_crop" / n)
            arrays[n] = np.asarray(Image.open(root / "loose_crop" / n).convert("RGB"))
            faces.append((n, t, 3 * t + k))
    faceness = rng.uniform(0.5, 1.0, len(faces)).round(3)
    _write_ijb(root, "ijbc", faces, [(10, 11, 0)], faceness)
    _write_1n(root, "ijbc", {"G1": [(t, subject_of[t]) for t in (10, 11, 12)], "G2": [(t, subject_of[t]) for t in (13, 14)]},
              [(t, subject_of[t]) for t in range(20, 32)])
    assert main(["ijb", str(root), "--protocol", "1:N", "--already-aligned", "--model", path] + COMMON) == 0
    [r] = json.loads(capsys.readouterr().out)
    # reference: each face's flip-summed feature normalised, times faceness; media means summed; templates normalised
    templates = {}
    for (n, t, m), s in zip(faces, faceness):
        templates.setdefault(t, {}).setdefault(m, []).append(_unit(_feat(arrays[n], w)) * s)
    tfeat = {t: _unit(sum(sum(fs) / len(fs) for fs in media.values())) for t, media in templates.items()}
    gallery, probes = list(range(10, 15)), list(range(20, 32))
    ranks, mates, nonmates = {1: 0, 5: 0, 10: 0}, [], []
    for p in probes:
        sims = {g: float(np.dot(tfeat[p], tfeat[g])) for g in gallery}
        mate = next(g for g in gallery if subject_of[g] == subject_of[p])
        ahead = sum(1 for g in gallery if g != mate and sims[g] >= sims[mate])
        for k in ranks:
            ranks[k] += ahead < k
        mates.append(sims[mate])
        nonmates += [sims[g] for g in gallery if g != mate]
    nonmates.sort(reverse=True)
    assert r["gallery_templates"] == 5 and r["probe_templates"] == 12 and r["faceness"] is True
    for k, hits in ranks.items():
        assert r["rank"][str(k)] == pytest.approx(hits / len(probes))
    assert 0 < r["rank"]["1"] < 1  # the test separates right from wrong (some probes are disguised)
    for f in (0.01, 0.1):
        th = nonmates[math.ceil(len(probes) * f) - 1]
        assert r["tpir_at_fpir"][f"{f:g}"] == pytest.approx(sum(m > th for m in mates) / len(probes))
    # a probe subject without a gallery template is a one-line error
    _write_1n(root, "ijbc", {"G1": [(10, 0)], "G2": [(13, 3)]}, [(20, 0), (21, 1)])
    assert main(["ijb", str(root), "--protocol", "1:N", "--already-aligned", "--model", path] + COMMON) == 1
    assert "subjects without a gallery template: [1]" in capsys.readouterr().err
