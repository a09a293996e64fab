"""Per-chunk sha256 in the metadata, checked when a cache is opened for training: zeroed or altered rows are refused,
naming the chunk and its rows. The checksums are compared with an independent sha256 of numpy's view of the rows."""
import hashlib
import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from test_teacher_cache import H, W, kit, make  # noqa: E402,F401  (kit: the fixture)

from insightface_pwr.distill.teacher_cache import CacheError, TeacherCache, open_cached_teacher  # noqa: E402


def _spec(tmp_path, teacher):
    return {"cache": str(tmp_path / "cache.npy"), "weights": teacher, "input_size": (H, W)}


def test_chunk_checksums_are_the_sha256_of_each_chunks_rows(kit):  # noqa: F811
    tmp_path, images, teacher = kit
    meta = make(tmp_path, teacher)  # 20 records, chunks of 8: rows 0..7, 8..15, 16..19
    arr = np.load(tmp_path / "cache.npy")
    expect = [hashlib.sha256(arr[lo:lo + 8].tobytes()).hexdigest() for lo in (0, 8, 16)]
    assert meta["chunk_sha256"] == expect
    assert json.loads((tmp_path / "cache.npy.json").read_text())["chunk_sha256"] == expect
    TeacherCache(tmp_path / "cache.npy")  # verify="full" by default: accepted


@pytest.mark.parametrize("rows,chunks", [((9, 11), "chunk 1 (rows 8..15)"),
                                         ((0, 20), "3 of 3 chunks: chunk 0 (rows 0..7), chunk 1 (rows 8..15), "
                                                   "chunk 2 (rows 16..19)")])
def test_zeroed_rows_are_refused_naming_the_chunk(kit, rows, chunks):  # noqa: F811
    tmp_path, images, teacher = kit
    make(tmp_path, teacher)
    arr = np.load(tmp_path / "cache.npy", mmap_mode="r+")
    assert np.abs(arr[rows[0]:rows[1]]).max() > 0
    arr[rows[0]:rows[1]] = 0  # what a second writer's truncation left behind
    arr.flush()
    del arr
    with pytest.raises(CacheError, match=rf"cache\.npy' refused: .*{chunks}".replace("(", r"\(").replace(")", r"\)")
                       .replace("..", r"\.\.")):
        TeacherCache(tmp_path / "cache.npy")
    with pytest.raises(CacheError, match=r"chunk .*rows zeroed or altered"):  # training's entry point too
        open_cached_teacher(_spec(tmp_path, teacher), str(tmp_path / "rec"))
    TeacherCache(tmp_path / "cache.npy", verify="none")  # the explicit opt-out still opens it


def test_one_altered_value_is_refused(kit):  # noqa: F811
    tmp_path, images, teacher = kit
    make(tmp_path, teacher)
    arr = np.load(tmp_path / "cache.npy", mmap_mode="r+")
    arr[19, 1, 7] = np.nextafter(arr[19, 1, 7], np.float16(np.inf))  # one ulp of one value of the last row
    arr.flush()
    del arr
    with pytest.raises(CacheError, match=r"1 of 3 chunks: chunk 2 \(rows 16\.\.19\)"):
        TeacherCache(tmp_path / "cache.npy")


def test_a_cache_without_checksums_needs_verify_none(kit):  # noqa: F811
    tmp_path, images, teacher = kit
    make(tmp_path, teacher)
    meta_path = tmp_path / "cache.npy.json"
    meta = json.loads(meta_path.read_text())
    del meta["chunk_sha256"]
    meta["format"] = "insightface_pwr.distill.teacher_cache/1"  # as the previous version wrote it
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CacheError, match=r"no chunk checksums .*teacher_cache/1.*verify='none'"):
        TeacherCache(tmp_path / "cache.npy")
    assert TeacherCache(tmp_path / "cache.npy", verify="none").lookup([1], [True]).shape == (1, 8)
    with pytest.raises(CacheError, match="differs in: format"):  # and is not resumed by the new builder
        make(tmp_path, teacher)
    with pytest.raises(CacheError, match=r"verify must be one of \('full', 'none'\), got 'fast'"):
        TeacherCache(tmp_path / "cache.npy", verify="fast")
