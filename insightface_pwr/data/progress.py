"""A progress bar on stderr: tqdm when installed, else a plain counter line (tqdm is optional)."""
from __future__ import annotations

import sys
import time


class _Counter:
    """``done/total (percent)`` rewritten in place at most twice a second."""

    def __init__(self, total: int, desc: str, unit: str):
        self.total, self.desc, self.unit, self.n, self._last = total, desc, unit, 0, 0.0

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last >= 0.5 or self.n >= self.total:
            self._last = now
            pct = 100.0 * self.n / max(self.total, 1)
            sys.stderr.write(f"\r{self.desc}: {self.n}/{self.total} {self.unit} ({pct:.0f}%)")
            sys.stderr.flush()

    def close(self) -> None:
        sys.stderr.write("\n")
        sys.stderr.flush()


def progress_bar(total: int, desc: str, unit: str = "img", enabled: bool = True):
    """An object with ``update(n)`` and ``close()``, or ``None`` when ``enabled`` is false."""
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return _Counter(total, desc, unit)
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False)
