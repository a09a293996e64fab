"""benchmarks/gpu_check.sh without a GPU: its arguments, the recipes it trains (validated by the same load_recipe
training uses), the report's verdicts. The full ``--cpu-dry-run`` takes minutes on a shared CPU (9 trainings with an
r50 teacher): it is run by hand (benchmarks/RESULTS.md), not here."""
import importlib.util
import subprocess
from pathlib import Path

import pytest

from insightface_pwr.distill.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"


def _module(name):
    spec = importlib.util.spec_from_file_location(f"_gpu_check_{name}", REPO / "benchmarks" / "gpu" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_parses_and_refuses_unknown_arguments():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    help_ = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True)
    assert help_.returncode == 0 and "--cpu-dry-run" in help_.stdout
    bad = subprocess.run(["bash", str(SCRIPT), "--gpu-dry-run"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown argument --gpu-dry-run" in bad.stderr


@pytest.mark.parametrize("dry", [False, True], ids=["gpu", "cpu-dry-run"])
def test_every_family_recipe_is_valid(tmp_path, dry):
    prepare = _module("prepare")
    args = prepare.parse_args(["--tree", "t", "--work", str(tmp_path)] + (["--cpu-dry-run"] if dry else []))
    texts = prepare.recipes(args)
    assert set(texts) == set(prepare.FAMILIES)
    heads = set()
    for fam, text in texts.items():
        path = tmp_path / f"{fam}.py"
        path.write_text(text)
        cfg = load_recipe(path)
        steps = cfg.num_image // cfg.batch_size * cfg.num_epoch
        assert steps == (2 if dry else 100), fam
        assert cfg.fp16 is (not dry) and cfg.distill.teacher.fp16 is (not dry)
        assert (cfg.network, cfg.distill.teacher.network, cfg.data_backend, cfg.rec) == ("r18", "r50",
                                                                                        "insightface_pwr", "synthetic")
        assert cfg.frequent <= steps and steps % cfg.frequent == 0  # the last step is logged
        heads |= {h.name for h in cfg.distill.heads}
    from insightface_pwr.heads.registry import list_heads
    assert heads == set(list_heads())  # every head family
    with pytest.raises(SystemExit):
        prepare.parse_args(["--tree", "t", "--work", "w", "--families", "pwr,nope"])


def test_report_verdicts(tmp_path):
    summarize = _module("summarize")
    log = "Training: x-distill step {s}   classification 1.5   pwr {v}   total 2.5\n"
    for fam, value in (("good", "0.25"), ("nan", "nan")):
        (tmp_path / "runs" / fam).mkdir(parents=True)
        (tmp_path / "runs" / fam / "training.log").write_text(log.format(s=1, v=0.1) + log.format(s=2, v=value))
    (tmp_path / "runs.tsv").write_text("good\t0\t12\nnan\t0\t11\nshort\t1\t3\n")
    rows, ok = summarize.run_rows(tmp_path, expected_steps=2)
    assert not ok
    assert rows[2].startswith("| good | 0 | 2 | classification 1.5, pwr 0.25, total 2.5 |") and rows[2].endswith("ok |")
    assert rows[3].endswith("FAILED |") and rows[4].startswith("| short | 1 | - |")
    (tmp_path / "runs.tsv").write_text("good\t0\t12\n")
    (tmp_path / "pytest.txt").write_text("40 passed, 3 skipped in 9.1s\n")
    assert summarize.main(["--work", str(tmp_path), "--out", str(tmp_path / "r.md"), "--steps", "2"]) == 0
    (tmp_path / "pytest.txt").write_text("1 failed, 39 passed in 9.1s\n")
    assert summarize.main(["--work", str(tmp_path), "--out", str(tmp_path / "r.md"), "--steps", "2"]) == 1


def test_timing_table_targets():
    timing = _module("timing")
    text = timing.table({1024: 4.0, 4096: 30.0}, {"student": 100.0, "cached": 106.0, "live": 140.0}, "X", False)
    assert "| PWR exp/teacher_diff/global fwd+bwd, N = 1024 | 4.00 ms | <= 5 ms | ok |" in text
    assert "106.00 ms = 1.060x | <= 1.05x | MISSED |" in text and "140.00 ms = 1.400x | <= 1.5x | ok |" in text
