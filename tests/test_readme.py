"""The README is executed: its quick-start test command is CI's, its Python blocks run, its heads table is
the registry, and its `insightface-pwr` example commands succeed."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import insightface_pwr

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", README, flags=re.S | re.M)


def _quick_start() -> list[str]:
    section = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"^```bash\n(.*?)^```", section, flags=re.S | re.M).group(1)
    return [ln for ln in block.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def test_quick_start_has_exactly_two_commands_and_ci_runs_the_test_one():
    commands = _quick_start()
    assert len(commands) == 2, f"the quick start must hold exactly two commands, found {commands}"
    assert all(c.startswith("pip install torch==2.13.0 && ") for c in commands), \
        "both set-up commands must install the CPU torch pin before the package"
    ci = [ln for ln in (ROOT / ".ci" / "run").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert ci[-1] == commands[1], f".ci/run must end with the README's test command:\n{ci[-1]}\n!=\n{commands[1]}"


def test_heads_table_is_the_registry():
    section = README.split("## Heads", 1)[1].split("\n## ", 1)[0]
    section = section.split("| head | paper |", 1)[1].split("\n\n", 1)[0]  # the heads table itself
    names = re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.M)
    assert sorted(names) == insightface_pwr.list_heads()
    for name in names:  # the table's defaults are the code's
        spec = insightface_pwr.get_head_spec(name)
        row = re.search(rf"^\| `{name}` \|.*$", section, flags=re.M).group(0)
        for param, default in spec.defaults().items():
            assert f"{param}={default!r}" in row or f"{param}={default}" in row, \
                f"README heads table row of {name!r} lacks {param}={default!r}: {row}"


@pytest.mark.parametrize("i", range(len(_blocks("python"))))
def test_python_blocks_run(i, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(_blocks("python")[i], f"README.md python block {i}", "exec"), {"__name__": "__readme__"})


def _example_commands() -> list[str]:
    cmds = []
    for block in _blocks("console"):
        cmds += [ln[2:] for ln in block.splitlines() if ln.startswith("$ insightface-pwr ")]
    return cmds


@pytest.mark.parametrize("cmd", _example_commands())
def test_console_examples_succeed(cmd):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    argv = shlex.split(cmd)
    out = subprocess.run([sys.executable, "-m", "insightface_pwr", *argv[1:]], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"{cmd!r} failed:\n{out.stdout}\n{out.stderr}"
