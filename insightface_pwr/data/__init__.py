"""Face data without MXNet: RecordIO, the face dataset, verification ``.bin`` files, evaluation metrics.

This package knows only files and arrays (never heads, hooks or arcface_torch). Every malformed input raises
:class:`DataFileError`, which names the file and the record.

- :mod:`.recordio` - a pure-Python drop-in for ``mxnet.recordio`` (byte-identical files, mmap reads)
- :mod:`.dataset` - :class:`FaceDataset` over an InsightFace RecordIO folder
- :mod:`.build` - an image folder to a RecordIO set (``insightface-pwr build-rec``)
- :mod:`.verification_bin` - safe loading of verification ``.bin`` files
- :mod:`.verification_metrics`, :mod:`.identification_metrics` - 10-fold accuracy, TPR@FPR, AUC, rank-k
- :mod:`.embedding_models` - ONNX / TorchScript embedding models for evaluation
"""
from .errors import DataFileError
from .recordio import IRHeader, IndexedRecordIO, MXIndexedRecordIO, MXRecordIO, RecordIO, pack, unpack
from .dataset import FaceDataset, read_property
from .verification_bin import VerificationBin, load_bin

__all__ = ["DataFileError", "IRHeader", "IndexedRecordIO", "MXIndexedRecordIO", "MXRecordIO", "RecordIO", "pack",
           "unpack", "FaceDataset", "read_property", "VerificationBin", "load_bin"]
