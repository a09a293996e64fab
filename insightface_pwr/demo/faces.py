"""Procedural "faces": identities a small network can learn, but not perfectly.

An identity is a fixed set of geometric and colour parameters drawn from ``numpy.random.default_rng((seed, id))``:
face oval (width, height), skin tone, hair (colour, height, style), eyes (height, spacing, size, iris colour),
brows (tilt, thickness), nose (length, width), mouth (height, width, curvature, colour). An image of it adds
per-image nuisance drawn from a second generator: background colour, expression (mouth curvature, eye opening),
pose (rotation +-12 degrees, scale +-10 %, shift +-8 % of the width), lighting (brightness, contrast, colour cast,
a left-right gradient), an occluder on some images (sunglasses or a mask), blur and pixel noise. Identities differ
by continuous parameters, so some are near-twins: verification is hard at the margin.

Images are drawn at 2x the output size with Pillow and downsampled (antialiased), ``size x size x 3`` uint8 RGB.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np

__all__ = ["Identity", "make_identity", "render_face"]

Color = Tuple[int, int, int]


@dataclass(frozen=True)
class Identity:
    """The fixed parameters of one synthetic person (lengths are fractions of the image width)."""

    face_w: float
    face_h: float
    skin: Color
    hair: Color
    hair_h: float
    hair_style: int
    eye_y: float
    eye_dx: float
    eye_r: float
    iris: Color
    brow_tilt: float
    brow_w: float
    nose_len: float
    nose_w: float
    mouth_y: float
    mouth_w: float
    mouth_curve: float
    lips: Color


def _color(rng: np.random.Generator, lo: int = 0, hi: int = 255) -> Color:
    return tuple(int(v) for v in rng.integers(lo, hi, 3))  # type: ignore[return-value]


def make_identity(seed: int, identity: int) -> Identity:
    """Identity ``identity`` of the population ``seed`` (deterministic)."""
    rng = np.random.default_rng((int(seed), int(identity), 1))
    t = rng.uniform()
    light, dark = np.array([240, 208, 184]), np.array([105, 68, 44])
    skin = tuple(int(v) for v in np.clip(light + t * (dark - light) + rng.normal(0, 10, 3), 0, 255))
    irises = [(60, 110, 200), (110, 70, 30), (70, 140, 80), (60, 60, 60), (140, 140, 160)]
    return Identity(
        face_w=rng.uniform(0.50, 0.72), face_h=rng.uniform(0.66, 0.86), skin=skin,  # type: ignore[arg-type]
        hair=_color(rng, 10, 200), hair_h=rng.uniform(0.03, 0.22), hair_style=int(rng.integers(0, 3)),
        eye_y=rng.uniform(0.38, 0.48), eye_dx=rng.uniform(0.12, 0.21), eye_r=rng.uniform(0.035, 0.07),
        iris=irises[int(rng.integers(0, len(irises)))], brow_tilt=rng.uniform(-0.35, 0.35),
        brow_w=rng.uniform(0.01, 0.035), nose_len=rng.uniform(0.07, 0.18), nose_w=rng.uniform(0.04, 0.1),
        mouth_y=rng.uniform(0.68, 0.80), mouth_w=rng.uniform(0.16, 0.34), mouth_curve=rng.uniform(-0.05, 0.07),
        lips=tuple(int(v) for v in np.clip(np.array(skin) * rng.uniform(0.5, 0.9) +  # type: ignore[arg-type]
                                           np.array([60, 0, 0]), 0, 255)))


def render_face(ident: Identity, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """One image of ``ident`` with nuisance drawn from ``rng``: ``size x size x 3`` uint8 RGB."""
    from PIL import Image, ImageDraw, ImageFilter

    s = 2 * size
    bg = _color(rng, 30, 230)
    img = Image.new("RGB", (s, s), bg)
    d = ImageDraw.Draw(img)
    cx, cy = s / 2, s * 0.52
    fw, fh = ident.face_w * s / 2, ident.face_h * s / 2
    # hair behind the head, then the face oval
    hh = ident.hair_h * s
    if ident.hair_style != 2:
        d.ellipse([cx - fw * 1.08, cy - fh - hh, cx + fw * 1.08, cy + fh * (0.1 if ident.hair_style == 0 else 0.6)],
                  fill=ident.hair)
    d.ellipse([cx - fw, cy - fh, cx + fw, cy + fh], fill=ident.skin)
    if ident.hair_style == 1:  # fringe
        d.chord([cx - fw, cy - fh - hh * 0.5, cx + fw, cy - fh * 0.2], 180, 360, fill=ident.hair)
    # eyes (opening jitters: expression / blink), irises, brows
    open_ = rng.uniform(0.35, 1.0)
    ey = ident.eye_y * s + (cy - s * 0.52)
    er = ident.eye_r * s
    for side in (-1, 1):
        ex = cx + side * ident.eye_dx * s
        d.ellipse([ex - er * 1.4, ey - er * open_, ex + er * 1.4, ey + er * open_], fill=(245, 245, 245))
        d.ellipse([ex - er * 0.7, ey - er * 0.7 * open_, ex + er * 0.7, ey + er * 0.7 * open_], fill=ident.iris)
        by = ey - er * 1.9
        tilt = side * ident.brow_tilt * er * 1.5
        d.line([ex - er * 1.5, by + tilt, ex + er * 1.5, by - tilt], fill=ident.hair,
               width=max(1, int(ident.brow_w * s)))
    # nose
    ny = ey + er
    shade = tuple(int(v * 0.75) for v in ident.skin)
    d.polygon([(cx, ny), (cx - ident.nose_w * s / 2, ny + ident.nose_len * s),
               (cx + ident.nose_w * s / 2, ny + ident.nose_len * s)], fill=shade)
    # mouth: a quadratic arc whose curvature jitters with the expression
    my, mw = ident.mouth_y * s + (cy - s * 0.52), ident.mouth_w * s / 2
    curve = (ident.mouth_curve + rng.normal(0, 0.025)) * s
    xs = np.linspace(-mw, mw, 9)
    pts = [(cx + x, my + curve * (1 - (x / mw) ** 2)) for x in xs]
    d.line(pts, fill=ident.lips, width=max(1, s // 32))
    # occluders on some images
    r = rng.uniform()
    if r < 0.10:
        d.rectangle([cx - fw * 0.95, ey - er * 1.3, cx + fw * 0.95, ey + er * 1.3], fill=(20, 20, 25))
    elif r < 0.17:
        d.rectangle([cx - fw * 0.8, ny + ident.nose_len * s * 0.6, cx + fw * 0.8, cy + fh * 0.9],
                    fill=_color(rng, 150, 255))
    # pose: rotation, scale, shift (about the centre)
    angle = rng.uniform(-12, 12)
    scale = rng.uniform(0.9, 1.1)
    shift = rng.uniform(-0.08, 0.08, 2) * s
    img = img.rotate(angle, resample=Image.BILINEAR, center=(cx, cy), translate=tuple(shift), fillcolor=bg)
    if scale != 1.0:
        big = img.resize((int(round(s * scale)),) * 2, Image.BILINEAR)
        off = (big.size[0] - s) // 2
        if off >= 0:
            img = big.crop((off, off, off + s, off + s))
        else:
            canvas = Image.new("RGB", (s, s), bg)
            canvas.paste(big, (-off, -off))
            img = canvas
    if rng.uniform() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.0)))
    small = np.asarray(img.resize((size, size), Image.LANCZOS), dtype=np.float32)
    # lighting: contrast, brightness, colour cast, a left-right gradient; then pixel noise
    mean = small.mean()
    small = (small - mean) * rng.uniform(0.7, 1.3) + mean * rng.uniform(0.7, 1.3)
    small = small * rng.uniform(0.85, 1.15, 3) * np.linspace(1 - rng.uniform(-0.3, 0.3), 1 + rng.uniform(-0.3, 0.3),
                                                             size)[None, :, None]
    small = small + rng.normal(0, rng.uniform(2, 10), small.shape)
    return np.clip(np.round(small), 0, 255).astype(np.uint8)
