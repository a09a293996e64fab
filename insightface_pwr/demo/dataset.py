"""Write the synthetic faces as InsightFace files: a RecordIO training folder and a verification ``.bin``.

RecordIO folder (InsightFace's layout, as MXNet's ``im2rec`` and ``MXFaceDataset`` use it; written with the data
layer's :class:`~insightface_pwr.data.recordio.MXIndexedRecordIO`): ``train.rec`` + ``train.idx`` + ``property``
(``num_classes,H,W``); record 0 is a header with ``flag 2`` and label ``[N + 1, N + 1 + C]``; records ``1..N`` are
JPEG images whose float label is the class (images of one class are consecutive); records ``N + 1 .. N + C`` hold
each class's record range ``[start, end)``.

Verification ``.bin``: a pickle of ``(bins, issame)`` (``bins``: ``2 P`` encoded images as ``bytes``, pair ``i``
= images ``2i, 2i + 1``; ``issame``: ``P`` bools), as InsightFace's ``lfw2pack.py`` writes it. Half the pairs
show one identity, half two; every identity here is one that the training set does not contain.
"""
from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Iterable, List, Tuple, Union

import numpy as np

from ..infra.atomic import atomic_write_bytes
from ..infra.progress import progress_bar
from ..data.recordio import IRHeader, MXIndexedRecordIO, pack
from .faces import make_identity, render_face

__all__ = ["encode_jpeg", "write_identity_recordio", "write_verification_bin", "identity_images"]

PathLike = Union[str, "os.PathLike[str]"]


def encode_jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    """``H x W x 3`` uint8 RGB -> JPEG bytes."""
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def identity_images(seed: int, identity: int, count: int, size: int, salt: int = 0) -> List[np.ndarray]:
    """``count`` images of ``identity``; ``salt`` separates the draws of different files."""
    ident = make_identity(seed, identity)
    rng = np.random.default_rng((int(seed), int(identity), 2, int(salt)))
    return [render_face(ident, rng, size) for _ in range(count)]


def write_identity_recordio(folder: PathLike, identities: Iterable[int], per_identity: int, size: int, seed: int,
                            progress: bool = True, desc: str = "faces") -> Tuple[int, int]:
    """Write ``per_identity`` images of each identity to ``folder/train.{rec,idx}`` and ``folder/property``.

    Class ``c`` is the c-th identity of ``identities``. Returns ``(num_classes, num_images)``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    identities = list(identities)
    n, c = len(identities) * per_identity, len(identities)
    bar = progress_bar(n, desc, "img", progress)
    with MXIndexedRecordIO(str(folder / "train.idx"), str(folder / "train.rec"), "w") as rec:
        rec.write_idx(0, pack(IRHeader(2, [n + 1, n + 1 + c], 0, 0), b""))
        key = 1
        for label, ident in enumerate(identities):
            for img in identity_images(seed, ident, per_identity, size):
                rec.write_idx(key, pack(IRHeader(0, float(label), key, 0), encode_jpeg(img)))
                key += 1
                if bar is not None:
                    bar.update(1)
        for label in range(c):
            start = 1 + label * per_identity
            rec.write_idx(n + 1 + label, pack(IRHeader(2, [start, start + per_identity], 0, 0), b""))
    if bar is not None:
        bar.close()
    atomic_write_bytes(folder / "property", f"{c},{size},{size}\n".encode())
    return c, n


def write_verification_bin(path: PathLike, identities: Iterable[int], pairs: int, size: int, seed: int,
                           progress: bool = True) -> int:
    """Write ``pairs`` verification pairs (half same, half different, interleaved) of ``identities``."""
    identities = list(identities)
    if len(identities) < 2 or pairs < 2:
        raise ValueError(f"a verification set needs >= 2 identities and >= 2 pairs, got {len(identities)}, {pairs}")
    rng = np.random.default_rng((int(seed), 3))
    bar = progress_bar(2 * pairs, Path(path).name, "img", progress)
    bins: List[bytes] = []
    issame: List[bool] = []
    for i in range(pairs):
        same = i % 2 == 0
        if same:
            a = int(rng.choice(identities))
            imgs = identity_images(seed, a, 2, size, salt=1000 + i)
        else:
            a, b = (int(v) for v in rng.choice(identities, 2, replace=False))
            imgs = identity_images(seed, a, 1, size, salt=1000 + i) + identity_images(seed, b, 1, size, salt=1000 + i)
        bins += [encode_jpeg(im) for im in imgs]
        issame.append(same)
        if bar is not None:
            bar.update(2)
    if bar is not None:
        bar.close()
    atomic_write_bytes(Path(path), pickle.dumps((bins, issame), protocol=pickle.HIGHEST_PROTOCOL))
    return pairs
