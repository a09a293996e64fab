"""Apply and revert insightface-pwr's patches to arcface_torch: strict, reversible, pure-Python unified diffs.

The patches (``patches/series`` lists them in order) are unified diffs against the pinned upstream commit
(:data:`PINNED`). ``patches/upstream.sha256`` records the sha256 of every upstream file they modify. Rules:

- A file is *pristine* when its sha256 is the pinned one (a file the patches create must be absent), and
  *patched* when reverse-applying its hunks gives back the pinned bytes (a created file must hold exactly the
  patch's content). Anything else is *modified*, and nothing is written: the report names the file and the first
  hunk whose pre-image does not match (line number, expected and found text), or says that the difference lies
  outside the hunks.
- Hunks apply at exactly the line numbers of their headers: no fuzz, no offset search (the target is pristine).
- Apply needs every file pristine (so it refuses to apply twice); revert needs every file patched, and gives back
  the exact original bytes (checked against the manifest's sha256 before anything is written).
- Files are written atomically (temp file in the same folder, fsync, rename, original permission bits); when a
  write fails, the files already written are put back.

No ``patch`` or ``git`` binary is used. Lines are bytes with their own end of line, so CRLF and a missing final
newline (``\\ No newline at end of file``) round-trip exactly.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ...infra.atomic import atomic_write_bytes, fsync_dir
from ...infra.errors import UserError
from .unified_diff import (  # noqa: F401
    FilePatch,
    Hunk,
    HunkMismatch,
    PatchFileError,
    apply_hunks,
    parse_patch,
    sha256,
    split_lines,
)

PINNED = "deepinsight/insightface@0159b24d44cbc91abbd07b7a6fab0ba923a7fddf (recognition/arcface_torch)"
SERIES_FILE = "series"
MANIFEST_FILE = "upstream.sha256"



class PatchRefused(UserError, RuntimeError):
    """The target is not in the state the requested action needs; nothing was written."""


@dataclass(frozen=True)
class PatchSet:
    """Every file patch of a series, with the manifest of pristine sha256 (path -> hex digest)."""

    directory: Path
    files: Tuple[FilePatch, ...]
    manifest: Dict[str, str]


# ----------------------------------------------------------------------------------------------- reading files
def read_manifest(path: Path) -> Dict[str, str]:
    """``<sha256>  <path>`` lines (sha256sum format); ``#`` starts a comment."""
    manifest: Dict[str, str] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split(None, 1)
        if len(parts) != 2 or not re.fullmatch(r"[0-9a-f]{64}", parts[0]):
            raise PatchFileError(f"{path}:{n}: expected '<64 hex sha256>  <path>', got {line!r}")
        manifest[parts[1].strip().lstrip("*")] = parts[0]
    return manifest


def load_patch_set(directory: Path, manifest: Optional[Path] = None) -> PatchSet:
    """Read ``series`` (one patch file per line, ``#`` comments) and the manifest of ``directory``."""
    directory = Path(directory)
    series = directory / SERIES_FILE
    if not series.is_file():
        raise PatchFileError(f"{series}: no series file (the list of patch files, in order)")
    files: List[FilePatch] = []
    for line in series.read_text(encoding="utf-8").splitlines():
        name = line.split("#", 1)[0].strip()
        if name:
            patch_path = directory / name
            if not patch_path.is_file():
                raise PatchFileError(f"{series}: lists {name!r}, which is not a file in {directory}")
            files.extend(parse_patch(patch_path.read_bytes(), str(patch_path)))
    seen = [f.path for f in files]
    duplicates = sorted({p for p in seen if seen.count(p) > 1})
    if duplicates:
        raise PatchFileError(f"{series}: several patches modify {duplicates}; keep one patch per file")
    sums = read_manifest(Path(manifest) if manifest else directory / MANIFEST_FILE)
    missing = [f.path for f in files if not f.is_new and f.path not in sums]
    if missing:
        raise PatchFileError(f"{manifest or directory / MANIFEST_FILE}: no sha256 for {missing}")
    return PatchSet(directory=directory, files=tuple(files), manifest=sums)


def default_patches_dir() -> Path:
    """``$INSIGHTFACE_PWR_PATCHES``, else ``patches/`` beside the package (a source checkout, ``pip install -e``)."""
    env = os.environ.get("INSIGHTFACE_PWR_PATCHES")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "patches"


# --------------------------------------------------------------------------------------------- applying hunks
# ------------------------------------------------------------------------------------------------ file states
PRISTINE, PATCHED, MODIFIED = "pristine", "patched", "modified"


@dataclass(frozen=True)
class FileState:
    patch: FilePatch
    state: str  # PRISTINE, PATCHED or MODIFIED
    detail: str  # for MODIFIED: what differs (file and hunk named)
    pristine: Optional[bytes]  # the pinned bytes (None for a new file), when known
    patched: Optional[bytes]  # the patched bytes, when known


