"""A newcomer's path: the host says when val_targets are not used, log lines never share a terminal line with a
progress bar, the demo's output is ignored by git, the examples use config.lr_schedule, and ``check`` shows only
the lr schedule key in force."""
import io
import logging
import subprocess
from pathlib import Path

from insightface_pwr.cli import main
from insightface_pwr.distill.recipe import load_recipe

from host_runs import tiny_recipe

ROOT = Path(__file__).resolve().parents[1]
def test_host_warns_once_when_val_targets_are_not_used(tmp_path, capsys):
    recipe = tmp_path / "r.py"
    recipe.write_text(tiny_recipe(val_targets=["lfw", "cfp_fp"], output=str(tmp_path / "o")))
    assert main(["train", str(recipe)]) == 0
    log = (tmp_path / "o" / "training.log").read_text().splitlines()
    hits = [line for line in log if "val_targets" in line]
    assert len(hits) == 1 and "['lfw', 'cfp_fp']" in hits[0] and "insightface-pwr eval" in hits[0]
    recipe.write_text(tiny_recipe(output=str(tmp_path / "p")))
    assert main(["train", str(recipe)]) == 0
    assert "val_targets" not in (tmp_path / "p" / "training.log").read_text()


class _Tty(io.StringIO):
    def __init__(self, tty):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


def test_a_log_line_on_a_terminal_clears_the_progress_bar_line_first():
    from insightface_pwr.host.train import _TerminalHandler
    for tty, prefix in ((True, "\r\x1b[2K"), (False, "")):
        stream = _Tty(tty)
        h = _TerminalHandler(stream)
        h.emit(logging.LogRecord("x", logging.INFO, __file__, 1, "Loss 1.0", None, None))
        assert stream.getvalue() == prefix + "Loss 1.0\n"


def test_the_demo_output_folder_is_ignored_by_git():
    proc = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", "insightface_pwr_demo/table.png"])
    assert proc.returncode == 0


def test_examples_use_the_top_level_lr_schedule():
    cfg = load_recipe(ROOT / "examples" / "host_distill.py")
    assert cfg.lr_schedule is not None and cfg.lr_schedule.kind == "step"
    assert cfg.distill.lr_schedule is None
    for p in (ROOT / "examples").glob("*.py"):
        assert "    lr_schedule=" not in p.read_text(), p


def test_check_prints_only_the_lr_schedule_key_in_force(tmp_path, capsys):
    distill = ("config.distill = edict(teacher=edict(weights='t.pt', network='tiny_cnn'), heads=[edict(name='pwr')]"
               "{})\n")
    step = "edict(kind='step', every_epochs=1, factor=0.1)"
    for extra, shown, hidden in ((distill.format(f", lr_schedule={step}"), "config.distill.lr_schedule.kind = 'step'",
                                  "config.lr_schedule ="),
                                 (distill.format("") + f"config.lr_schedule = {step}\n", "config.lr_schedule.kind = 'step'",
                                  "config.distill.lr_schedule")):
        recipe = tmp_path / "r.py"
        recipe.write_text(tiny_recipe(extra))
        assert main(["check", str(recipe)]) == 0
        out = capsys.readouterr().out
        assert shown in out and hidden not in out, out


def test_readme_train_section_names_upstream_needs_the_cpu_wheel_and_the_cpu_host():
    import os
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Train with arcface_torch", 1)[1].split("\n### ", 1)[0]
    shared = Path(os.environ.get("INSIGHTFACE_PWR_SHARED", ROOT / ".." / "shared"))
    req = shared / "upstream" / "arcface_torch" / "requirement.txt"
    needs = [ln.strip() for ln in req.read_text().splitlines() if ln.strip()] if req.is_file() else ["tensorboard"]
    for name in needs:
        assert name in section, name
    assert "pip install tensorboard" in section
    assert "--index-url https://download.pytorch.org/whl/cpu" in section
    assert "NCCL" in section and "insightface-pwr train" in section
