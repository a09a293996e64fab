"""Lookups off the training thread: the key index (numpy, against a dict reference), a picklable cache whose memory
map is reopened per process, a DataLoader whose workers attach the embeddings to each batch (fork and spawn), and
the cached teacher using the carried embeddings instead of looking up."""
import os
import pickle
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from test_teacher_cache import assert_fp16_close, kit, live, make, reference_input  # noqa: E402,F401

from insightface_pwr.distill.batch_keys import BatchKeys, BatchKeysError  # noqa: E402
from insightface_pwr.distill.teacher_cache import CacheError, CachedTeacher, TeacherCache  # noqa: E402
from insightface_pwr.distill.teacher_cache.index import KeyIndex  # noqa: E402
from insightface_pwr.distill.teacher_cache.read import AttachEmbeddings  # noqa: E402


def test_key_index_against_a_dict():
    rng = np.random.default_rng(0)
    ranges = [[100, 105], [1, 4], [50, 51], [10, 20], [7, 8]]  # unsorted, with gaps: rows follow the listed order
    reference = {}
    for a, b in ranges:
        for k in range(a, b):
            reference[k] = len(reference)
    index = KeyIndex(ranges)
    assert index.count == len(reference) == 20
    probe = rng.integers(-3, 110, size=500)
    expect = np.array([reference.get(int(k), -1) for k in probe])
    assert (index.rows(probe) == expect).all() and (expect >= 0).any() and (expect < 0).any()
    assert (index.contains(probe) == (expect >= 0)).all()
    with pytest.raises(CacheError, match="record key 12 is listed twice"):
        KeyIndex([[1, 5], [12, 14], [10, 13]])
    with pytest.raises(CacheError, match=r"key range \[5, 5\] is empty"):
        KeyIndex([[5, 5]])


def test_pickled_cache_carries_no_array_and_refuses_a_replaced_file(kit):  # noqa: F811
    tmp_path, images, teacher = kit
    make(tmp_path, teacher)
    cache = TeacherCache(tmp_path / "cache.npy")
    keys, flips = np.array([20, 3, 1, 7]), np.array([True, False, True, False])
    blob = pickle.dumps(cache)
    assert cache.array.tobytes() not in blob  # the memory map is not pickled (it would ship all its bytes)
    clone = pickle.loads(blob)
    assert clone._array is None
    assert np.array_equal(clone.lookup_numpy(keys, flips), cache.lookup_numpy(keys, flips))
    exact = live(teacher)(torch.stack([reference_input(images[k - 1], f) for k, f in zip(keys, flips)]))
    assert_fp16_close(clone.lookup_numpy(keys, flips), exact.numpy())
    out = np.empty((4, 8), np.float32)
    assert clone.lookup_numpy(keys, flips, out=out) is out and np.array_equal(out, cache.lookup_numpy(keys, flips))
    stale = pickle.loads(blob)
    make(tmp_path, teacher, overwrite=True)  # the file is re-made (a new inode) after the cache was opened
    with pytest.raises(CacheError, match="replaced or modified since it was opened"):
        stale.lookup_numpy(keys, flips)


class Records(torch.utils.data.Dataset):
    """(image, label, key, flipped) samples like the opt-in loader's, with a fixed pseudo-random flip per index."""

    def __init__(self, images):
        self.images = images
        self.flips = np.random.default_rng(1).random(len(images)) < 0.5

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        flip = bool(self.flips[i])
        return reference_input(self.images[i], flip), (i % 3), i + 1, flip


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_dataloader_workers_attach_the_same_embeddings_as_the_direct_lookup(kit, context):  # noqa: F811
    tmp_path, images, teacher = kit
    make(tmp_path, teacher)
    cache = TeacherCache(tmp_path / "cache.npy")
    loader = torch.utils.data.DataLoader(Records(images), batch_size=6, shuffle=True, num_workers=2,
                                         collate_fn=AttachEmbeddings(cache), multiprocessing_context=context,
                                         generator=torch.Generator().manual_seed(0))
    model = live(teacher)
    seen = []
    for img, label, key, flip, emb in loader:
        assert emb.dtype == torch.float32 and emb.shape == (len(key), 8)
        assert torch.equal(emb, cache.lookup(key, flip))  # the worker's lookup is the direct one, bit for bit
        assert_fp16_close(emb.numpy(), model(img).numpy())  # and the live teacher's embedding of that very image
        seen += key.tolist()
    assert sorted(seen) == list(range(1, 21))


def test_cached_teacher_uses_carried_embeddings_without_a_lookup():
    channel = BatchKeys()

    class NoLookup:
        embedding_size = 3
        path = "fake.npy"

        def lookup(self, keys, flips, pin_memory=False):
            raise AssertionError("looked up on the training thread although the batch carried its embeddings")

    teacher = CachedTeacher(NoLookup(), channel)
    img = torch.zeros(2, 3, 4, 4)
    emb = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    channel.publish(img, torch.tensor([5, 6]), torch.tensor([True, False]), embeddings=emb)
    assert torch.equal(teacher(img), emb)
    keys, flips, carried = channel.take(img)
    assert keys.tolist() == [5, 6] and flips.tolist() == [True, False] and carried is emb
    channel.publish(img, torch.tensor([5, 6]), torch.tensor([True, False]), embeddings=torch.zeros(2, 4))
    with pytest.raises(CacheError, match=r"embeddings of shape \(2, 4\) for 2 images, expected \(2, 3\)"):
        teacher(img)
    with pytest.raises(BatchKeysError, match=r"embeddings of shape \(3, 3\) \(expected 2 x D\)"):
        channel.publish(img, torch.tensor([5, 6]), torch.tensor([True, False]), embeddings=torch.zeros(3, 3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (pinned host memory)")
def test_pinned_lookup_on_cuda(kit):  # noqa: F811
    tmp_path, images, teacher = kit
    make(tmp_path, teacher)
    cache = TeacherCache(tmp_path / "cache.npy")
    keys, flips = torch.tensor([2, 9, 20]), torch.tensor([False, True, True])
    pinned = cache.lookup(keys, flips, pin_memory=True)
    assert pinned.is_pinned() and torch.equal(pinned, cache.lookup(keys, flips))
    channel = BatchKeys()
    img = torch.zeros(3, 3, 12, 12, device="cuda")
    channel.publish(img, keys, flips)
    got = CachedTeacher(cache, channel)(img)
    assert got.is_cuda and torch.equal(got.cpu(), pinned)
