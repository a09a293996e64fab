"""Face data without MXNet: RecordIO, verification ``.bin`` files, the face dataset, evaluation metrics.

This package knows only files and arrays (never heads, hooks or arcface_torch). Every malformed input raises
:class:`DataFileError`, which names the file and the record.
"""
from .errors import DataFileError
from .recordio import IRHeader, IndexedRecordIO, MXIndexedRecordIO, MXRecordIO, RecordIO, pack, unpack

__all__ = ["DataFileError", "IRHeader", "IndexedRecordIO", "MXIndexedRecordIO", "MXRecordIO", "RecordIO", "pack",
           "unpack"]
