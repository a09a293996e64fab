"""``insightface-pwr demo --size tiny --data DIR`` is a smoke run on real data too: the steps per epoch are capped,
the verification uses the first pairs of the .bin, and the whole demo takes seconds."""
import json
import os
import time
from pathlib import Path

import pytest

from insightface_pwr.cli import main
from insightface_pwr.distill.recipe import load_recipe

LFW = Path(os.environ.get("INSIGHTFACE_PWR_SHARED", Path(__file__).resolve().parents[2] / ".." / "shared")) / "data" / "lfw"


@pytest.mark.skipif(not (LFW / "train" / "train.rec").is_file(), reason="shared LFW data not found")
def test_demo_tiny_on_real_data_is_a_smoke_run(tmp_path, capsys):
    out = tmp_path / "demo"
    start = time.perf_counter()
    assert main(["demo", "--size", "tiny", "--data", str(LFW / "train"), "--bin", str(LFW / "lfw_dev.bin"),
                 "--out", str(out), "--no-progress"]) == 0
    wall = time.perf_counter() - start
    results = json.loads((out / "results.json").read_text())
    assert [r["run"] for r in results["rows"]] == ["teacher", "student", "student_ft", "rkd_da", "pwr_exp"]
    for row in results["rows"]:
        cfg = load_recipe(out / "recipes" / f"{row['run']}.py")
        assert cfg.max_steps_per_epoch == 3 and cfg.num_image == 3 * 32  # the lr schedule counts the capped epoch
        steps = [json.loads(line)["step"] for line in
                 (out / "runs" / row["run"] / "host_losses.jsonl").read_text().splitlines()]
        assert steps == list(range(1, 3 * cfg.num_epoch + 1))
        assert row["verification"][0]["pairs"] == 200  # the first 200 pairs of lfw_dev.bin
    assert wall < 120, f"the tiny demo on real data took {wall:.0f} s"
