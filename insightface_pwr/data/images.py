"""Image decoding and the face transforms (no torchvision): decode to RGB, flip, normalise to CHW float32.

Convention: an image is an ``H x W x 3`` uint8 RGB array; a model input is ``3 x H x W`` float32 with
``(pixel - mean) / std`` per channel (training: mean = std = 127.5, i.e. ``(x/255 - 0.5)/0.5`` in [-1, 1]).
Decoding needs Pillow (JPEG, PNG and whatever else Pillow reads).
"""
from __future__ import annotations

import io
import os
from typing import Optional, Union

import numpy as np
import torch

from .errors import DataFileError

__all__ = ["decode_image", "to_tensor", "hflip"]


def decode_image(data: Union[bytes, bytearray, memoryview, np.ndarray], *, source: Union[str, os.PathLike] = "<bytes>",
                 record: Optional[object] = None) -> np.ndarray:
    """Decode an encoded image (JPEG, PNG, ...) to an ``H x W x 3`` uint8 RGB array.

    ``data`` may be a uint8 array of the encoded bytes (as in InsightFace's older ``.bin`` files). Grey, palette,
    CMYK and alpha images are converted to RGB. A failure raises :class:`DataFileError` naming ``source`` and
    ``record``.
    """
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - pillow is a hard requirement
        raise ImportError("decoding images needs Pillow: pip install pillow") from e
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise DataFileError(source, f"an encoded image must be a uint8 array, got dtype {data.dtype} with shape "
                                        f"{data.shape}", record)
        data = data.tobytes()
    elif not isinstance(data, bytes):
        data = bytes(data)
    try:
        with Image.open(io.BytesIO(data)) as img:
            rgb = np.asarray(img if img.mode == "RGB" else img.convert("RGB"))
    except Exception as e:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ValueError, ...
        head = bytes(data[:8]).hex()
        raise DataFileError(source, f"image does not decode ({type(e).__name__}: {e}); {len(data)} bytes starting "
                                    f"{head or '(empty)'}", record) from None
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise DataFileError(source, f"decoded image has shape {rgb.shape}, expected H x W x 3", record)
    return rgb


def hflip(image: np.ndarray) -> np.ndarray:
    """Mirror an ``H x W x C`` image left-right."""
    return image[:, ::-1]


def to_tensor(image: np.ndarray, mean: float = 127.5, std: float = 127.5) -> torch.Tensor:
    """``H x W x 3`` uint8 -> ``3 x H x W`` float32 ``(pixel - mean) / std``."""
    chw = image.transpose(2, 0, 1).astype(np.float32)  # numpy: no intra-op threads for a 112x112 image
    chw -= np.float32(mean)
    chw /= np.float32(std)
    return torch.from_numpy(chw)
