"""Puts tests/ on sys.path for every test folder, so the shared helpers here (``host_runs``, ``upstream_helpers``)
import the same way from tests/ and from its subfolders."""
import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
