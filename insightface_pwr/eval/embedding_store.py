"""Each image embedded once per model: a store of plain and mirrored embeddings keyed by the image's bytes.

:class:`EmbeddingStore` keys an encoded image by the SHA-1 of its bytes; :meth:`EmbeddingStore.embed` returns the
plain and flip embeddings of a list of encoded images, running the model only on images (bytes) it has not seen:
an image that appears twice in a set, in two sets, or in an earlier call is decoded and embedded once. The model
sees batches of ``2 x batch_size`` (the images then their mirrors, so the flip costs no extra call), and a thread
pool decodes the next batches while the model runs the current one (JPEG decoding releases the GIL).
"""
from __future__ import annotations

import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..data.errors import DataFileError
from ..data.images import decode_image
from ..infra.progress import progress_bar

__all__ = ["EmbeddingStore", "image_key"]

Encoded = Union[bytes, np.ndarray]


def image_key(data: Encoded) -> bytes:
    """The SHA-1 digest of an encoded image's bytes (a uint8 array is hashed as its bytes)."""
    return hashlib.sha1(data.tobytes() if isinstance(data, np.ndarray) else bytes(data)).digest()


def _decode_batch(items: Sequence[Tuple[Encoded, str, object]], size: int, resize: bool = False) -> torch.Tensor:
    """``2B x 3 x size x size`` uint8: the B images, then their mirrors (``resize``: images of another size are
    resized, PIL bilinear with antialiasing, for students trained at a lower resolution; else they are an error)."""
    out = np.empty((2 * len(items), 3, size, size), dtype=np.uint8)
    for i, (data, source, record) in enumerate(items):
        img = decode_image(data, source=source, record=record)
        if resize and img.shape[:2] != (size, size):
            from PIL import Image
            img = np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))
        if img.shape[:2] != (size, size):
            raise DataFileError(source, f"image is {img.shape[0]}x{img.shape[1]}, expected {size}x{size} aligned "
                                        f"faces (--image-size)", record)
        chw = img.transpose(2, 0, 1)
        out[i] = chw
        out[len(items) + i] = chw[:, :, ::-1]
    return torch.from_numpy(out)


class EmbeddingStore:
    """Plain and flip embeddings of one model, computed once per distinct image.

    ``model(images_uint8_nchw) -> N x D`` numpy; ``model_seconds`` (if the model has ``seconds``) is the time
    spent inside the model, so ``wall_seconds / model_seconds`` is the overhead of decoding and bookkeeping."""

    def __init__(self, model: Callable[[torch.Tensor], np.ndarray], image_size: int = 112, batch_size: int = 64,
                 decode_threads: Optional[int] = None, progress: bool = True, resize: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.image_size, self.batch_size, self.progress = model, image_size, batch_size, progress
        self.resize = bool(resize)
        self.decode_threads = decode_threads or max(1, min(4, (os.cpu_count() or 2) // 2))
        self._index: Dict[bytes, int] = {}
        self._plain: List[np.ndarray] = []
        self._flip: List[np.ndarray] = []
        self.wall_seconds = 0.0
        self.embedded = 0  # distinct images run through the model (each also mirrored)

    @property
    def model_seconds(self) -> float:
        return float(getattr(self.model, "seconds", float("nan")))

    def __len__(self) -> int:
        return len(self._index)

    def embed(self, images: Sequence[Encoded], source: str = "<images>", desc: str = "embedding"
              ) -> Tuple[np.ndarray, np.ndarray]:
        """``(plain, flipped)``, each ``len(images) x D`` float32, in the order of ``images``."""
        if len(images) == 0:
            raise ValueError(f"{source}: no images to embed")
        start = time.perf_counter()
        keys = [image_key(b) for b in images]
        todo: List[Tuple[Encoded, str, object]] = []
        pending: Dict[bytes, int] = {}
        for i, (k, b) in enumerate(zip(keys, images)):
            if k not in self._index and k not in pending:
                pending[k] = len(todo)
                todo.append((b, source, f"image {i}"))
        if todo:
            base = sum(len(p) for p in self._plain)
            self._run(todo, desc)
            for k, j in pending.items():
                self._index[k] = base + j
        plain, flip = np.concatenate(self._plain), np.concatenate(self._flip)
        self._plain, self._flip = [plain], [flip]  # one array from now on (cheap repeated lookups)
        rows = np.fromiter((self._index[k] for k in keys), dtype=np.int64, count=len(keys))
        self.wall_seconds += time.perf_counter() - start
        return plain[rows], flip[rows]

    def _run(self, todo: List[Tuple[Encoded, str, object]], desc: str) -> None:
        batches = [todo[s:s + self.batch_size] for s in range(0, len(todo), self.batch_size)]
        bar = progress_bar(len(todo), desc, "img", self.progress)
        ahead = self.decode_threads + 1
        with ThreadPoolExecutor(self.decode_threads, thread_name_prefix="decode") as pool:
            futures = [pool.submit(_decode_batch, b, self.image_size, self.resize) for b in batches[:ahead]]
            for i, batch in enumerate(batches):
                x = futures[i].result()
                if i + ahead < len(batches):  # keep the decoders busy while the model runs
                    futures.append(pool.submit(_decode_batch, batches[i + ahead], self.image_size, self.resize))
                out = np.asarray(self.model(x), dtype=np.float32)
                if out.ndim != 2 or out.shape[0] != len(x):
                    raise ValueError(f"the model returned shape {out.shape} for {len(x)} images (expected N x D)")
                self._plain.append(out[:len(batch)])
                self._flip.append(out[len(batch):])
                self.embedded += len(batch)
                if bar is not None:
                    bar.update(len(batch))
        if bar is not None:
            bar.close()
