"""The teacher cache inside the real, patched arcface_torch ``train_v2.py`` (run on CPU, opt-in data layer).

The runner (``upstream_helpers``' CPU stand-ins + the lines below) stands in only for what cannot run here (NCCL ->
gloo, CUDA calls, partial FC's ``.cuda()``, a tiny backbone, tensorboard); the loop, the config loader, the sampler
and the hook calls are upstream's + our patches. Every cached lookup is compared with the live TorchScript teacher
on the very batch the loop passes."""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from test_teacher_cache import make, write_rec, write_teacher  # noqa: E402
from upstream_helpers import (cpu_runner, extract_upstream, patched_copy, run_cpu_runner,  # noqa: E402
                              require_upstream_snapshot)

# on top of upstream_helpers' CPU stand-ins (1 thread)
_RUNNER = cpu_runner(r'''
def get_model(name, dropout=0.0, fp16=False, num_features=512):
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 4, stride=4), torch.nn.BatchNorm2d(4),
                               torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(16, num_features))
sys.modules["backbones"] = types.SimpleNamespace(get_model=get_model)
sys.modules["dataset"] = None  # upstream's MXNet data layer must not be needed
sys.modules["eval.verification"] = None

from insightface_pwr.distill import teacher_cache
live = torch.jit.load("teacher.pt").eval()
steps = []
_call = teacher_cache.CachedTeacher.__call__
def spy(self, img):
    out = _call(self, img)
    keys, flips, _ = self.channel.take(img)
    with torch.no_grad():
        ref = live(img)
    bound = (2.0 ** -11) * ref.abs() * (1 + 1e-4) + 2.0 ** -25
    steps.append({"keys": keys.tolist(), "flips": flips.tolist(), "within_fp16": bool(((out - ref).abs() <= bound).all()),
                  "max_abs_err": float((out - ref).abs().max())})
    return out
teacher_cache.CachedTeacher.__call__ = spy

sys.argv = ["train.py", "configs/cpu_cache.py"]
runpy.run_path("train.py", run_name="__main__")
print("RESULTS " + json.dumps(steps))
''', threads=1)

_CONFIG = """
from easydict import EasyDict as edict
config = edict()
config.network = "tiny"
config.embedding_size = 8
config.batch_size = 5
config.num_classes = 3
config.num_image = 20
config.num_epoch = 2
config.warmup_epoch = 0
config.rec = {rec!r}
config.val_targets = []
config.frequent = 1
config.verbose = 1000
config.num_workers = 0
config.output = "work_dirs/cache"
config.data_backend = "insightface_pwr"
config.distill = edict(teacher=edict(weights="teacher.pt", cache={cache!r}, input_size=(12, 12)),
                       heads=[edict(name="rkd_d", weight=1.0)])
"""


def test_patched_train_v2_trains_from_the_cache(tmp_path):
    require_upstream_snapshot()
    tree = patched_copy(extract_upstream(tmp_path / "up"), tmp_path / "arcface_torch")
    write_rec(tmp_path / "rec")  # 20 records, 12 x 12
    teacher = write_teacher(tree / "teacher.pt")
    make(tmp_path, teacher)
    (tree / "configs" / "cpu_cache.py").write_text(_CONFIG.format(rec=str(tmp_path / "rec"),
                                                                  cache=str(tmp_path / "cache.npy")))
    steps = run_cpu_runner(_RUNNER, tree, threads=1)
    assert len(steps) == 8  # 2 epochs x 20 // 5 batches: every step looked its teacher embeddings up
    assert all(s["within_fp16"] for s in steps), max(s["max_abs_err"] for s in steps)
    for epoch in (steps[:4], steps[4:]):  # upstream's sampler: each epoch a permutation of the 20 records
        assert sorted(k for s in epoch for k in s["keys"]) == list(range(1, 21))
    flips = [f for s in steps for f in s["flips"]]
    assert 0 < sum(flips) < len(flips)  # the random flip happened, and the mirrored embeddings were used
