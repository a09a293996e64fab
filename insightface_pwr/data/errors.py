"""The one error type of the data layer.

Every malformed input the data layer meets (a missing data folder, a truncated or corrupt ``.rec``, a bad or
missing ``.idx``, an index entry past the end of the record file, a header record whose counts are not integers
the index can hold, a label outside ``property``'s classes, a ``.bin`` whose pickle holds anything but lists,
tuples, bools, bytes and uint8/integer/bool numpy arrays or would decode to more than its size allows, an image that
does not decode) raises :class:`DataFileError`, which names the file and, where there is one, the record (its index
key or position), in one line.
"""
from __future__ import annotations

import os
from typing import Optional, Union

from ..infra.errors import UserError
__all__ = ["DataFileError"]


class DataFileError(UserError, ValueError):
    """A data file is missing, malformed or unsafe.

    Attributes:
        path: the file at fault (``str``).
        record: the record at fault (an index key, a byte offset or an item number), or ``None``.
        reason: what was wrong and what was expected.
    """

    def __init__(self, path: Union[str, "os.PathLike[str]"], reason: str, record: Optional[object] = None):
        self.path = os.fspath(path)
        self.record = record
        self.reason = reason
        where = self.path if record is None else f"{self.path}, record {record}"
        super().__init__(f"{where}: {reason}")

    def __reduce__(self):  # keep the attributes across processes (DataLoader workers)
        return (DataFileError, (self.path, self.reason, self.record))
