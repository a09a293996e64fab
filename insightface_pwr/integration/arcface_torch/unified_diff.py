"""Unified diffs in pure Python, as bytes: parsing (``parse_patch``) and exact application (``apply_hunks``: hunks at
exactly their header's line numbers, no fuzz, forward or reverse). Lines keep their own end of line, so CRLF and a
missing final newline (``\\ No newline at end of file``) round-trip exactly. No ``patch`` or ``git`` binary."""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from ...infra.errors import UserError

__all__ = ["PatchFileError", "Hunk", "FilePatch", "HunkMismatch", "split_lines", "sha256", "parse_patch",
           "apply_hunks"]

_HUNK_RE = re.compile(rb"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
_NO_NEWLINE = b"\\ No newline at end of file"
_GIT_HEADERS = (b"diff ", b"index ", b"new file mode ", b"old mode ", b"new mode ")  # `git diff` file headers


class PatchFileError(UserError, ValueError):
    """A patch, series or manifest file is malformed (names the file and line)."""


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
