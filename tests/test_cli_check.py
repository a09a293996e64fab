"""``insightface-pwr check``: the effective configuration, the loss formula, and errors that name key and file."""
import subprocess
import sys
from pathlib import Path

import pytest

from insightface_pwr.cli import main

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def test_check_paper_recipe_prints_config_formula_and_steps(capsys):
    assert main(["check", str(RECIPES / "pwr_exp.py"), "--gpus", "6"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "config.distill.teacher.weights = 'work_dirs/teacher_r50/model.pt'" in out  # not opened: absent here
    assert "config.batch_size = 92" in out and "config.margin_list = (1.0, 0.0, 0.35)" in out
    assert "config.distill.heads[0].params.p = 1.0" in out  # a head default filled in
    # 5,822,653 // 552 = 10,548; x 13 = 137,124 (worked by hand)
    assert any("92 x 6 = 552" in line and "10548 steps per epoch" in line and "137124 steps" in line for line in out)
    assert out[-1] == "L = 100 * pwr(relation=cosine, inversion=exp, margin=teacher_diff, beta=1.0)"
    assert not any("wandb_key" in line for line in out)


def test_check_hkd_row_formula(capsys):
    assert main(["check", str(RECIPES / "hkd_rkd_da.py")]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        "L = 0.7 * CosFace(m=0.35, s=64) + 0.3 * hkd(temperature=4.0, t2_scale=False) + "
        "100 * rkd_da(relation=euclidean, mean_normalize=False, huber_delta=1.0)")


def test_check_recipe_without_distill(capsys):
    assert main(["check", str(RECIPES / "student_r18.py")]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "L = 1 * CosFace(m=0.35, s=64)"


@pytest.mark.parametrize("body, key", [
    ("config.distill.heads[0].params.inversoin = 'exp'", "inversoin"),
    ("config.distill.teacher.netwrok = 'r50'", "config.distill.teacher.netwrok"),
    ("config.distill.heads.append(edict(name='hkd', weight=0.3))", "config.distill.teacher.classifier"),
    ("config.batch_size = '92'", "config.batch_size"),
    ("config.pop('num_classes')", "config.num_classes"),
    ("raise KeyError('boom')", "failed to run"),
])
def test_check_errors_name_key_and_file(tmp_path, capsys, body, key):
    p = tmp_path / "bad.py"
    p.write_text("from easydict import EasyDict as edict\nfrom insightface_pwr.distill.recipe import load_base\n"
                 f"config = load_base(__file__, {str(RECIPES / 'pwr_exp.py')!r})\n{body}\n")
    assert main(["check", str(p)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and key in err and str(p) in err


def test_python_m_entry_point():
    r = subprocess.run([sys.executable, "-m", "insightface_pwr", "check", str(RECIPES / "rkd_d.py")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == ("L = 1 * CosFace(m=0.35, s=64) + "
                                         "100 * rkd_d(relation=euclidean, mean_normalize=False, huber_delta=1.0)")
