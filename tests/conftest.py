"""Puts tests/ on sys.path for every test folder, so the shared helpers here (``host_runs``, ``upstream_helpers``)
import the same way from tests/ and from its subfolders; the fixtures of the shared data kit
(``$INSIGHTFACE_PWR_SHARED`` or ``../shared``: a missing kit fails, never skips)."""
import sys
from pathlib import Path

import pytest

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


@pytest.fixture(scope="session")
def shared() -> Path:
    from insightface_pwr.data.paths import shared_dir
    root = shared_dir()
    if not (root / "data" / "lfw" / "train" / "train.rec").is_file():
        pytest.fail(f"shared data kit not found at {root}: set INSIGHTFACE_PWR_SHARED to the directory holding "
                    f"data/lfw/train/train.rec")
    return root


@pytest.fixture(scope="session")
def lfw_train(shared: Path) -> Path:
    return shared / "data" / "lfw" / "train"
