"""Every user error is ONE line ``error: ...`` on stderr with exit status 1 and no traceback, through
``insightface_pwr.cli.main``; relative paths are given, the message names the absolute one."""
import errno
import os
import shutil
from pathlib import Path

import pytest
import torch

from insightface_pwr.cli import main

from host_runs import tiny_recipe

LFW = Path(os.environ.get("INSIGHTFACE_PWR_SHARED", Path(__file__).resolve().parents[1] / ".." / "shared")) / "data" / "lfw"
UPSTREAM = LFW.parents[1] / "upstream" / "arcface_torch"
needs_lfw = pytest.mark.skipif(not (LFW / "train" / "train.rec").is_file(), reason="shared LFW data not found")

@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _recipe(name="r", rec="synthetic", extra=""):
    Path(f"{name}.py").write_text(tiny_recipe(extra, rec=rec, num_classes=10, output="out"))
    return f"{name}.py"


def _one_error(argv, capsys, *expected):
    rc = main(argv)
    cap = capsys.readouterr()
    lines = cap.err.strip().splitlines()
    assert rc == 1, cap
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in cap.err, cap.err
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0], cap.out


def test_eval_missing_bin(in_tmp, capsys):
    torch.save({"w": torch.zeros(1)}, "m.pt")
    _one_error(["eval", "--model", "m.pt", "--network", "tiny_cnn", "--bin", "nope.bin"], capsys,
               str(in_tmp / "nope.bin"))


def test_eval_missing_model(in_tmp, capsys):
    _one_error(["eval", "--model", "nope.onnx", "--bin", str(LFW / "lfw_dev.bin")], capsys,
               str(in_tmp / "nope.onnx"))


@needs_lfw
def test_eval_state_dict_without_network(in_tmp, capsys):
    torch.save({"w": torch.zeros(1)}, "sd.pt")
    _one_error(["eval", "--model", "sd.pt", "--bin", str(LFW / "lfw_dev.bin")], capsys, "--network")


def test_build_rec_empty_folder(in_tmp, capsys):
    Path("faces").mkdir()
    _one_error(["build-rec", "faces", "rec", "--no-progress"], capsys, str(in_tmp / "faces"))


@needs_lfw
def test_train_missing_idx(in_tmp, capsys):
    Path("data").mkdir()
    for f in ("train.rec", "property"):
        shutil.copy(LFW / "train" / f, Path("data") / f)
    _one_error(["train", _recipe(rec="data")], capsys, str(in_tmp / "data" / "train.idx"))


@needs_lfw
def test_train_truncated_rec(in_tmp, capsys):
    Path("data").mkdir()
    for f in ("train.idx", "property"):
        shutil.copy(LFW / "train" / f, Path("data") / f)
    Path("data/train.rec").write_bytes((LFW / "train" / "train.rec").read_bytes()[:100_000])
    _one_error(["train", _recipe(rec="data")], capsys, str(in_tmp / "data" / "train.rec"), "truncated")


def test_train_missing_data_folder(in_tmp, capsys):
    _one_error(["train", _recipe(rec="nodata")], capsys, str(in_tmp / "nodata"), "data folder not found")


BAD_HEAD = "config.distill = edict(teacher=edict(weights='t.pt', network='tiny_cnn'), heads=[edict(name='nohead')])\n"


def test_train_unknown_head(capsys):
    _one_error(["train", _recipe(extra=BAD_HEAD)], capsys, "nohead", "config.distill.heads[0]")


def test_train_nproc_2_bad_recipe_is_one_line_from_the_parent(capfd):
    rc = main(["train", _recipe(extra=BAD_HEAD), "--nproc", "2"])
    err = capfd.readouterr().err  # file descriptors: a worker's traceback would show here
    assert rc == 1 and err.strip().splitlines() == [err.strip()] and err.startswith("error: ") and "nohead" in err


def test_train_missing_teacher(in_tmp, capsys):
    extra = ("config.distill = edict(teacher=edict(weights='teacher.pt', network='tiny_cnn', embedding_size=8, "
             "input_size=(16, 16)), heads=[edict(name='pwr')])\n")
    _one_error(["train", _recipe(extra=extra)], capsys, str(in_tmp / "teacher.pt"))


def test_train_read_only_output(in_tmp, capsys, monkeypatch):
    ro = in_tmp / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.geteuid() == 0:  # root writes anywhere: the file system's answer for a read-only folder, simulated
        real_mkdir = os.mkdir

        def mkdir(path, *a, **k):
            if str(path).startswith(str(ro)):
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_mkdir(path, *a, **k)
        monkeypatch.setattr(os, "mkdir", mkdir)
    _one_error(["train", _recipe(extra="config.output = 'ro/run'\n")], capsys, "Permission denied",
               str(ro / "run"))


def test_heads_unknown_name(capsys):
    _one_error(["heads", "no_such_head"], capsys, "no_such_head", "pwr")


def test_check_gpus_0_fails_before_printing(capsys):
    _, out = _one_error(["check", _recipe(), "--gpus", "0"], capsys, "--gpus")
    assert out == ""


def test_load_base_cycle_is_named(in_tmp, capsys):
    for a, b in (("a", "b"), ("b", "a")):
        Path(f"{a}.py").write_text(f"from insightface_pwr.distill.recipe import load_base\n"
                                   f"config = load_base(__file__, '{b}.py')\n")
    _one_error(["check", "a.py"], capsys, "cycle", f"{in_tmp / 'a.py'} -> {in_tmp / 'b.py'} -> {in_tmp / 'a.py'}")


def test_recipe_without_py_suffix_is_found(in_tmp, capsys):
    """What the patched upstream get_config('recipes/pwr_exp') calls, and ``check configs/ms1mv2_r50``."""
    from insightface_pwr.distill.recipe import load_recipe
    Path("recipes").mkdir()
    Path("recipes/pwr_exp.py").write_text(tiny_recipe(num_classes=10, output="out"))
    assert load_recipe("recipes/pwr_exp").network == "tiny_cnn"
    assert main(["check", "recipes/pwr_exp"]) == 0
    assert "config.network = 'tiny_cnn'" in capsys.readouterr().out
    _one_error(["check", "recipes/nope"], capsys, str(in_tmp / "recipes" / "nope"))


@pytest.mark.skipif(not (UPSTREAM / "configs" / "ms1mv2_r50.py").is_file(), reason="shared upstream not found")
def test_check_upstream_config_without_suffix(monkeypatch, capsys):
    monkeypatch.chdir(UPSTREAM)
    assert main(["check", "configs/ms1mv2_r50"]) == 0
    assert "config.network = 'r50'" in capsys.readouterr().out
