"""Build an InsightFace RecordIO set (``train.rec``, ``train.idx``, ``property``) from an image folder.

Input: ``<root>/<identity>/<image>``; identities are the sub-folders in sorted name order (class ``c`` is the
``c``-th), images the files of each in sorted name order with an image suffix (``.jpg``, ``.jpeg``, ``.png``,
``.bmp``, ``.webp``; other files are ignored, an identity without images is an error naming its folder). Hidden
folders and files (names starting with ``.``: ``.ipynb_checkpoints``, ``.DS_Store``, macOS ``._*`` files) are
skipped, so they never become an identity that shifts every label. Every image is fully decoded while building
(a truncated JPEG is refused naming its file, not found when training reaches it) and must have the size of the
first one. Output, as InsightFace writes it (and MXNet reads it):

* key 0: header ``IRHeader(flag=2, label=[1 + N, 1 + N + C], id=0, id2=0)``, empty payload;
* keys ``1..N``: ``IRHeader(0, class, key, 0)`` + the image file's bytes, unchanged (no re-encoding);
* keys ``N + 1 .. N + C``: identity ranges ``IRHeader(2, [first key, end key), key, 0)``, empty payload;
* ``property``: ``C,H,W`` and a newline, with the size of the first image (every image must have that size).

Every file is written to a temporary name and renamed into place when complete.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Tuple, Union

from ..infra.atomic import atomic_write_text
from ..infra.progress import progress_bar
from .errors import DataFileError
from .images import decode_image
from .recordio import IRHeader, MXIndexedRecordIO, pack

__all__ = ["IMAGE_SUFFIXES", "scan_image_folder", "build_recordio"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
PathLike = Union[str, "os.PathLike[str]"]


def scan_image_folder(root: PathLike) -> List[Tuple[str, List[Path]]]:
    """``[(identity, [image paths])]`` in class order (see the module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise DataFileError(root, "image folder not found (expected <root>/<identity>/<image>)")
    identities = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = sorted(p for p in d.iterdir()
                        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise DataFileError(d, f"identity folder has no images (files ending {', '.join(IMAGE_SUFFIXES[:-1])} or "
                                   f"{IMAGE_SUFFIXES[-1]}; hidden files are skipped)")
        identities.append((d.name, images))
    if not identities:
        raise DataFileError(root, "no identity sub-folders (expected <root>/<identity>/<image>)")
    return identities


def _read_image(path: Path) -> Tuple[bytes, Tuple[int, int]]:
    """The file's bytes and its ``(height, width)``, after decoding it fully (a truncated file raises)."""
    data = path.read_bytes()
    return data, decode_image(data, source=path).shape[:2]


def build_recordio(root: PathLike, out_dir: PathLike, progress: bool = True) -> Dict[str, int]:
    """Write ``out_dir/train.rec``, ``train.idx`` and ``property`` from ``root``; returns the counts."""
    identities = scan_image_folder(root)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_images = sum(len(images) for _, images in identities)
    n_classes = len(identities)
    bar = progress_bar(n_images, "build-rec", "img", progress)
    size = None
    ranges = []
    with MXIndexedRecordIO(out / "train.idx", out / "train.rec", "w") as writer:
        writer.write_idx(0, pack(IRHeader(2, [1 + n_images, 1 + n_images + n_classes], 0, 0), b""))
        key = 1
        for label, (_, images) in enumerate(identities):
            first = key
            for path in images:
                data, hw = _read_image(path)
                if size is None:
                    size = hw
                elif hw != size:
                    raise DataFileError(path, f"image is {hw[0]}x{hw[1]}, the first image is {size[0]}x{size[1]}; "
                                              f"a RecordIO set holds aligned faces of one size")
                writer.write_idx(key, pack(IRHeader(0, float(label), key, 0), data))
                key += 1
                if bar is not None:
                    bar.update(1)
            ranges.append((first, key))
        for first, end in ranges:
            writer.write_idx(key, pack(IRHeader(2, [first, end], key, 0), b""))
            key += 1
    if bar is not None:
        bar.close()
    atomic_write_text(out / "property", f"{n_classes},{size[0]},{size[1]}\n")
    return {"images": n_images, "identities": n_classes, "height": size[0], "width": size[1]}
