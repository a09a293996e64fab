"""The one fault-injection seam of the kill tests (never set in normal use).

``INSIGHTFACE_PWR_FAULT=NAME:K`` makes the process SIGKILL itself at the K-th hit of the fault point ``NAME``
(``hit(NAME)`` counts the hits of this process, from 1) or, for points that pass their own index
(``hit(NAME, index)``: a step, a chunk), where that index equals K. The points in use:

- ``kill_in_save``: inside an atomic write, after the temporary file is written and synced, before the rename;
- ``cache_kill_before_commit``: teacher cache, after chunk K's rows are written, before they are committed;
- ``kill_after_step``: a training loop, right after step K.
"""
from __future__ import annotations

import os
import signal
from typing import Dict, Optional

__all__ = ["hit", "ENV"]

ENV = "INSIGHTFACE_PWR_FAULT"
_COUNTS: Dict[str, int] = {}


def _armed(name: str) -> Optional[int]:
    fault = os.environ.get(ENV, "")
    head, sep, value = fault.partition(":")
    if head != name or not sep:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{ENV}={fault!r}: expected NAME:INTEGER") from None


def hit(name: str, index: Optional[int] = None) -> None:
    """Fault point ``name``: SIGKILL this process if ``$INSIGHTFACE_PWR_FAULT`` arms it for this hit."""
    target = _armed(name)
    if target is None:
        return
    if index is None:
        _COUNTS[name] = index = _COUNTS.get(name, 0) + 1
    if index == target:
        os.kill(os.getpid(), signal.SIGKILL)
