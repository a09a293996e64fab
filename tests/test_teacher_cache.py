"""Teacher-embedding cache: values against the live teacher, resumption after SIGKILL, refusals, the hooks path.

Every test writes its own tiny RecordIO set (PNG images, InsightFace layout: record 0 is the header) with the data
layer's writer, and a tiny TorchScript teacher."""
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from easydict import EasyDict as edict

from insightface_pwr.distill.batch_keys import BatchKeys, BatchKeysError
from insightface_pwr.data.recordio import IRHeader, MXIndexedRecordIO, pack
from insightface_pwr.distill.teacher_cache import (CacheError, CachedTeacher, TeacherCache, build_cache, recordio_fingerprint,
                                           sha256_file)

PIL = pytest.importorskip("PIL.Image")
H = W = 12
FP16_RTOL = 2.0 ** -11  # float16 round-to-nearest: relative error <= 2**-11 (normal range)


def write_rec(folder, n=20, seed=0, classes=3, size=(H, W)):
    """An InsightFace-layout RecordIO set of ``n`` random PNG faces; returns the list of uint8 RGB images."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, size=(*size, 3), dtype=np.uint8) for _ in range(n)]
    w = MXIndexedRecordIO(os.path.join(folder, "train.idx"), os.path.join(folder, "train.rec"), "w")
    w.write_idx(0, pack(IRHeader(2, [n + 1, n + 1 + classes], 0, 0), b""))
    for i, img in enumerate(images):
        buf = io.BytesIO()
        PIL.fromarray(img).save(buf, format="PNG")
        w.write_idx(i + 1, pack(IRHeader(0, float(i % classes), i + 1, 0), buf.getvalue()))
    w.close()
    return images


class TinyTeacher(torch.nn.Module):
    def __init__(self, dim=8):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, 2, 1)
        self.fc = torch.nn.Linear(4 * 4, dim)

    def forward(self, x):
        x = torch.nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), 2)
        return self.fc(x.flatten(1)) * 3.0


def write_teacher(path, seed=0, dim=8):
    torch.manual_seed(seed)
    torch.jit.script(TinyTeacher(dim).eval()).save(str(path))
    return str(path)


def live(path):
    m = torch.jit.load(str(path)).eval()
    return lambda x: m(x).detach()


def info(path):
    return {"path": str(path), "sha256": sha256_file(path), "format": "torchscript", "network": None}


def reference_input(img, flip):
    """The training transform, written out by hand: mirror, (pixel - 127.5) / 127.5, HWC -> CHW."""
    x = img[:, ::-1] if flip else img
    return torch.tensor((x.astype(np.float64) - 127.5) / 127.5, dtype=torch.float32).permute(2, 0, 1)


@pytest.fixture
def kit(tmp_path):
    images = write_rec(tmp_path / "rec")
    teacher = write_teacher(tmp_path / "teacher.pt")
    return tmp_path, images, teacher


def make(tmp_path, teacher, name="cache.npy", **kw):
    kw = {"batch_size": 4, "chunk_batches": 2, "progress": False, "log": lambda s: None, **kw}
    return build_cache(live(teacher), info(teacher), tmp_path / "rec", tmp_path / name, **kw)


def assert_fp16_close(cached, exact):
    cached, exact = np.asarray(cached, np.float64), np.asarray(exact, np.float64)
    bound = FP16_RTOL * np.abs(exact) * (1 + 1e-4) + 2.0 ** -25
    assert (np.abs(cached - exact) <= bound).all(), np.abs(cached - exact).max()


def test_cached_embeddings_equal_the_live_teacher_flipped_and_not(kit):
    tmp_path, images, teacher = kit
    meta = make(tmp_path, teacher)
    assert meta["complete"] and meta["count"] == 20 and meta["num_chunks"] == 3 and meta["keys"] == [[1, 21]]
    arr = np.load(tmp_path / "cache.npy")
    assert arr.dtype == np.float16 and arr.shape == (20, 2, 8)
    model = live(teacher)
    for flip in (0, 1):
        exact = model(torch.stack([reference_input(img, flip) for img in images])).numpy()
        assert_fp16_close(arr[:, flip], exact)
        assert np.abs(exact).max() > 0.1  # not a degenerate teacher
    # the lookup path: keys in any order, mixed flips
    cache = TeacherCache(tmp_path / "cache.npy")
    keys = torch.tensor([20, 3, 1, 7, 7])
    flips = torch.tensor([True, False, True, False, True])
    got = cache.lookup(keys, flips)
    exact = model(torch.stack([reference_input(images[k - 1], f) for k, f in zip(keys.tolist(), flips.tolist())]))
    assert got.dtype == torch.float32
    assert_fp16_close(got.numpy(), exact.numpy())


def test_flip_none_caches_one_column_and_refuses_mirrored_batches(kit):
    tmp_path, images, teacher = kit
    make(tmp_path, teacher, flip="none")
    cache = TeacherCache(tmp_path / "cache.npy")
    assert cache.array.shape == (20, 1, 8)
    cache.lookup(torch.tensor([1, 2]), torch.tensor([False, False]))
    with pytest.raises(CacheError, match="--flip none.*mirrored"):
        cache.lookup(torch.tensor([1, 2]), torch.tensor([False, True]))


_RESUME_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from test_teacher_cache import make
from pathlib import Path
make(Path({tmp!r}), {teacher!r}, name={name!r})
"""


