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

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ...infra.errors import UserError
from ...infra.atomic import atomic_write_bytes, fsync_dir

PINNED = "deepinsight/insightface@0159b24d44cbc91abbd07b7a6fab0ba923a7fddf (recognition/arcface_torch)"
SERIES_FILE = "series"
MANIFEST_FILE = "upstream.sha256"

_HUNK_RE = re.compile(rb"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
_NO_NEWLINE = b"\\ No newline at end of file"
_GIT_HEADERS = (b"diff ", b"index ", b"new file mode ", b"old mode ", b"new mode ")  # `git diff` file headers


class PatchFileError(UserError, ValueError):
    """A patch, series or manifest file is malformed (names the file and line)."""


class PatchRefused(UserError, RuntimeError):
    """The target is not in the state the requested action needs; nothing was written."""


@dataclass(frozen=True)
class Hunk:
    """One ``@@ -old_start,old_len +new_start,new_len @@`` block; lines are (tag, bytes with end of line)."""

    index: int  # 1-based position within its file's hunks
    old_start: int  # 1-based; for old_len == 0 the line AFTER which the new lines go (0: top of file)
    old_len: int
    new_start: int
    new_len: int
    lines: Tuple[Tuple[str, bytes], ...]  # tag in " ", "-", "+"

    @property
    def header(self) -> str:
        return f"@@ -{self.old_start},{self.old_len} +{self.new_start},{self.new_len} @@"

    @property
    def pre(self) -> List[bytes]:
        """The lines this hunk expects (context and removed lines)."""
        return [text for tag, text in self.lines if tag != "+"]

    @property
    def post(self) -> List[bytes]:
        """The lines this hunk leaves (context and added lines)."""
        return [text for tag, text in self.lines if tag != "-"]


@dataclass(frozen=True)
class FilePatch:
    """The hunks of one target file; ``path`` is relative to the arcface_torch folder, with forward slashes."""

    path: str
    source: str  # the patch file it was read from
    is_new: bool  # the patch creates the file (``--- /dev/null``)
    hunks: Tuple[Hunk, ...]


@dataclass(frozen=True)
class PatchSet:
    """Every file patch of a series, with the manifest of pristine sha256 (path -> hex digest)."""

    directory: Path
    files: Tuple[FilePatch, ...]
    manifest: Dict[str, str]


# ----------------------------------------------------------------------------------------------- reading files
def split_lines(data: bytes) -> List[bytes]:
    """Split on b"\\n" only, keeping each line's end (b"\\r\\n" stays with its line; the last may have none)."""
    lines = data.split(b"\n")
    out = [line + b"\n" for line in lines[:-1]]
    if lines[-1]:
        out.append(lines[-1])
    return out


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _strip_prefix(name: bytes, where: str) -> Optional[str]:
    """``a/x`` / ``b/x`` -> ``x``; ``/dev/null`` -> None. Timestamps after a tab are dropped."""
    text = name.split(b"\t", 1)[0].decode("utf-8").strip()
    if text == "/dev/null":
        return None
    if not (text.startswith("a/") or text.startswith("b/")):
        raise PatchFileError(f"{where}: file name {text!r} should start with 'a/' or 'b/' (a diff made with -p1 "
                             "paths relative to the arcface_torch folder)")
    path = text[2:]
    if path.startswith("/") or ".." in Path(path).parts or not path:
        raise PatchFileError(f"{where}: file name {text!r} must be a relative path inside the arcface_torch folder")
    return path


def parse_patch(data: bytes, source: str) -> List[FilePatch]:
    """Parse a unified diff (text before the first ``---`` line is a free comment); checks every hunk's counts."""
    lines = split_lines(data)
    files: List[FilePatch] = []
    i = 0
    while i < len(lines):
        if not (lines[i].startswith(b"--- ") and i + 1 < len(lines) and lines[i + 1].startswith(b"+++ ")):
            if files and lines[i].strip() and not lines[i].startswith(_GIT_HEADERS):
                raise PatchFileError(f"{source}:{i + 1}: unexpected line {lines[i]!r} between hunks")
            i += 1
            continue
        old = _strip_prefix(lines[i][4:].rstrip(b"\r\n"), f"{source}:{i + 1}")
        new = _strip_prefix(lines[i + 1][4:].rstrip(b"\r\n"), f"{source}:{i + 2}")
        if new is None:
            raise PatchFileError(f"{source}:{i + 2}: deleting files is not supported")
        if old is not None and old != new:
            raise PatchFileError(f"{source}:{i + 1}: renames are not supported ({old!r} -> {new!r})")
        i += 2
        hunks: List[Hunk] = []
        while i < len(lines) and lines[i].startswith(b"@@"):
            hunk, i = _parse_hunk(lines, i, source, len(hunks) + 1)
            hunks.append(hunk)
        if not hunks:
            raise PatchFileError(f"{source}:{i + 1}: no hunk after the file header of {new!r}")
        if old is None and (len(hunks) != 1 or hunks[0].old_len != 0):
            raise PatchFileError(f"{source}: new file {new!r} must be one hunk '@@ -0,0 +1,N @@'")
        files.append(FilePatch(path=new, source=source, is_new=old is None, hunks=tuple(hunks)))
    if not files:
        raise PatchFileError(f"{source}: no '--- a/...' / '+++ b/...' file header found: not a unified diff")
    return files


def _parse_hunk(lines: List[bytes], i: int, source: str, index: int) -> Tuple[Hunk, int]:
    m = _HUNK_RE.match(lines[i])
    if not m:
        raise PatchFileError(f"{source}:{i + 1}: bad hunk header {lines[i]!r}")
    old_start, new_start = int(m.group(1)), int(m.group(3))
    old_len = 1 if m.group(2) is None else int(m.group(2))
    new_len = 1 if m.group(4) is None else int(m.group(4))
    body: List[Tuple[str, bytes]] = []
    n_old = n_new = 0
    header_line = i + 1
    i += 1
    while i < len(lines) and (n_old < old_len or n_new < new_len):
        line = lines[i]
        tag = line[:1].decode("latin-1")
        if line.rstrip(b"\r\n") == _NO_NEWLINE:
            raise PatchFileError(f"{source}:{i + 1}: '\\ No newline' marker before any line")
        if tag not in (" ", "-", "+"):
            if line in (b"\n", b"\r\n"):  # some editors strip the single space of an empty context line
                tag, line = " ", b" " + line
            else:
                raise PatchFileError(f"{source}:{i + 1}: hunk {index} (line {header_line}) has {n_old}/{old_len} "
                                     f"old and {n_new}/{new_len} new lines, then {line!r}")
        text = line[1:]
        i += 1
        if i < len(lines) and lines[i].rstrip(b"\r\n") == _NO_NEWLINE:
            text = text[:-2] if text.endswith(b"\r\n") else text[:-1] if text.endswith(b"\n") else text
            i += 1
        body.append((tag, text))
        n_old += tag != "+"
        n_new += tag != "-"
    if n_old != old_len or n_new != new_len:
        raise PatchFileError(f"{source}: hunk {index} of header -{old_start},{old_len} +{new_start},{new_len} "
                             f"ends early ({n_old} old, {n_new} new lines)")
    return Hunk(index, old_start, old_len, new_start, new_len, tuple(body)), i


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
class HunkMismatch(Exception):
    def __init__(self, hunk: Hunk, line_no: int, expected: Optional[bytes], found: Optional[bytes]):
        self.hunk, self.line_no, self.expected, self.found = hunk, line_no, expected, found
        super().__init__(self.describe())

    def describe(self) -> str:
        found = "end of file" if self.found is None else repr(self.found.decode("utf-8", "replace"))
        expected = "end of file" if self.expected is None else repr(self.expected.decode("utf-8", "replace"))
        return f"hunk {self.hunk.index} ({self.hunk.header}): line {self.line_no} is {found}, expected {expected}"


def apply_hunks(lines: Sequence[bytes], hunks: Sequence[Hunk], reverse: bool = False) -> List[bytes]:
    """Apply ``hunks`` at exactly their header's line numbers (``reverse``: undo them); raises HunkMismatch."""
    out: List[bytes] = []
    pos = 0
    for hunk in hunks:
        start, length = (hunk.new_start, hunk.new_len) if reverse else (hunk.old_start, hunk.old_len)
        want, put = (hunk.post, hunk.pre) if reverse else (hunk.pre, hunk.post)
        begin = start - 1 if length else start
        if begin < pos:
            raise HunkMismatch(hunk, start, None, None)
        out.extend(lines[pos:begin])
        for k, expected in enumerate(want):
            found = lines[begin + k] if begin + k < len(lines) else None
            if found != expected:
                raise HunkMismatch(hunk, begin + k + 1, expected, found)
        out.extend(put)
        pos = begin + length
    out.extend(lines[pos:])
    return out


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


def plan(target: Path, patches: PatchSet, revert: bool = False) -> Dict[str, Optional[bytes]]:
    """The new content of every file (None: delete it) for apply or revert; raises PatchRefused, writes nothing."""
    check_target_dir(target)
    states = target_states(target, patches)
    modified = [s for s in states if s.state == MODIFIED]
    if modified:
        raise PatchRefused(f"{target} is neither the pinned upstream {PINNED} nor that upstream patched by "
                           f"insightface-pwr: {modified[0].detail}. Start from a clean checkout of that commit "
                           f"(git checkout -- {modified[0].patch.path}).")
    needed, other = (PATCHED, PRISTINE) if revert else (PRISTINE, PATCHED)
    if all(s.state == other for s in states):
        if revert:
            raise PatchRefused(f"{target} is not patched (every file is the pinned upstream): nothing to revert")
        raise PatchRefused(f"{target} is already patched by insightface-pwr: refusing to apply twice "
                           f"(undo with: insightface-pwr patch --revert {target})")
    if any(s.state != needed for s in states):
        listing = ", ".join(f"{s.patch.path}: {s.state}" for s in states)
        raise PatchRefused(f"{target} is partly patched ({listing}); restore these files from a clean checkout "
                           f"of {PINNED}")
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
