"""Fixtures of the evaluation tests: the shared data kit (``$INSIGHTFACE_PWR_SHARED`` or ``../shared``)."""
from pathlib import Path

import pytest

from insightface_pwr.data.paths import shared_dir


@pytest.fixture(scope="session")
def shared() -> Path:
    root = shared_dir()
    if not (root / "data" / "lfw" / "train" / "train.rec").is_file():
        pytest.fail(f"shared data kit not found at {root}: set INSIGHTFACE_PWR_SHARED to the directory holding "
                    f"data/lfw/train/train.rec")
    return root


@pytest.fixture(scope="session")
def lfw_train(shared: Path) -> Path:
    return shared / "data" / "lfw" / "train"
