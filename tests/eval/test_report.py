"""The report's aggregation: seeds grouped by the <recipe>_seed<k> convention (mean, sample std), paper rows
attached by recipe name, markdown and JSON written."""
import json

import numpy as np
import pytest

from insightface_pwr.eval.report import PAPER_TABLE, aggregate, split_seed, write_report


def test_split_seed():
    assert split_seed("pwr_exp_seed12") == ("pwr_exp", 12)
    assert split_seed("pwr_exp-seed0") == ("pwr_exp", 0)
    assert split_seed("pwr_exp") == ("pwr_exp", None)


def test_seeds_mean_std_and_paper_rows(tmp_path):
    accs = {"pwr_exp_seed0": 0.91, "pwr_exp_seed1": 0.95, "pwr_exp_seed2": 0.96, "student_r18": 0.90,
            "mine": 0.5}
    entries = [{"name": n, "metrics": {"lfw": {"accuracy_flip": a}}} for n, a in accs.items()]
    rows = aggregate(entries, ["lfw"])
    assert [r["recipe"] for r in rows] == ["pwr_exp", "student_r18", "mine"]
    vals = [0.91, 0.95, 0.96]
    mean = sum(vals) / 3
    std = (sum((v - mean) ** 2 for v in vals) / (3 - 1)) ** 0.5  # sample std, as the benchmarks report it
    c = rows[0]["cells"]["lfw"]
    assert c["mean"] == pytest.approx(mean) and c["std"] == pytest.approx(std) and c["n"] == 3
    assert (c["min"], c["max"]) == (0.91, 0.96) and rows[0]["seeds"] == [0, 1, 2]
    assert rows[0]["paper_row"] == "PWR-Exp (teacher-diff)" and rows[0]["paper"]["LFW"] == 0.9963
    assert rows[1]["paper"]["CPLFW"] == PAPER_TABLE["Student, CosFace"][1] == 0.8928
    assert rows[2]["paper"] is None
    paths = write_report(tmp_path / "r", entries, ["lfw"], "t")
    md = (tmp_path / "r.md").read_text()
    assert f"| pwr_exp | {100 * mean:.2f} ± {100 * std:.2f} (n=3) | PWR-Exp (teacher-diff) | 99.63 |" in md
    assert json.loads((tmp_path / "r.json").read_text())["rows"][1]["cells"]["lfw"]["mean"] == 0.9
    assert set(paths) >= {"markdown", "json"}


def test_report_cli_work_dirs_with_seeds(tmp_path, capsys):
    """Two seeds of one recipe and a baseline: each model.pt evaluated, the seeds' accuracies averaged, against
    the same networks evaluated directly (brute force: evaluate_verification on their outputs)."""
    import io
    import pickle

    import torch
    from PIL import Image

    from insightface_pwr.cli import main
    from insightface_pwr.eval.verification_metrics import evaluate_verification
    from insightface_pwr.models.backbones import get_model

    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(24)]
    blobs = []
    for a in arrays:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        blobs.append(buf.getvalue())
    issame = [bool(i % 2) for i in range(12)]
    with open(tmp_path / "lfw.bin", "wb") as f:
        pickle.dump((blobs, issame), f)
    want = {}
    for k, name in enumerate(["pwr_exp_seed0", "pwr_exp_seed1", "student_r18"]):
        torch.manual_seed(k)
        net = get_model("tiny_cnn", num_features=8)
        net.train()
        net(torch.randn(8, 3, 16, 16))
        net.eval()
        (tmp_path / name).mkdir()
        torch.save(net.state_dict(), tmp_path / name / "model.pt")
        x = torch.from_numpy(np.stack(arrays).transpose(0, 3, 1, 2)).float()
        with torch.no_grad():
            emb = lambda t: net((t - 127.5) / 127.5).numpy()  # noqa: E731
            want[name] = evaluate_verification("lfw", emb(x), issame, flipped=emb(torch.flip(x, dims=[3])),
                                               folds=3).accuracy_flip
    rc = main(["report", *[str(tmp_path / n) for n in want], "--network", "tiny_cnn", "--num-features", "8",
               "--data-dir", str(tmp_path), "--bin", "lfw", "--folds", "3", "--image-size", "16",
               "--out", str(tmp_path / "out" / "table"), "--no-progress", "--threads", "1"])
    assert rc == 0
    capsys.readouterr()
    rows = json.loads((tmp_path / "out" / "table.json").read_text())["rows"]
    assert [r["recipe"] for r in rows] == ["pwr_exp", "student_r18"]
    seeds = [want["pwr_exp_seed0"], want["pwr_exp_seed1"]]
    assert rows[0]["cells"]["lfw"]["mean"] == pytest.approx(np.mean(seeds))
    assert rows[0]["cells"]["lfw"]["std"] == pytest.approx(np.std(seeds, ddof=1))
    assert rows[1]["cells"]["lfw"]["mean"] == pytest.approx(want["student_r18"])
    assert rows[1]["paper_row"] == "Student, CosFace"
    # a folder without model.pt is named in a one-line error before anything is evaluated
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "student_r18"), str(tmp_path / "empty"), "--network", "tiny_cnn",
                 "--out", str(tmp_path / "x"), "--bin", str(tmp_path / "lfw.bin")]) == 1
    assert "empty': no model.pt" in capsys.readouterr().err
