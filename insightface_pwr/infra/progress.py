"""The one progress bar of the package: one line on stderr, rewritten in place (no dependency).

``progress_bar(total, desc, unit, enabled, initial=0)`` returns an object with ``update(n)`` and ``close()``, or
None when ``enabled`` is false. ``initial`` counts work done before this run (a resumed job): the rate and the ETA
are this run's.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Optional

__all__ = ["progress_bar"]


class _Counter:
    """``desc: done/total unit (percent)  rate/s  ETA``, rewritten in place at most twice a second."""

    def __init__(self, total: int, desc: str, unit: str, initial: int) -> None:
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self._start_n, self._t0, self._last = initial, time.monotonic(), 0.0
        self._postfix = ""

    def set_postfix(self, **values: Any) -> None:
        """Extra ``key=value`` fields shown after the ETA (e.g. the last loss)."""
        self._postfix = "  " + " ".join(f"{k}={v}" for k, v in values.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last >= 0.5 or self.n >= self.total:
            self._last = now
            rate = (self.n - self._start_n) / max(now - self._t0, 1e-9)
            eta = (self.total - self.n) / rate if rate > 0 else float("inf")
            eta_s = time.strftime("%H:%M:%S", time.gmtime(eta)) if eta != float("inf") else "?"
            sys.stderr.write(f"\r{self.desc}: {self.n}/{self.total} {self.unit} "
                             f"({100.0 * self.n / max(self.total, 1):.0f}%)  {rate:.1f} {self.unit}/s  ETA {eta_s}"
                             f"{self._postfix}  ")
            sys.stderr.flush()

    def close(self) -> None:
        sys.stderr.write("\n")
        sys.stderr.flush()


def progress_bar(total: int, desc: str, unit: str = "img", enabled: bool = True, initial: int = 0) -> Optional[Any]:
    """A progress bar (see the module docstring), or None when not ``enabled``."""
    return _Counter(total, desc, unit, initial) if enabled else None