def test_killed_run_resumes_to_a_byte_identical_file(kit):
    tmp_path, images, teacher = kit
    make(tmp_path, teacher, name="straight.npy")
    script = _RESUME_SCRIPT.format(tests=os.path.dirname(__file__), tmp=str(tmp_path), teacher=teacher,
                                   name="resumed.npy")
    env = dict(os.environ, INSIGHTFACE_PWR_FAULT="cache_kill_before_commit:1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    meta = json.loads((tmp_path / "resumed.npy.json").read_text())
    assert meta["chunks_done"] == 1 and not meta["complete"]  # chunk 1 was written but not committed
    with pytest.raises(CacheError, match="incomplete"):
        TeacherCache(tmp_path / "resumed.npy")
    # a cache killed mid-way is refused by training too
    logs = []
    make(tmp_path, teacher, name="resumed.npy", log=logs.append)
    assert any("resuming at chunk 1 of 3" in s for s in logs)
    assert (tmp_path / "resumed.npy").read_bytes() == (tmp_path / "straight.npy").read_bytes()
    a = json.loads((tmp_path / "resumed.npy.json").read_text())
    b = json.loads((tmp_path / "straight.npy.json").read_text())
    assert a == b and a["complete"]
    # running again on a complete cache changes nothing
    make(tmp_path, teacher, name="resumed.npy", log=logs.append)
    assert "already complete" in logs[-1]


def test_resume_with_other_settings_is_refused(kit):
    tmp_path, images, teacher = kit
    make(tmp_path, teacher)
    with pytest.raises(CacheError, match="differs in: .*batch_size"):
        make(tmp_path, teacher, batch_size=2)
    make(tmp_path, teacher, batch_size=2, overwrite=True)
    assert TeacherCache(tmp_path / "cache.npy").meta["batch_size"] == 2
    (tmp_path / "other.npy").write_bytes(b"not a cache")
    with pytest.raises(CacheError, match="not a teacher cache"):
        make(tmp_path, teacher, name="other.npy")


def test_mismatched_caches_are_refused(kit):
    tmp_path, images, teacher = kit
    make(tmp_path, teacher)
    cache = TeacherCache(tmp_path / "cache.npy")
    cache.check(teacher_sha256=sha256_file(teacher), rec_dir=tmp_path / "rec", image_size=(H, W))  # accepted
    other_teacher = write_teacher(tmp_path / "other_teacher.pt", seed=1)
    with pytest.raises(CacheError, match="another teacher"):
        cache.check(teacher_sha256=sha256_file(other_teacher), rec_dir=None)
    write_rec(tmp_path / "rec2", seed=1)  # same layout and sizes, other pixels
    assert recordio_fingerprint(tmp_path / "rec2")["idx_sha256"] == recordio_fingerprint(tmp_path / "rec")["idx_sha256"]
    with pytest.raises(CacheError, match="another RecordIO set.*rec_sample_sha256"):
        cache.check(teacher_sha256=None, rec_dir=tmp_path / "rec2")
    write_rec(tmp_path / "rec3", n=21)
    with pytest.raises(CacheError, match="another RecordIO set"):
        cache.check(teacher_sha256=None, rec_dir=tmp_path / "rec3")
    with pytest.raises(CacheError, match=r"images are \[12, 12\]"):
        cache.check(teacher_sha256=None, rec_dir=None, image_size=(112, 112))
    with pytest.raises(CacheError, match=r"misses 1 of the data set's 21 records \(first: \[21\]\)"):
        cache.check(teacher_sha256=None, rec_dir=None, dataset_keys=list(range(1, 22)))
    with pytest.raises(CacheError, match=r"no embedding for record\(s\) \[0, 21\]"):
        cache.lookup(torch.tensor([1, 0, 21]), torch.zeros(3, dtype=torch.bool))


def test_cached_teacher_takes_the_published_batch_only():
    channel = BatchKeys()

    class Fake:
        embedding_size = 3

        def lookup(self, keys, flips, pin_memory=False):
            return torch.stack([keys.float(), flips.float(), torch.zeros(len(keys))], 1)

    teacher = CachedTeacher(Fake(), channel)
    img = torch.zeros(2, 3, 4, 4)
    with pytest.raises(BatchKeysError, match="no record keys were published"):
        teacher(img)
    channel.publish(img, torch.tensor([5, 6]), torch.tensor([True, False]))
    assert teacher(img).tolist() == [[5.0, 1.0, 0.0], [6.0, 0.0, 0.0]]
    with pytest.raises(BatchKeysError, match="not the batch the loader last published"):
        teacher(img.clone())
    with pytest.raises(BatchKeysError, match="2 images was published with 3 keys"):
        channel.publish(img, torch.tensor([1, 2, 3]), torch.tensor([True, False, True]))


def test_cli_writes_the_cache(kit, capsys):
    from insightface_pwr.cli import main
    tmp_path, images, teacher = kit
    out = tmp_path / "cli.npy"
    assert main(["cache-teacher", "--teacher", teacher, "--rec", str(tmp_path / "rec"), "--out", str(out),
                 "--batch-size", "4", "--chunk-batches", "2"]) == 0
    err = capsys.readouterr().err
    assert "40/40 img" in err and "img/s" in err and "ETA" in err
    make(tmp_path, teacher, name="api.npy")
    assert out.read_bytes() == (tmp_path / "api.npy").read_bytes()
    assert (tmp_path / "cli.npy.json").stat().st_mode & 0o777 == out.stat().st_mode & 0o777  # not mkstemp's 0600


# ------------------------------------------------------------------------------------------------ the hooks path
def _hooks(tmp_path, teacher, cache=None, backend="insightface_pwr"):
    from insightface_pwr.integration.arcface_torch import build_hooks
    from insightface_pwr.models.backbones import get_model
    from insightface_pwr.host.partial_fc import MarginSoftmax, PartialFC
    torch.manual_seed(0)
    backbone = get_model("tiny_cnn", num_features=8)
    pfc = PartialFC(MarginSoftmax(64, 1.0, 0.5, 0.0), 8, 3, 1.0)
    opt = torch.optim.SGD([{"params": backbone.parameters()}, {"params": pfc.parameters()}], lr=0.1)
    t = edict(weights=teacher, input_size=(H, W), classifier=str(tmp_path / "classifier"))
    if cache:
        t.cache = str(cache)
    if not (tmp_path / "classifier").exists():  # the teacher's classifier for HKD (3 classes x 8)
        (tmp_path / "classifier").mkdir()
        torch.save({"state_dict_softmax_fc": {"weight": torch.randn(3, 8, generator=torch.Generator().manual_seed(5))}},
                   tmp_path / "classifier" / "checkpoint_gpu_0.pt")
    cfg = edict(rec=str(tmp_path / "rec"), embedding_size=8, num_classes=3, num_image=20, output=str(tmp_path / "o"),
                frequent=1, margin_list=(1.0, 0.5, 0.0), data_backend=backend,  # a key-publishing loader
                distill=edict(teacher=t, heads=[edict(name="rkd_d", weight=1.0), edict(name="feature", weight=2.0),
                                                edict(name="hkd", weight=1.0)]))
    return build_hooks(cfg, backbone=backbone, partial_fc=pfc, optimizer=opt, rank=0, world_size=1, local_rank=0,
                       model_factory=get_model), backbone, pfc


def test_a_cache_without_a_key_publishing_loader_is_refused_before_training(kit):
    from insightface_pwr.distill.recipe import RecipeError
    tmp_path, images, teacher = kit
    make(tmp_path, teacher)
    _hooks(tmp_path, teacher, cache=tmp_path / "cache.npy")  # with data_backend = "insightface_pwr": accepted
    with pytest.raises(RecipeError, match="data_backend = 'insightface_pwr'"):  # upstream's MXNet/DALI loader
        _hooks(tmp_path, teacher, cache=tmp_path / "cache.npy", backend=None)


def test_hooks_with_a_cache_match_the_live_teacher(kit):
    from insightface_pwr.distill.batch_keys import BATCH_KEYS
    tmp_path, images, teacher = kit
    make(tmp_path, teacher)
    keys = [3, 9, 1, 20, 14, 2]
    flips = [True, False, False, True, True, False]
    img = torch.stack([reference_input(images[k - 1], f) for k, f in zip(keys, flips)])
    labels = torch.tensor([(k - 1) % 3 for k in keys])
    results = []
    for cache in (None, tmp_path / "cache.npy"):  # identical students (seeded), live teacher then the cache
        hooks, backbone, pfc = _hooks(tmp_path, teacher, cache=cache)
        assert hooks.teacher.kind == ("cache" if cache else "torchscript")
        emb = backbone(img)
        loss = pfc(emb, labels)
        BATCH_KEYS.publish(img, torch.tensor(keys), torch.tensor(flips))
        total = hooks.step(1, img, emb, labels, loss)
        hooks.log(1)  # frequent = 1: hooks.last holds this step's value of every term
        results.append((total, torch.autograd.grad(total, emb, retain_graph=True)[0], dict(hooks.last)))
    (a, ga, terms_a), (b, gb, terms_b) = results
    assert terms_a.keys() == {"classification", "rkd_d", "feature", "hkd", "total"} and terms_a["hkd"] > 0
    for k in terms_a:  # every term, HKD's logits included, agrees within the float16 rounding of the teacher
        assert terms_b[k] == pytest.approx(terms_a[k], rel=2e-3, abs=1e-6), k
    assert torch.allclose(a, b, rtol=2e-3, atol=1e-6) and not torch.equal(a, loss)
    assert torch.allclose(ga, gb, rtol=5e-3, atol=1e-5)
    with pytest.raises(BatchKeysError):
        hooks.step(2, img.clone(), emb, labels, pfc(emb, labels))


def test_build_hooks_refuses_a_cache_of_another_teacher_or_set(kit):
    tmp_path, images, teacher = kit
    make(tmp_path, teacher)
    other = write_teacher(tmp_path / "other.pt", seed=3)
    with pytest.raises(CacheError, match="another teacher"):
        _hooks(tmp_path, other, cache=tmp_path / "cache.npy")
    with pytest.raises(CacheError, match="not found"):
        _hooks(tmp_path, teacher, cache=tmp_path / "missing.npy")


# ------------------------------------------------------------------------------------------------ the CPU host (gloo)
def _host_worker(rank, world, root):
    """Train the same recipe with the live teacher, then with its cache (the teacher must not be loaded)."""
    import insightface_pwr.integration.arcface_torch.build as arcface
    from insightface_pwr.host.train import run_host
    from insightface_pwr.distill.recipe import apply_defaults, validate_recipe
    losses = {}
    for mode in ("live", "cached"):
        cfg = apply_defaults(edict(
            margin_list=(1.0, 0.5, 0.0), network="tiny_cnn", embedding_size=8, rec=f"{root}/rec", num_classes=3,
            num_image=24, num_epoch=2, warmup_epoch=0, val_targets=[], batch_size=8 // world, frequent=2, lr=0.05,
            output=f"{root}/{mode}_w{world}"))
        cfg.distill = edict(teacher=edict(weights=f"{root}/teacher.pt", input_size=(16, 16)),
                            heads=[edict(name="rkd_d", weight=10.0), edict(name="feature", weight=1.0)])
        if mode == "cached":
            cfg.distill.teacher.cache = f"{root}/cache.npy"
        validate_recipe(cfg)
        load = arcface.load_teacher
        if mode == "cached":
            arcface.load_teacher = lambda *a, **k: (_ for _ in ()).throw(AssertionError("teacher loaded"))
        try:
            run_host(cfg, rank, world)
        finally:
            arcface.load_teacher = load
        if rank == 0:
            with open(f"{root}/{mode}_w{world}/host_losses.jsonl") as f:
                losses[mode] = [json.loads(line)["loss"] for line in f]
    return losses


@pytest.mark.parametrize("world", [1, 2])
def test_host_trains_from_the_cache_as_from_the_live_teacher(tmp_path, world):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "host"))
    from gloo_helpers import run_gloo_processes
    write_rec(tmp_path / "rec", n=24, size=(16, 16))
    teacher = write_teacher(tmp_path / "teacher.pt")
    make(tmp_path, teacher)
    losses = run_gloo_processes(_host_worker, world, str(tmp_path), timeout=300)[0]
    live_losses, cached_losses = np.array(losses["live"]), np.array(losses["cached"])
    assert len(live_losses) == len(cached_losses) == 6
    # same batches, same flips (FaceDataset's random flip from the same seeded RNG); only the teacher's float16
    # rounding differs, so the losses agree to ~1e-3 relative
    np.testing.assert_allclose(cached_losses, live_losses, rtol=2e-3)
    assert np.ptp(live_losses) > 1e-3  # the runs do train


