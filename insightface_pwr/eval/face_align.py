"""Five-point face alignment to arcface's 112 x 112 template, as upstream's ``eval_ijbc.py`` does it (a similarity
transform estimated from the five landmarks, then ``cv2.warpAffine`` with bilinear sampling and black borders),
without OpenCV or scikit-image:

- :func:`similarity_transform` is the least-squares similarity (rotation, uniform scale, translation) of Umeyama
  (1991), what scikit-image's ``SimilarityTransform.estimate`` computes;
- :func:`warp_affine` samples ``dst(x, y) = src(M^-1 (x, y))`` with pixel centres at integer coordinates
  (OpenCV's convention), bilinear, 0 outside the image, rounded to uint8, with Pillow.
"""
from __future__ import annotations

import io
from typing import Union

import numpy as np

from ..data.images import decode_image

__all__ = ["ARCFACE_TEMPLATE", "similarity_transform", "warp_affine", "align_face", "align_face_png"]

# arcface_torch eval_ijbc.py: the 96 x 112 template shifted by 8 pixels to 112 x 112
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
                             [70.7299, 92.2041]], dtype=np.float64)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2 x 3 matrix M of the similarity that maps the points ``src`` (N x 2) onto ``dst`` (N x 2) best in the
    least-squares sense (Umeyama's closed form, reflections excluded)."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"landmarks must be N x 2 (N >= 2) in both sets, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    sc, dc = src - mu_s, dst - mu_d
    var_s = (sc ** 2).sum() / len(src)
    if not var_s > 0:
        raise ValueError("the landmarks coincide: no similarity transform")
    cov = dc.T @ sc / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.array([1.0, -1.0 if np.linalg.det(cov) < 0 else 1.0])
    rot = u @ np.diag(d) @ vt
    scale = float((s * d).sum() / var_s)
    return np.hstack([scale * rot, (mu_d - scale * rot @ mu_s)[:, None]])


def warp_affine(image: np.ndarray, m: np.ndarray, size: int = 112) -> np.ndarray:
    """``size x size x 3`` uint8: ``image`` (H x W x 3 uint8) warped by the 2 x 3 matrix ``m`` (source ->
    destination), as ``cv2.warpAffine(image, m, (size, size), borderValue=0)``."""
    from PIL import Image
    full = np.vstack([np.asarray(m, np.float64), [0.0, 0.0, 1.0]])
    inv = np.linalg.inv(full)[:2]
    a, b, c = inv[0]
    d, e, f = inv[1]
    # Pillow maps the output pixel centre (x + 0.5, y + 0.5) and samples around (u - 0.5, v - 0.5); OpenCV maps
    # integer centres: this offset makes both sample at M^-1 (x, y) (checked against an explicit loop in the tests)
    c2 = c - 0.5 * (a + b) + 0.5
    f2 = f - 0.5 * (d + e) + 0.5
    out = Image.fromarray(np.ascontiguousarray(image)).transform(
        (size, size), Image.Transform.AFFINE, (a, b, c2, d, e, f2), resample=Image.Resampling.BILINEAR,
        fillcolor=(0, 0, 0))
    return np.asarray(out)


def align_face(data: Union[bytes, np.ndarray], landmarks: np.ndarray, source: str = "<image>",
               size: int = 112) -> np.ndarray:
    """The encoded image ``data`` aligned by its five ``landmarks`` (5 x 2, x then y) to the arcface template."""
    img = decode_image(data, source=source)
    scale = size / 112.0
    return warp_affine(img, similarity_transform(np.asarray(landmarks, np.float64).reshape(5, 2),
                                                 ARCFACE_TEMPLATE * scale), size)


def align_face_png(data: Union[bytes, np.ndarray], landmarks: np.ndarray, source: str = "<image>",
                   size: int = 112) -> bytes:
    """:func:`align_face` encoded as PNG (lossless), for the embedding store's encoded-image interface."""
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(align_face(data, landmarks, source, size)).save(buf, format="PNG")
    return buf.getvalue()
