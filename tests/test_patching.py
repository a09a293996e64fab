"""The arcface_torch patches and ``insightface-pwr patch`` (check, apply, refuse, revert to the exact bytes).

Two kinds of target:
- a FIXTURE built from the patches' own pre-image hunks (each hunk's context and removed lines placed at its header's
  line numbers, filler lines between them), with a manifest of the fixture's sha256: runs everywhere (CI);
- the REAL pinned upstream, copied from the shared kit's pristine snapshot (a missing snapshot fails, never skips).
The expected post-image is built here by placing each hunk's post lines the same way, independently of the code
under test.
"""
from __future__ import annotations

import ast
import hashlib
import json
import py_compile
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import pytest
import torch

from insightface_pwr.integration.arcface_torch import patching
from insightface_pwr.cli import main as cli_main

from upstream_helpers import cpu_runner, extract_upstream, patched_copy, run_cpu_runner, require_upstream_snapshot

REPO = Path(__file__).resolve().parent.parent
PATCHES = REPO / "patches"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tree_hashes(root: Path) -> Dict[str, str]:
    return {str(p.relative_to(root)): _sha(p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------ the fixture tree
def _filler(n: int) -> bytes:
    return f"# fixture filler line {n}\n".encode()


def build_fixture(root: Path, patch_dir: Path) -> Tuple[Path, Dict[str, Tuple[Optional[bytes], bytes]]]:
    """Write the pre-image of every patched file under ``root``; return (patches dir with the fixture manifest,
    {path: (pristine bytes or None, expected patched bytes)})."""
    patch_set = patching.load_patch_set(PATCHES)
    expected: Dict[str, Tuple[Optional[bytes], bytes]] = {}
    for fp in patch_set.files:
        if fp.is_new:
            (hunk,) = fp.hunks
            expected[fp.path] = (None, b"".join(hunk.post))
            continue
        pre, post = [], []
        for hunk in fp.hunks:
            begin = hunk.old_start - 1 if hunk.old_len else hunk.old_start
            assert begin >= len(pre), f"{fp.source}: hunk {hunk.index} overlaps the previous one"
            while len(pre) < begin:
                pre.append(_filler(len(pre) + 1))
                post.append(pre[-1])
            assert len(post) == (hunk.new_start - 1 if hunk.new_len else hunk.new_start), \
                f"{fp.source}: hunk {hunk.index}'s +{hunk.new_start} does not follow from the previous hunks"
            pre.extend(hunk.pre)
            post.extend(hunk.post)
        pre.append(b"# fixture tail\n")
        post.append(b"# fixture tail\n")
        expected[fp.path] = (b"".join(pre), b"".join(post))
        path = root / fp.path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(expected[fp.path][0])
    patch_dir.mkdir(parents=True)
    for f in PATCHES.iterdir():
        if f.name != patching.MANIFEST_FILE:
            shutil.copy(f, patch_dir / f.name)
    (patch_dir / patching.MANIFEST_FILE).write_text(
        "# sha256 of the fixture (test override)\n"
        + "".join(f"{_sha(pre)}  {path}\n" for path, (pre, _) in expected.items() if pre is not None))
    return patch_dir, expected


@pytest.fixture()
def fixture_tree(tmp_path):
    root = tmp_path / "arcface_torch"
    root.mkdir()
    patch_dir, expected = build_fixture(root, tmp_path / "patches")
    return root, patch_dir, expected


def _cli(target: Path, patch_dir: Path, *flags: str) -> int:
    return cli_main(["patch", str(target), "--patches", str(patch_dir), *flags])


def _assert_pristine(root: Path, expected) -> None:
    for path, (pre, _) in expected.items():
        if pre is None:
            assert not (root / path).exists(), path
        else:
            assert _sha((root / path).read_bytes()) == _sha(pre), path


# ----------------------------------------------------------------------------------------- the patch files
def test_patch_files_parse_are_small_and_covered_by_the_manifest():
    patch_set = patching.load_patch_set(PATCHES)
    listed = [line.strip() for line in (PATCHES / "series").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert sorted(listed) == sorted(p.name for p in PATCHES.glob("*.patch")), "series must list every patch file"
    paths = {fp.path for fp in patch_set.files}
    assert paths == {"train_v2.py", "utils/utils_config.py", "utils/utils_callbacks.py", "lr_scheduler.py", "train.py"}
    assert [fp.path for fp in patch_set.files if fp.is_new] == ["train.py"]
    assert set(patch_set.manifest) == paths - {"train.py"}
    for fp in patch_set.files:
        for hunk in fp.hunks:
            tags = "".join(tag for tag, _ in hunk.lines)
            # at most 3 context lines at each end (diff -u), and no long unchanged run inside a hunk
            assert len(tags) - len(tags.lstrip(" ")) <= 3 and len(tags) - len(tags.rstrip(" ")) <= 3, hunk.header
            assert " " * 7 not in tags, f"{fp.source} {hunk.header}: split the hunk"
    changed = sum(tag != " " for fp in patch_set.files if not fp.is_new for h in fp.hunks for tag, _ in h.lines)
    assert changed <= 60, f"{changed} changed upstream lines: keep the patches small"


def test_parse_rejects_malformed_patches():
    with pytest.raises(patching.PatchFileError, match="not a unified diff"):
        patching.parse_patch(b"hello\n", "x.patch")
    with pytest.raises(patching.PatchFileError, match="ends early"):
        patching.parse_patch(b"--- a/f\n+++ b/f\n@@ -1,2 +1,2 @@\n a\n", "x.patch")
    with pytest.raises(patching.PatchFileError, match="should start with 'a/'"):
        patching.parse_patch(b"--- f\n+++ f\n@@ -1 +1 @@\n-a\n+b\n", "x.patch")
    with pytest.raises(patching.PatchFileError, match="inside the arcface_torch folder"):
        patching.parse_patch(b"--- a/../f\n+++ b/../f\n@@ -1 +1 @@\n-a\n+b\n", "x.patch")


def test_parse_accepts_git_diff_headers_between_files():
    text = (b"comment\ndiff --git a/f b/f\nindex 1234567..89abcde 100644\n--- a/f\n+++ b/f\n@@ -1 +1 @@\n-a\n+b\n"
            b"diff --git a/g b/g\nnew file mode 100644\nindex 0000000..1111111\n--- /dev/null\n+++ b/g\n"
            b"@@ -0,0 +1 @@\n+new\n")
    f, g = patching.parse_patch(text, "git.patch")
    assert (f.path, f.is_new, f.hunks[0].pre, f.hunks[0].post) == ("f", False, [b"a\n"], [b"b\n"])
    assert (g.path, g.is_new, g.hunks[0].post) == ("g", True, [b"new\n"])


def test_crlf_and_missing_final_newline_round_trip():
    # f.txt: b"a\r\nb\r\nc" (CRLF, no final newline) -> b"a\r\nB\r\nc", the diff GNU diff -u writes for it
    patch = (b"--- a/f.txt\n+++ b/f.txt\n@@ -1,3 +1,3 @@\n a\r\n-b\r\n+B\r\n c\n\\ No newline at end of file\n")
    (fp,) = patching.parse_patch(patch, "crlf.patch")
    before = b"a\r\nb\r\nc"
    after = b"".join(patching.apply_hunks(patching.split_lines(before), fp.hunks))
    assert after == b"a\r\nB\r\nc"
    assert b"".join(patching.apply_hunks(patching.split_lines(after), fp.hunks, reverse=True)) == before


# ------------------------------------------------------------------------------------------ on the fixture
def test_fixture_check_apply_refuse_twice_revert(fixture_tree, capsys):
    root, patch_dir, expected = fixture_tree
    (root / "train_v2.py").chmod(0o755)
    assert _cli(root, patch_dir, "--check") == 0
    assert _cli(root, patch_dir, "--check", "--revert") == 1
    assert "nothing to revert" in capsys.readouterr().err
    _assert_pristine(root, expected)  # --check wrote nothing

    assert _cli(root, patch_dir) == 0
    for path, (_, post) in expected.items():
        assert (root / path).read_bytes() == post, f"{path} is not the patch's post-image"
    after = _tree_hashes(root)

    capsys.readouterr()
    assert _cli(root, patch_dir) == 1
    assert "already patched" in capsys.readouterr().err
    assert _cli(root, patch_dir, "--check") == 0  # on a patched folder: says so, status 0
    assert "is patched, matches" in capsys.readouterr().out
    assert _tree_hashes(root) == after

    assert _cli(root, patch_dir, "--check", "--revert") == 0
    assert _cli(root, patch_dir, "--revert") == 0
    _assert_pristine(root, expected)
    assert not list(root.rglob("*.tmp")), "temp files left behind"
    assert (root / "train_v2.py").stat().st_mode & 0o777 == 0o755, "permission bits must survive"
    assert _cli(root, patch_dir, "--revert") == 1


def _hunk_cases():
    return [(fp.path, hunk.index) for fp in patching.load_patch_set(PATCHES).files if not fp.is_new
            for hunk in fp.hunks]


@pytest.mark.parametrize("path,index", _hunk_cases())
def test_fixture_modified_upstream_is_refused_naming_file_and_hunk(fixture_tree, capsys, path, index):
    root, patch_dir, expected = fixture_tree
    fp = next(f for f in patching.load_patch_set(PATCHES).files if f.path == path)
    hunk = fp.hunks[index - 1]
    lines = patching.split_lines((root / path).read_bytes())
    pre_tags = [tag for tag, _ in hunk.lines if tag != "+"]
    changed = hunk.old_start - 1 + (pre_tags.index("-") if "-" in pre_tags else 0)  # 0-based line to edit
    lines[changed] = b"# edited by someone\n"
    (root / path).write_bytes(b"".join(lines))
    before = _tree_hashes(root)
    for flags in ((), ("--check",), ("--revert",)):
        capsys.readouterr()
        assert _cli(root, patch_dir, *flags) == 1
        err = capsys.readouterr().err
        assert f"{path}: hunk {index} " in err and f"line {changed + 1} " in err, err
    assert _tree_hashes(root) == before, "a refused patch must write nothing"


def test_fixture_change_outside_hunks_new_file_present_and_patched_then_edited(fixture_tree, capsys):
    root, patch_dir, expected = fixture_tree
    target = root / "train_v2.py"
    pristine = target.read_bytes()
    target.write_bytes(pristine.replace(b"# fixture filler line 1\n", b"# fixture filler line one\n", 1))
    assert _cli(root, patch_dir) == 1
    assert "train_v2.py: differs from the pinned upstream outside the patched hunks" in capsys.readouterr().err
    target.write_bytes(pristine)

    (root / "train.py").write_text("print('mine')\n")
    for flags in ((), ("--revert",)):
        assert _cli(root, patch_dir, *flags) == 1
        err = capsys.readouterr().err
        assert "train.py exists but is not the file" in err and f"remove {root / 'train.py'}" in err, err
        assert "git checkout" not in err  # upstream has no train.py to check out
    (root / "train.py").unlink()

    assert _cli(root, patch_dir) == 0
    patched = target.read_bytes()
    hunk3 = patching.load_patch_set(PATCHES).files[0].hunks[2]
    added = next(text for tag, text in hunk3.lines if tag == "+")
    target.write_bytes(patched.replace(added, b"    pass  # my edit\n", 1))
    capsys.readouterr()
    assert _cli(root, patch_dir, "--revert") == 1
    assert "train_v2.py: looks patched, then edited: hunk 3 " in capsys.readouterr().err
    target.write_bytes(patched)

    (root / "utils/utils_config.py").write_bytes(expected["utils/utils_config.py"][0])  # one file back to pristine
    for flags in ((), ("--revert",)):
        capsys.readouterr()
        assert _cli(root, patch_dir, *flags) == 1
        assert "partly patched" in capsys.readouterr().err


def test_failed_write_puts_back_the_files_already_written(fixture_tree, monkeypatch):
    root, patch_dir, expected = fixture_tree
    patch_set = patching.load_patch_set(patch_dir)
    real = patching.atomic_write_bytes
    calls = []

    def flaky(path, data, mode=0o644):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        real(path, data, mode)

    monkeypatch.setattr(patching, "atomic_write_bytes", flaky)
    with pytest.raises(OSError, match="disk full"):
        patching.apply(root, patch_set)
    _assert_pristine(root, expected)


def test_refuses_a_folder_that_is_not_arcface_torch(tmp_path, capsys):
    (tmp_path / "recognition" / "arcface_torch").mkdir(parents=True)
    assert cli_main(["patch", str(tmp_path)]) == 1
    assert "did you mean" in capsys.readouterr().err
    assert cli_main(["patch", str(tmp_path / "missing")]) == 1


def test_new_train_py_runs_train_v2_as_the_main_script(fixture_tree, tmp_path):
    root, patch_dir, expected = fixture_tree
    train_py = tmp_path / "entry" / "train.py"
    train_py.parent.mkdir()
    train_py.write_bytes(expected["train.py"][1])
    py_compile.compile(str(train_py), doraise=True)
    (train_py.parent / "train_v2.py").write_text(
        "import json, sys\nprint(json.dumps([__name__, sys.argv, sys.path[0]]))\n")
    out = subprocess.run([sys.executable, "train.py", "recipes/pwr_exp.py"], cwd=train_py.parent,
                         capture_output=True, text=True, check=True).stdout
    name, argv, path0 = json.loads(out)
    assert name == "__main__" and argv[1:] == ["recipes/pwr_exp.py"] and Path(argv[0]).name == "train_v2.py"
    assert Path(path0).resolve() == train_py.parent.resolve()  # `from backbones import ...` still resolves


# --------------------------------------------------------------------------- on the real pinned upstream
@pytest.fixture(scope="module")
def upstream(tmp_path_factory) -> Path:
    """The pristine pinned arcface_torch folder, copied from the shared snapshot (read it, copy it, never modify)."""
    require_upstream_snapshot("(set INSIGHTFACE_PWR_UPSTREAM_MIRROR): these tests need the real arcface_torch files; the "
                        "fixture tests cover check/apply/refuse/revert")
    return extract_upstream(tmp_path_factory.mktemp("upstream"))


@pytest.fixture(scope="module")
def patched(upstream, tmp_path_factory) -> Path:
    """A patched copy of the upstream folder (made with the CLI and the default patches/)."""
    return patched_copy(upstream, tmp_path_factory.mktemp("patched") / "arcface_torch")


def test_real_upstream_check_apply_compile_revert_exact_bytes(upstream, tmp_path, capsys):
    target = tmp_path / "arcface_torch"
    shutil.copytree(upstream, target)
    pristine = _tree_hashes(upstream)
    assert cli_main(["patch", "--check", str(target)]) == 0, capsys.readouterr().err  # manifest = pinned bytes
    assert cli_main(["patch", str(target)]) == 0
    changed = {p for p, h in _tree_hashes(target).items() if pristine.get(p) != h}
    assert changed == {"train_v2.py", "utils/utils_config.py", "utils/utils_callbacks.py", "lr_scheduler.py",
                       "train.py"}
    for rel in changed:
        with warnings.catch_warnings():  # upstream's `self.rank is 0` (utils_callbacks.py) warns
            warnings.simplefilter("ignore", SyntaxWarning)
            py_compile.compile(str(target / rel), cfile=str(tmp_path / "compiled.pyc"), doraise=True)
    if shutil.which("patch"):  # an independent implementation: GNU patch gives the same bytes
        gnu = tmp_path / "gnu"
        shutil.copytree(upstream, gnu)
        for line in (PATCHES / "series").read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                subprocess.run(["patch", "-p1", "--quiet", "-i", str(PATCHES / line.strip())], cwd=gnu, check=True)
        assert _tree_hashes(gnu) == _tree_hashes(target)
    assert cli_main(["patch", str(target)]) == 1
    assert cli_main(["patch", "--revert", str(target)]) == 0
    assert _tree_hashes(target) == pristine, "revert must give back the exact upstream bytes"


def test_patched_utils_config_imports_only_importlib_and_os(patched):
    tree = ast.parse((patched / "utils" / "utils_config.py").read_text())
    top = {a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    top |= {n.module for n in tree.body if isinstance(n, ast.ImportFrom)}
    inner = {n.module for f in tree.body if isinstance(f, ast.FunctionDef) for n in ast.walk(f)
             if isinstance(n, ast.ImportFrom)}
    assert top == {"importlib", "os.path"} and inner == {"insightface_pwr.distill.recipe"}


_GET_CONFIG = """
import json, sys
from utils.utils_config import get_config
cfg = get_config(sys.argv[1])
print(json.dumps({"cfg": {k: cfg[k] for k in sorted(cfg)},
                  "pwr": sorted(m for m in sys.modules if m.startswith("insightface_pwr"))}, default=repr))
"""


def _get_config(tree: Path, config: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _GET_CONFIG, config], cwd=tree, capture_output=True, text=True)


def test_patched_get_config_upstream_for_configs_and_our_loader_for_recipes(upstream, patched, tmp_path):
    for name in ("configs/ms1mv3_r50", "configs/wf42m_pfc02_16gpus_r100.py"):
        ours, theirs = _get_config(patched, name), _get_config(upstream, name)
        assert theirs.returncode == 0, theirs.stderr
        assert json.loads(ours.stdout) == json.loads(theirs.stdout)
        assert json.loads(ours.stdout)["pwr"] == [], "an upstream config must not import insightface_pwr"

    recipe = tmp_path / "recipes" / "tiny_exp.py"
    recipe.parent.mkdir()
    recipe.write_text(textwrap.dedent("""
        from easydict import EasyDict as edict
        config = edict()
        config.margin_list = (1.0, 0.0, 0.35)
        config.network = "r18"
        config.rec = "/data/faces_emore"
        config.num_classes = 85742
        config.num_image = 5822653
        config.num_epoch = 20
        config.warmup_epoch = 0
        config.val_targets = ["lfw"]
        config.data_backend = "insightface_pwr"
    """))
    from insightface_pwr.distill.recipe import load_recipe
    expected = json.loads(json.dumps(dict(load_recipe(str(recipe))), default=repr))
    out = _get_config(patched, str(recipe))
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["cfg"] == expected and got["cfg"]["output"] == "work_dirs/tiny_exp"
    assert "insightface_pwr.distill.recipe" in got["pwr"]
    refused = _get_config(upstream, str(recipe))
    assert refused.returncode != 0 and "config file setting must start with configs/" in refused.stderr


def test_patched_utils_callbacks_imports_without_mxnet(upstream, patched):
    script = textwrap.dedent("""
        import sys, types
        sys.modules["mxnet"] = None  # `import mxnet` raises ImportError
        sys.modules["torch.utils.tensorboard"] = types.SimpleNamespace(SummaryWriter=object)
        from utils.utils_callbacks import CallBackLogging, CallBackVerification
        print("imported")
        try:
            CallBackVerification(["lfw"], "/nowhere")
        except ImportError as e:
            print("verification needs mxnet:", e)
    """)
    ours = subprocess.run([sys.executable, "-c", script], cwd=patched, capture_output=True, text=True)
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout.splitlines()[0] == "imported" and "verification needs mxnet" in ours.stdout
    theirs = subprocess.run([sys.executable, "-c", script], cwd=upstream, capture_output=True, text=True)
    assert theirs.returncode != 0 and "mxnet" in theirs.stderr


# The patched train_v2.py, run on CPU through the new train.py: NCCL -> gloo, no CUDA, a CPU stand-in for partial
# FC (upstream's calls .cuda()), a tiny backbone, fakes for the mxnet/torchvision/tensorboard modules; the rest
# (config, margin loss, optimizer, lr scheduler, checkpoints, resume, logging) is upstream's. The stand-ins are
# upstream_helpers' (2 threads); the lines below record the calls.
_CPU_RUNNER = cpu_runner(r'''
calls = []
lrs = []  # (global_step, learning rate) that upstream's CallBackLogging writes

def _on_init(backend):
    calls.append(["init_process_group", backend])

def _on_scalar(tag, value, step):
    if tag == "learning_rate":
        lrs.append([step, value])
    if tag not in ("time_for_end", "learning_rate", "loss"):
        calls.append(["add_scalar", tag, step])

def get_model(name, dropout=0.0, fp16=False, num_features=512):  # upstream's backbones are slow on a shared CPU
    calls.append(["get_model", name, num_features])
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 8, stride=8), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 14 * 14, num_features))
sys.modules["backbones"] = types.SimpleNamespace(get_model=get_model)

def upstream_get_dataloader(root_dir, local_rank, batch_size, dali=False, dali_aug=False, seed=2048, num_workers=2):
    calls.append(["get_dataloader", "upstream"])
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(batch_size, 3, 112, 112, generator=g), torch.randint(0, 8, (batch_size,), generator=g))
            for _ in range(3)]

_save = torch.save
def torch_save(obj, f, *a, **k):
    if isinstance(f, (str, os.PathLike)):
        calls.append(["torch.save", os.path.basename(f)])
    return _save(obj, f, *a, **k)
torch.save = torch_save

def train(config):
    for name in [m for m in sys.modules if m == "configs" or m.startswith("configs.")]:
        del sys.modules[name]  # upstream's get_config updates configs.base's dict in place
    del calls[:]
    sys.argv = ["train.py", config]
    runpy.run_path("train.py", run_name="__main__")
    return list(calls)

results = {}
sys.modules["dataset"] = types.SimpleNamespace(get_dataloader=upstream_get_dataloader)
sys.modules["eval.verification"] = types.ModuleType("eval.verification")  # needs mxnet + sklearn; no .bin here
results["upstream"] = train("configs/cpu_tiny.py")
results["upstream_lrs"], lrs[:] = list(lrs), []
results["pwr_modules_after_upstream"] = sorted(m for m in sys.modules if m.startswith("insightface_pwr"))

import insightface_pwr.integration.arcface_torch.build as arcface
import insightface_pwr.distill.checkpoint as checkpoint
_atomic = checkpoint.atomic_save
def atomic_save(obj, path):
    calls.append(["atomic_save", os.path.basename(path)])
    _atomic(obj, path)
checkpoint.atomic_save = atomic_save

class Hooks:
    def __init__(self):
        self.p = torch.nn.Parameter(torch.zeros(()))  # not in the optimizer: its grad counts the backwards
    def lr_scheduler(self, s):
        calls.append(["lr_scheduler", type(s).__name__])
        return s
    def resume(self, e, g):
        calls.append(["resume", e, g])
        return e, g
    def step(self, gs, img, emb, labels, loss):
        calls.append(["step", gs, list(img.shape), list(emb.shape), list(labels.shape)])
        return loss + self.p
    def log(self, gs, writer):
        calls.append(["log", gs, type(writer).__name__, float(self.p.grad)])
    def save(self, e, g):
        calls.append(["save", e, g])
    def end(self):
        calls.append(["end"])

def build_hooks(cfg, **kw):
    calls.append(["build_hooks", sorted(kw), kw["rank"], kw["world_size"], kw["local_rank"],
                  len(kw["optimizer"].param_groups), type(kw["partial_fc"]).__name__, cfg.distill.teacher])
    return Hooks()
real_build_hooks, arcface.build_hooks = arcface.build_hooks, build_hooks
results["distill"] = train("configs/cpu_tiny_distill.py")
results["resume"] = train("configs/cpu_tiny_distill_resume.py")

arcface.build_hooks = real_build_hooks  # the real hooks, from a recipe outside configs/, then resumed
results["recipe"] = train(os.path.abspath("recipes/cpu_pwr.py"))
results["recipe_resume"] = train(os.path.abspath("recipes/cpu_pwr_resume.py"))
lrs[:] = []
results["schedule"] = train("configs/cpu_tiny_schedule.py")  # config.lr_schedule, no distill section
results["schedule_lrs"] = list(lrs)

sys.modules["dataset"] = None  # `import dataset` (upstream's, mxnet) would now raise
sys.modules["eval.verification"] = None
results["data_backend"] = train("configs/cpu_tiny_data.py")
print("RESULTS " + json.dumps(results))
''', threads=2)

_CPU_CONFIG = """
from easydict import EasyDict as edict
config = edict()
config.network = "mbf"
config.embedding_size = 64
config.batch_size = 4
config.num_classes = 8
config.num_image = 12
config.num_epoch = {epochs}
config.warmup_epoch = 0
config.rec = "synthetic"
config.val_targets = {val_targets}
config.frequent = 1
config.verbose = 3
config.save_all_states = True
config.num_workers = 0
config.output = "work_dirs/{output}"
config.resume = {resume}
"""


def test_patched_train_v2_runs_on_cpu_and_calls_the_hooks_in_contract_order(patched, tmp_path):
    tree = tmp_path / "arcface_torch"
    shutil.copytree(patched, tree)
    configs = {"cpu_tiny": dict(epochs=2, output="plain", resume=False, val_targets=[]),
               "cpu_tiny_distill": dict(epochs=2, output="distill", resume=False, val_targets=[]),
               "cpu_tiny_distill_resume": dict(epochs=3, output="distill", resume=True, val_targets=[]),
               "cpu_tiny_data": dict(epochs=2, output="data", resume=False, val_targets=["tiny"]),
               "cpu_tiny_schedule": dict(epochs=2, output="schedule", resume=False, val_targets=[])}
    for name, values in configs.items():
        text = _CPU_CONFIG.format(**values)
        if "distill" in name:
            text += "config.distill = edict(teacher=edict(weights='teacher.pt'))\n"
        if name == "cpu_tiny_data":
            text += "config.data_backend = 'insightface_pwr'\n"
        if name == "cpu_tiny_schedule":
            text += "config.lr_schedule = edict(kind='step', every_epochs=1, factor=0.1)\n"
        (tree / "configs" / f"{name}.py").write_text(text)
    (tree / "recipes").mkdir()
    for name, epochs, resume in (("cpu_pwr", 2, False), ("cpu_pwr_resume", 3, True)):
        (tree / "recipes" / f"{name}.py").write_text(
            _CPU_CONFIG.format(epochs=epochs, output="recipe", resume=resume, val_targets=[])
            + "config.distill = edict(teacher=edict(weights='teacher.ts'), classification_weight=1.0,\n"
            + "                       heads=[edict(name='pwr', weight=10.0)])\n")
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.AvgPool2d(8), torch.nn.Flatten(), torch.nn.Linear(3 * 14 * 14, 32))
    with warnings.catch_warnings():  # torch.jit is deprecated in favour of torch.export; arcface_torch users use it
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(teacher), str(tree / "teacher.ts"))
    from PIL import Image
    import io
    import pickle
    rng = np.random.default_rng(0)
    images = []
    for _ in range(20):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)).save(buf, "PNG")
        images.append(buf.getvalue())
    (tree / "synthetic").mkdir()
    (tree / "synthetic" / "tiny.bin").write_bytes(pickle.dumps((images, [True, False] * 5)))

    results = run_cpu_runner(_CPU_RUNNER, tree, threads=2)

    # no distill section: upstream's path, insightface_pwr never imported, plain torch.save
    upstream = results["upstream"]
    assert upstream[0] == ["init_process_group", "nccl"] and ["get_dataloader", "upstream"] in upstream
    assert ["get_model", "mbf", 64] in upstream
    assert results["pwr_modules_after_upstream"] == []
    assert [c for c in upstream if c[0] == "torch.save"] == [["torch.save", "checkpoint_gpu_0.pt"],
                                                             ["torch.save", "model.pt"]] * 2 + [["torch.save",
                                                                                                 "model.pt"]]
    assert not [c for c in upstream if c[0] in ("atomic_save", "build_hooks", "step")]
    # upstream's PolynomialLRWarmup: 0.1 * (1 - k / 6) after k of the 6 steps (logged from step 2 on)
    assert results["upstream_lrs"] == [[k, pytest.approx(0.1 * (1 - k / 6), abs=1e-12)] for k in range(2, 7)]

    # config.lr_schedule without distill: the real hooks replace the scheduler only (0.1 x 0.1 per epoch of 3
    # steps: the lr after k steps is 0.1 * 0.1 ** (k // 3)); no distillation state, atomic checkpoints
    assert results["schedule_lrs"] == [[k, pytest.approx(0.1 * 0.1 ** (k // 3), rel=1e-12)] for k in range(2, 7)]
    schedule_dir = tree / "work_dirs" / "schedule"
    assert {p.name for p in schedule_dir.iterdir()} >= {"checkpoint_gpu_0.pt", "model.pt"}
    assert not list(schedule_dir.glob("distill_gpu_*"))
    assert [c[1] for c in results["schedule"] if c[0] == "atomic_save"] == ["checkpoint_gpu_0.pt", "model.pt"] * 2 \
        + ["model.pt"]
    assert "lr schedule: lr x 0.1 every 1 epoch(s)" in (schedule_dir / "training.log").read_text()

    # distill section: the contract's order, the hook's loss is the one backpropagated, atomic checkpoints
    distill = [c for c in results["distill"] if c[0] not in ("init_process_group", "get_dataloader", "get_model")]
    hooks = [c for c in distill if c[0] not in ("atomic_save", "torch.save")]
    assert hooks[0] == ["build_hooks", ["backbone", "local_rank", "optimizer", "partial_fc", "rank", "world_size"],
                        0, 1, 0, 2, "PartialFC_V2", {"weights": "teacher.pt"}]
    assert hooks[1] == ["lr_scheduler", "PolynomialLRWarmup"] and hooks[2] == ["resume", 0, 0]
    expected = []
    for epoch in range(2):
        for k in range(1, 4):
            step = 3 * epoch + k
            expected += [["step", step, [4, 3, 112, 112], [4, 64], [4]], ["log", step, "SummaryWriter", float(step)]]
        expected.append(["save", epoch + 1, 3 * epoch + 3])
    assert hooks[3:] == expected + [["end"]]
    saves = [c for c in distill if c[0] in ("atomic_save", "torch.save")]
    assert saves == [["atomic_save", "checkpoint_gpu_0.pt"], ["atomic_save", "model.pt"]] * 2 + \
        [["atomic_save", "model.pt"]]
    assert distill.index(["save", 1, 3]) < distill.index(["atomic_save", "checkpoint_gpu_0.pt"])  # hooks first
    assert distill.index(["end"]) < len(distill) - 1 and distill[-1] == ["atomic_save", "model.pt"]

    # resume: upstream's checkpoint gives (epoch 2, step 6), the hooks' resume sees it, training goes on
    resume = [c for c in results["resume"] if c[0] in ("resume", "step", "save", "end")]
    assert resume[0] == ["resume", 2, 6] and [c[1] for c in resume if c[0] == "step"] == [7, 8, 9]
    assert resume[-2:] == [["save", 3, 9], ["end"]]

    # the real hooks from a recipe outside configs/ (get_config -> load_recipe), then a resume that matches steps
    recipe = results["recipe"]
    upstream_files = [c[1] for c in recipe if c[0] == "atomic_save" and not c[1].startswith("distill_gpu_0.pt")]
    assert upstream_files == ["checkpoint_gpu_0.pt", "model.pt"] * 2 + ["model.pt"]
    out_dir = tree / "work_dirs" / "recipe"
    assert {"distill_gpu_0.pt", "checkpoint_gpu_0.pt", "model.pt"} <= {p.name for p in out_dir.iterdir()}
    assert torch.load(out_dir / "distill_gpu_0.pt", weights_only=True)["global_step"] == 9  # after the resume
    log = (out_dir / "training.log").read_text()
    assert "pwr" in log and "resumed distillation state of epoch 2, step 6" in log

    # data_backend: our loader (synthetic faces, upstream's sampler) and .bin verification, no mxnet module
    data = results["data_backend"]
    assert ["get_dataloader", "upstream"] not in data
    assert [c for c in data if c[0] == "add_scalar"] == [["add_scalar", "tiny", 3], ["add_scalar", "tiny", 6]]
    assert (tree / "work_dirs" / "data" / "model.pt").is_file()
    assert not list((tree / "work_dirs").rglob("*.tmp*")), "temp files left behind"