# ------------------------------------------------------------------------------------------ the opt-in upstream loader
def test_upstream_opt_in_loader_publishes_keys_and_flips(kit, monkeypatch):
    """``data_backend = 'insightface_pwr'``: the loader's batches come with their record keys and flip flags, and the
    published images are exactly the training transform of those records (checked against the hand-written one)."""
    from upstream_helpers import extract_upstream, forget_upstream_utils, prefer_upstream_utils, require_upstream_snapshot
    tmp_path, images, teacher = kit
    require_upstream_snapshot("(the loader uses upstream's sampler)")
    prefer_upstream_utils(monkeypatch, extract_upstream(tmp_path / "up", only="utils"))
    from insightface_pwr.integration.arcface_torch import data_layer
    from insightface_pwr.distill.batch_keys import BATCH_KEYS
    make(tmp_path, teacher)
    get_dataloader, _ = data_layer(edict(data_backend="insightface_pwr", num_image=20, num_classes=3, seed=7))
    loader = get_dataloader(str(tmp_path / "rec"), 0, 5, False, False, 2048, 0)
    torch.manual_seed(0)
    cached = CachedTeacher(TeacherCache(tmp_path / "cache.npy"))
    model = live(teacher)
    seen, n_flipped = [], 0
    for img, labels in loader:  # exactly how train_v2 unpacks a batch
        keys, flips, _ = BATCH_KEYS.take(img)
        expected = torch.stack([reference_input(images[k - 1], f) for k, f in zip(keys.tolist(), flips.tolist())])
        assert torch.allclose(img, expected, atol=1e-6)
        assert labels.tolist() == [(k - 1) % 3 for k in keys.tolist()]
        assert_fp16_close(cached(img).numpy(), model(img).numpy())
        seen += keys.tolist()
        n_flipped += int(flips.sum())
    assert sorted(seen) == list(range(1, 21)) and 0 < n_flipped < 20
    forget_upstream_utils()