def file_state(fp: FilePatch, current: Optional[bytes], manifest: Dict[str, str]) -> FileState:
    """Classify one target file as pristine, patched or modified (with the first differing hunk)."""
    if fp.is_new:
        content = b"".join(fp.hunks[0].post)
        if current is None:
            return FileState(fp, PRISTINE, "", None, content)
        if current == content:
            return FileState(fp, PATCHED, "", None, content)
        return FileState(fp, MODIFIED, f"{fp.path} exists but is not the file that {Path(fp.source).name} creates "
                         "(upstream has no such file)", None, None)
    if current is None:
        return FileState(fp, MODIFIED, f"{fp.path} is missing", None, None)
    pinned = manifest[fp.path]
    lines = split_lines(current)
    if sha256(current) == pinned:
        try:
            return FileState(fp, PRISTINE, "", current, b"".join(apply_hunks(lines, fp.hunks)))
        except HunkMismatch as exc:
            raise PatchFileError(f"{fp.source}: does not fit the pinned {fp.path}: {exc.describe()}") from None
    forward = backward = None
    try:
        original = b"".join(apply_hunks(lines, fp.hunks, reverse=True))
    except HunkMismatch as exc:
        original, backward = None, exc
    if original is not None and sha256(original) == pinned:
        return FileState(fp, PATCHED, "", original, current)
    try:
        apply_hunks(lines, fp.hunks)
    except HunkMismatch as exc:
        forward = exc
    sums = f"(sha256 {sha256(current)[:12]}..., pinned {pinned[:12]}...)"
    if original is not None:
        detail = f"{fp.path}: patched, but differs from the pinned upstream outside the patched hunks {sums}"
    elif forward is None:
        detail = f"{fp.path}: differs from the pinned upstream outside the patched hunks {sums}"
    elif backward is not None and backward.hunk.index > forward.hunk.index:  # got further as a patched file
        detail = f"{fp.path}: looks patched, then edited: {backward.describe()} (of the patched text)"
    else:
        detail = f"{fp.path}: {forward.describe()}"
    return FileState(fp, MODIFIED, detail, None, None)


def target_states(target: Path, patches: PatchSet) -> List[FileState]:
    target = Path(target)
    states = []
    for fp in patches.files:
        path = target / fp.path
        current = path.read_bytes() if path.is_file() else None
        states.append(file_state(fp, current, patches.manifest))
    return states


def check_target_dir(target: Path) -> None:
    """Raise PatchRefused unless ``target`` looks like the arcface_torch folder."""
    target = Path(target)
    if not target.is_dir():
        raise PatchRefused(f"{target}: no such folder (expected the arcface_torch folder of an insightface clone)")
    if not (target / "train_v2.py").is_file():
        hint = target / "recognition" / "arcface_torch"
        extra = f"; did you mean {hint}?" if hint.is_dir() else ""
        raise PatchRefused(f"{target}: no train_v2.py here, so this is not recognition/arcface_torch{extra}")


def is_patched(target: Path, patches: PatchSet) -> bool:
    """Whether ``target`` is the pinned upstream with every patch applied, exactly."""
    check_target_dir(target)
    return all(s.state == PATCHED for s in target_states(target, patches))


def plan(target: Path, patches: PatchSet, revert: bool = False) -> Dict[str, Optional[bytes]]:
    """The new content of every file (None: delete it) for apply or revert; raises PatchRefused, writes nothing."""
    check_target_dir(target)
    states = target_states(target, patches)
    modified = [s for s in states if s.state == MODIFIED]
    if modified:
        fp = modified[0].patch
        fix = (f"remove {target / fp.path} (upstream has no such file; insightface-pwr creates it)" if fp.is_new
               else f"restore it from a clean checkout of that commit: git checkout -- {fp.path}")
        raise PatchRefused(f"{target} is neither the pinned upstream {PINNED} nor that upstream patched by "
                           f"insightface-pwr: {modified[0].detail}. To start again, {fix}.")
    needed, other = (PATCHED, PRISTINE) if revert else (PRISTINE, PATCHED)
    if all(s.state == other for s in states):
        if revert:
            raise PatchRefused(f"{target} is not patched (every file is the pinned upstream): nothing to revert")
        raise PatchRefused(f"{target} is already patched by insightface-pwr: refusing to apply twice "
                           f"(undo with: insightface-pwr patch --revert {target})")
    if any(s.state != needed for s in states):
        listing = ", ".join(f"{s.patch.path}: {s.state}" for s in states)
        new_files = [s.patch.path for s in states if s.patch.is_new and s.state == PATCHED]
        extra = f" (and remove {', '.join(new_files)}, which upstream does not have)" if new_files else ""
        raise PatchRefused(f"{target} is partly patched ({listing}); restore the upstream files from a clean "
                           f"checkout of {PINNED}{extra}")
    if revert:
        return {s.patch.path: s.pristine for s in states}
    return {s.patch.path: s.patched for s in states}


# ---------------------------------------------------------------------------------------------------- writing
def write_all(target: Path, contents: Dict[str, Optional[bytes]]) -> None:
    """Write (or delete, for None) every file; on failure put back the files already changed, then re-raise."""
    target = Path(target)
    done: List[Tuple[Path, Optional[bytes], int]] = []
    try:
        for rel, data in contents.items():
            path = target / rel
            old = path.read_bytes() if path.is_file() else None
            mode = path.stat().st_mode & 0o7777 if old is not None else 0o644
            if data is None:
                if old is not None:
                    path.unlink()
                    fsync_dir(path.parent)
            else:
                atomic_write_bytes(path, data, mode)
            done.append((path, old, mode))
    except BaseException:
        for path, old, mode in reversed(done):
            if old is None:
                if path.exists():
                    path.unlink()
            else:
                atomic_write_bytes(path, old, mode)
        raise


def apply(target: Path, patches: PatchSet) -> List[FileState]:
    """Patch a pristine arcface_torch folder; returns the states before writing."""
    write_all(target, plan(target, patches, revert=False))
    return target_states(target, patches)


def revert(target: Path, patches: PatchSet) -> List[FileState]:
    """Give a patched folder back its exact pinned bytes (and remove the files the patches created)."""
    contents = plan(target, patches, revert=True)
    for fp in patches.files:  # the manifest is the judge of "exact bytes"
        data = contents[fp.path]
        if not fp.is_new and (data is None or sha256(data) != patches.manifest[fp.path]):
            raise PatchRefused(f"{fp.path}: reverting would not give the pinned bytes; nothing was written")
    write_all(target, contents)
    return target_states(target, patches)
