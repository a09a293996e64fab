"""The package's architecture, checked: import-linter's contracts (setup.cfg), what import-linter cannot express
(no torch.distributed under heads/ and data/), module size, and a command line that imports nothing it does not
need."""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "insightface_pwr"


def test_import_linter_contracts_are_kept():
    exe = shutil.which("lint-imports")
    assert exe, "import-linter is not installed (it is in the test extra: pip install -e '.[test]')"
    proc = subprocess.run([exe, str(ROOT / "setup.cfg")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]


def _imports(path: Path) -> set:
    tree = ast.parse(path.read_text(), str(path))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


@pytest.mark.parametrize("package", ["heads", "data", "infra"])
def test_no_distribution_below_distill(package):
    offenders = {str(p.relative_to(ROOT)): sorted(i for i in _imports(p) if i.startswith("torch.distributed"))
                 for p in (PKG / package).rglob("*.py")}
    assert not {k: v for k, v in offenders.items() if v}


def test_infra_imports_no_torch():
    offenders = {str(p.relative_to(ROOT)) for p in (PKG / "infra").rglob("*.py")
                 if any(i == "torch" or i.startswith("torch.") for i in _imports(p))}
    assert not offenders


def test_no_module_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in PKG.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long


def test_cli_imports_no_subcommand_and_no_torch():
    code = ("import sys, insightface_pwr.cli as c; c.build_parser([]); "
            "print(sorted(m for m in sys.modules if m.startswith(('insightface_pwr.', 'torch'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = eval(out)  # a list literal of module names
    assert loaded == ["insightface_pwr.cli"], loaded