def test_cli_arcface_checkpoint_teacher_with_network(kit):
    """An arcface_torch checkpoint (state_dict_backbone, DDP 'module.' prefix) + --network, built by the host's
    get_model outside arcface_torch; the cache equals that network's output on the hand-made inputs."""
    from insightface_pwr.cli import main
    from insightface_pwr.models.backbones import get_model
    tmp_path, images, _ = kit
    torch.manual_seed(3)
    net = get_model("tiny_cnn", num_features=8).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for bn in (m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    torch.save({"epoch": 1, "state_dict_backbone": {f"module.{k}": v for k, v in net.state_dict().items()}},
               tmp_path / "checkpoint_gpu_0.pt")
    out = tmp_path / "ckpt.npy"
    assert main(["cache-teacher", "--teacher", str(tmp_path / "checkpoint_gpu_0.pt"), "--network", "tiny_cnn",
                 "--embedding-size", "8", "--rec", str(tmp_path / "rec"), "--out", str(out), "--no-progress"]) == 0
    meta = json.loads((tmp_path / "ckpt.npy.json").read_text())
    assert meta["teacher"]["format"] == "state_dict" and meta["teacher"]["network"] == "tiny_cnn"
    with torch.no_grad():
        for flip in (0, 1):
            exact = net(torch.stack([reference_input(img, flip) for img in images])).numpy()
            assert_fp16_close(np.load(out)[:, flip], exact)
