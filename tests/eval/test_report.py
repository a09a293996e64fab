"""The report's aggregation: seeds grouped by the <recipe>_seed<k> convention (mean, population std), paper rows
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
    std = (sum((v - mean) ** 2 for v in vals) / 3) ** 0.5
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
