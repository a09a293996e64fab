"""The mark of a user's mistake: every error class of the package that describes bad input (a recipe, a file, a
flag) derives from :class:`UserError` too, and the command line prints such an error as ONE line naming the
culprit (``insightface-pwr --debug ...`` shows the traceback). Anything else is a bug and keeps its traceback."""
from __future__ import annotations

__all__ = ["UserError"]


class UserError(Exception):
    """A mistake in what the user gave (its message names the file, key, shape or value, and what was expected)."""
