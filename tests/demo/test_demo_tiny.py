"""``insightface-pwr demo --size tiny`` end to end: data, recipes, host training, evaluation, reports."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from insightface_pwr.cli import main
from insightface_pwr.eval.embedding_models import TorchEmbeddingModel, embed_images
from insightface_pwr.data.verification_bin import decode_bin_images, load_bin
from insightface_pwr.demo.pipeline import prepare_real
from insightface_pwr.host.data import steps_per_epoch
from insightface_pwr.distill.recipe import load_recipe

def test_demo_tiny_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--size", "tiny", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    rows = {r["run"]: r for r in results["rows"]}
    assert list(rows) == ["teacher", "student", "student_ft", "rkd_da", "pwr_exp"]
    assert "PWR-Exp (teacher-diff)" in printed and "RKD-DA" in printed

    # every run went through the host with its recipe: the epochs and steps of _data.py, one loss per step
    for name in rows:
        cfg = load_recipe(out / "recipes" / f"{name}.py")
        assert cfg.batch_size * 2 == 32  # the tiny scale's batch over the default 2 processes
        steps = steps_per_epoch(cfg.num_image, 2, cfg.batch_size) * cfg.num_epoch
        losses = [json.loads(line) for line in (out / "runs" / name / "host_losses.jsonl").read_text().splitlines()]
        assert [r["step"] for r in losses] == list(range(1, steps + 1)) and all(np.isfinite(r["loss"]) for r in losses)
    log = (out / "runs" / "pwr_exp" / "training.log").read_text()
    assert "L = 100 * pwr(relation=euclidean, inversion=exp, margin=teacher_diff, beta=1.0)" in log
    assert "100 * rkd_da(" in (out / "runs" / "rkd_da" / "training.log").read_text()
    # the distilled students started from the baseline (student_init) and then moved away from it
    base = torch.load(out / "runs" / "student" / "model.pt", weights_only=True)
    pwr = torch.load(out / "runs" / "pwr_exp" / "model.pt", weights_only=True)
    assert base.keys() == pwr.keys() and any(not torch.equal(base[k], pwr[k]) for k in base)

    # the table's verification accuracy of the student, recomputed here by hand from its model.pt
    from insightface_pwr.models.backbones import get_model
    net = get_model("tiny_cnn", num_features=128)
    net.load_state_dict(base)
    vbin = load_bin(out / "data" / "synthetic_faces.bin")
    model = TorchEmbeddingModel(net)
    e = embed_images(model, decode_bin_images(vbin, 32), progress=False)
    e = e + embed_images(model, torch.flip(decode_bin_images(vbin, 32), dims=[3]), progress=False)
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    dist = ((e[0::2] - e[1::2]) ** 2).sum(axis=1)
    same = np.asarray(vbin.issame)
    fold_acc = []
    for f in range(10):  # 10 contiguous folds of 4 pairs; best threshold on the other 9 (grid 0.00 .. 3.99)
        test = np.zeros(len(same), bool)
        test[f * 4:(f + 1) * 4] = True
        grid = np.arange(0, 4, 0.01)
        train_acc = [((dist[~test] < t) == same[~test]).mean() for t in grid]
        t = grid[int(np.argmax(train_acc))]
        fold_acc.append(((dist[test] < t) == same[test]).mean())
    assert rows["student"]["verification"][0]["accuracy_flip"] == pytest.approx(np.mean(fold_acc), abs=1e-12)

    assert 0 <= rows["pwr_exp"]["rank1"] <= 1
    md = (out / "table.md").read_text().splitlines()
    assert md[0].startswith("| model |") and len(md) == 2 + 5
    png = (out / "table.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["check", str(out / "recipes" / "pwr_exp.py")]) == 0  # the demo recipes check like the paper's


    # --data: a real RecordIO folder is sized from its header and property file, its .bin found beside it
    info = prepare_real(out / "data" / "train", [])
    assert (info.num_classes, info.num_image, info.image_size) == (16, 16 * 8, 32)
    assert info.bins == [str(out / "data" / "synthetic_faces.bin")] and info.identification is None
    with pytest.raises(ValueError, match="no verification .bin"):
        prepare_real(_copy_rec(out, tmp_path), [])


def _copy_rec(out: Path, tmp: Path) -> Path:
    import shutil
    dst = tmp / "lonely" / "train"
    shutil.copytree(out / "data" / "identification", dst)
    return dst
