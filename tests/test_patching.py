"""The arcface_torch patches and ``insightface-pwr patch`` (check, apply, refuse, revert to the exact bytes).

Two kinds of target:
- a FIXTURE built from the patches' own pre-image hunks (each hunk's context and removed lines placed at its header's
  line numbers, filler lines between them), with a manifest of the fixture's sha256: runs everywhere (CI);
- the REAL pinned upstream extracted from the git mirror (skipped, with the reason, when the mirror is absent).
The expected post-image is built here by placing each hunk's post lines the same way, independently of the code
under test.
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
import py_compile
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict, Optional, Tuple

import pytest

from insightface_pwr import patching
from insightface_pwr.cli import main as cli_main

REPO = Path(__file__).resolve().parent.parent
PATCHES = REPO / "patches"
COMMIT = "0159b24d44cbc91abbd07b7a6fab0ba923a7fddf"
MIRROR = Path(os.environ.get("INSIGHTFACE_PWR_UPSTREAM_MIRROR", "/work/.mirror/deepinsight+insightface/repo"))


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
    assert _cli(root, patch_dir, "--check") == 1
    assert _tree_hashes(root) == after

    assert _cli(root, patch_dir, "--check", "--revert") == 0
    assert _cli(root, patch_dir, "--revert") == 0
    _assert_pristine(root, expected)
    assert not list(root.rglob("*.tmp")), "temp files left behind"
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
    assert _cli(root, patch_dir) == 1
    assert "train.py exists but is not the file" in capsys.readouterr().err
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
