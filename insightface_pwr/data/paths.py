"""Where the shared data kit lives: ``$INSIGHTFACE_PWR_SHARED``, else ``../shared`` beside the repository root."""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["shared_dir"]


def shared_dir() -> Path:
    """The shared data kit directory (not checked for existence)."""
    env = os.environ.get("INSIGHTFACE_PWR_SHARED")
    if env:
        return Path(env)
    return (Path(__file__).resolve().parents[2] / ".." / "shared").resolve()
