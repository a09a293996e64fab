"""Two writers of the same cache: the second is refused at once (an exclusive lock on ``OUT.lock``), the first's result
is the same bytes as an undisturbed run. Before the lock, a second ``cache-teacher`` (with ``--overwrite``, or
resuming the first's committed chunks) wrote into the array under the first run."""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from test_teacher_cache import kit, make  # noqa: E402,F401  (kit: the fixture)

from insightface_pwr.distill.teacher_cache import CacheError, TeacherCache  # noqa: E402

# the first writer: a teacher that, during chunk 1 (chunk 0 committed), says "paused" and waits for "go"
_FIRST = """
import os, sys, time
sys.path.insert(0, {tests!r})
from pathlib import Path
import test_teacher_cache as t
tmp = Path({tmp!r})
model = t.live({teacher!r})
calls = [0]
def teacher(x):
    calls[0] += 1
    if calls[0] == 6:  # 1 probe call + chunk 0 (2 batches x 2 flips) + the first batch of chunk 1
        (tmp / "paused").write_text(str(os.getpid()))
        deadline = time.monotonic() + 120
        while not (tmp / "go").exists():
            assert time.monotonic() < deadline, "never told to go on"
            time.sleep(0.02)
    return model(x)
t.build_cache(teacher, t.info({teacher!r}), tmp / "rec", tmp / "cache.npy", batch_size=4, chunk_batches=2,
              progress=False, log=lambda s: None)
"""


def _second(tmp_path, teacher, *extra):
    """``insightface-pwr cache-teacher`` on the same OUT, as a user would start it twice."""
    cmd = [sys.executable, "-m", "insightface_pwr", "cache-teacher", "--teacher", teacher, "--rec",
           str(tmp_path / "rec"), "--out", str(tmp_path / "cache.npy"), "--batch-size", "4", "--chunk-batches", "2",
           "--no-progress", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


@pytest.mark.parametrize("extra", [(), ("--overwrite",)], ids=["same-command", "overwrite"])
def test_a_second_writer_is_refused_and_the_first_finishes_correctly(kit, extra):  # noqa: F811
    tmp_path, images, teacher = kit
    make(tmp_path, teacher, name="straight.npy")  # the undisturbed reference
    first = subprocess.Popen([sys.executable, "-c", _FIRST.format(tests=os.path.dirname(__file__),
                                                                  tmp=str(tmp_path), teacher=teacher)],
                             stderr=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "paused").exists():
            assert first.poll() is None, first.stderr.read()[-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert json.loads((tmp_path / "cache.npy.json").read_text())["chunks_done"] == 1  # mid-build
        second = _second(tmp_path, teacher, *extra)
    finally:
        (tmp_path / "go").write_text("")
        rc = first.wait(timeout=120)
    assert rc == 0, first.stderr.read()[-2000:]
    # refused at once, one line naming the file and the holder
    assert second.returncode == 1, (second.returncode, second.stdout, second.stderr)
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1, second.stderr
    assert lines[0].startswith("error: teacher cache ") and "cache.npy.lock" in lines[0], lines[0]
    assert f"being written by another insightface-pwr cache-teacher run (pid {first.pid}," in lines[0], lines[0]
    # the first run's result is intact: the same bytes as the undisturbed run, and it opens for training
    assert (tmp_path / "cache.npy").read_bytes() == (tmp_path / "straight.npy").read_bytes()
    a = json.loads((tmp_path / "cache.npy.json").read_text())
    assert a == json.loads((tmp_path / "straight.npy.json").read_text()) and a["complete"]
    TeacherCache(tmp_path / "cache.npy")
    assert not (tmp_path / "cache.npy.lock").exists()  # removed on release
    # the lock is released with the run: the same command now just reports the finished cache
    again = _second(tmp_path, teacher)
    assert again.returncode == 0, again.stderr


def test_lock_refusal_in_process_names_the_lock_file(kit):  # noqa: F811
    """In one process: while the lock is held, build_cache refuses (the error names OUT.lock and this pid)."""
    from insightface_pwr.distill.teacher_cache.lock import exclusive_lock
    tmp_path, images, teacher = kit
    with exclusive_lock(tmp_path / "cache.npy"):
        with pytest.raises(CacheError, match=rf"pid {os.getpid()}, lock .*cache\.npy\.lock"):
            make(tmp_path, teacher)
    assert not (tmp_path / "cache.npy.json").exists()  # refused before touching anything
    make(tmp_path, teacher)
    assert np.load(tmp_path / "cache.npy").shape == (20, 2, 8)
