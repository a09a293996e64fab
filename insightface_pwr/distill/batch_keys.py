"""The side channel that tells the hooks WHICH records (and which of them are mirrored) a batch holds.

arcface_torch's loop unpacks ``for _, (img, local_labels) in enumerate(train_loader)``: there is no room for the
record indices a teacher-embedding cache needs. So the loaders that know them (the CPU host's batches, the opt-in
``data_backend = "insightface_pwr"`` loader) *publish* them right before yielding a batch, together with the very
image tensor they yield, and the cached teacher *takes* them at step time::

    BATCH_KEYS.publish(img, keys, flips)        # loader, just before `yield img, labels`
    keys, flips, emb = BATCH_KEYS.take(img)     # hooks.step -> CachedTeacher(img)

A loader that already looked the teacher embeddings up (in its DataLoader workers:
:class:`~insightface_pwr.distill.teacher_cache.AttachEmbeddings`) publishes them too,
``publish(img, keys, flips, embeddings=emb)``, and the cached teacher uses them instead of looking up on the
training thread; ``take`` returns ``None`` for ``emb`` otherwise.

``take`` checks that ``img`` IS the published tensor (object identity), so a batch that did not come through a
publishing loader (upstream's MXNet or DALI loader, a prefetching wrapper that runs ahead, a copy made between the
loader and the step) fails loudly instead of being distilled against another batch's embeddings.

Limits: one channel per process (each gloo rank is its own process); the loop must pass the yielded tensor itself
to ``hooks.step`` (arcface_torch and the host do); a wrapper that prefetches batch k+1 before step k publishes
k+1's keys and is refused by the identity check (never silently wrong).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..infra.errors import UserError
__all__ = ["BatchKeys", "BATCH_KEYS", "BatchKeysError"]


class BatchKeysError(UserError, RuntimeError):
    """The step's images did not come with published record keys."""


class BatchKeys:
    """Holds the last published ``(images, keys, flips)`` of this process."""

    def __init__(self) -> None:
        self._entry: Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]]] = None

    def publish(self, images: torch.Tensor, keys: torch.Tensor, flips: torch.Tensor,
                embeddings: Optional[torch.Tensor] = None) -> None:
        """Record that ``images`` (N x ...) hold the records ``keys`` (N int64), mirrored where ``flips`` (N bool),
        and, when given, that ``embeddings`` (N x D, as the loader made them: kept as is, pinned memory included)
        are their cached teacher embeddings."""
        keys = torch.as_tensor(keys).reshape(-1).to(torch.int64)
        flips = torch.as_tensor(flips).reshape(-1).to(torch.bool)
        if not (images.shape[0] == keys.numel() == flips.numel()):
            raise BatchKeysError(f"a batch of {images.shape[0]} images was published with {keys.numel()} keys and "
                                 f"{flips.numel()} flip flags")
        if embeddings is not None and (embeddings.dim() != 2 or embeddings.shape[0] != images.shape[0]):
            raise BatchKeysError(f"a batch of {images.shape[0]} images was published with embeddings of shape "
                                 f"{tuple(embeddings.shape)} (expected {images.shape[0]} x D)")
        self._entry = (images, keys.cpu(), flips.cpu(), embeddings)

    def take(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """``(keys, flips, embeddings or None)`` of ``images``, which must be the tensor last published."""
        if self._entry is None:
            raise BatchKeysError(
                "no record keys were published for this batch: a teacher-embedding cache "
                "(config.distill.teacher.cache) needs a loader that publishes them: the CPU host, or arcface_torch "
                "with config.data_backend = 'insightface_pwr' (upstream's MXNet/DALI loaders cannot)")
        published, keys, flips, embeddings = self._entry
        if published is not images:
            raise BatchKeysError(
                f"the step's images (shape {tuple(images.shape)}) are not the batch the loader last published "
                f"(shape {tuple(published.shape)}): the training loop must pass the yielded tensor itself to "
                f"hooks.step, with no prefetching wrapper between the loader and the step")
        return keys, flips, embeddings

    def clear(self) -> None:
        self._entry = None


BATCH_KEYS = BatchKeys()
