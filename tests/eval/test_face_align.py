"""Five-point alignment without OpenCV: the similarity estimate against a known transform, the warp against an
explicit bilinear loop (OpenCV's warpAffine convention), and a loose crop aligned back onto the template."""
import io

import numpy as np
import pytest
from PIL import Image

from insightface_pwr.eval.face_align import ARCFACE_TEMPLATE, align_face, similarity_transform, warp_affine


def _rotation(theta):
    return np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])


def test_similarity_transform_recovers_a_known_similarity():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (5, 2))
    m = np.hstack([1.7 * _rotation(0.3), [[5.0], [-3.0]]])
    dst = src @ m[:, :2].T + m[:, 2]
    assert np.abs(similarity_transform(src, dst) - m).max() < 1e-9
    with pytest.raises(ValueError, match="coincide"):
        similarity_transform(np.ones((5, 2)), dst)


def test_warp_equals_an_explicit_bilinear_loop():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    m = np.hstack([0.9 * _rotation(0.3), [[4.0], [2.0]]])
    out = warp_affine(img, m, 32).astype(np.float64)
    inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]
    checked = 0
    for y in range(32):
        for x in range(32):
            sx, sy = inv @ np.array([x, y, 1.0])
            if not (1 <= sx <= 48 and 1 <= sy <= 38):  # away from the border (blending with black)
                continue
            x0, y0 = int(np.floor(sx)), int(np.floor(sy))
            fx, fy = sx - x0, sy - y0
            ref = ((1 - fx) * (1 - fy) * img[y0, x0] + fx * (1 - fy) * img[y0, x0 + 1]
                   + (1 - fx) * fy * img[y0 + 1, x0] + fx * fy * img[y0 + 1, x0 + 1])
            assert np.abs(out[y, x] - ref).max() <= 1.0, (x, y)
            checked += 1
    assert checked > 400


def test_a_loose_crop_is_aligned_back_onto_the_template():
    yy, xx = np.mgrid[0:112, 0:112]
    face = np.stack([128 + 100 * np.sin(xx / 9.0), 128 + 100 * np.cos(yy / 11.0), (xx + yy) % 256], -1)
    face = face.clip(0, 255).astype(np.uint8)  # smooth: two bilinear resamplings stay close
    m = np.hstack([1.6 * _rotation(-0.25), [[40.0], [70.0]]])  # the aligned face placed in a larger loose crop
    loose = warp_affine(face, m, 260)
    landmarks = ARCFACE_TEMPLATE @ m[:, :2].T + m[:, 2]
    buf = io.BytesIO()
    Image.fromarray(loose).save(buf, format="PNG")
    back = align_face(buf.getvalue(), landmarks).astype(np.float64)
    inner = (slice(8, 104), slice(8, 104))
    assert np.abs(back[inner] - face[inner]).mean() < 3.0
