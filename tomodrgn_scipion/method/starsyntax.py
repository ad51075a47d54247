"""Syntax check of STAR files, before any table is read from them.

The readers of :mod:`.star` build tables from a file; a file they cannot read exactly (a label given
twice, a row with a field too many or too few, a quote left open) would otherwise be misread without a
word. :func:`check_star_syntax` walks the file once and stops at the first such line with one line naming
the file, the line number (1-based, as an editor counts) and the data block.

The syntax is RELION's flavour of STAR:

- ``data_NAME`` opens a block; content before the first block is an error, as is a block name given twice.
- In a block, ``_label value`` lines are key-value pairs (``data_general`` of RELION 5 tomograms) and
  ``loop_`` opens a table: its ``_label`` lines (each optionally followed by a ``#N`` comment), then one row
  per line with exactly one field per label. A blank line, the next ``data_`` or the end of the file ends
  the rows, as in RELION's reader; a table with labels and no rows is valid.
- Fields are separated by whitespace. A field opening with ``'`` or ``"`` runs to the same quote followed
  by whitespace or the end of the line (so ``'it's'`` is one field); a field opening with ``[`` runs to the
  matching ``]`` (RELION 5 lists such as ``[1,1,0,1]``, also when written with spaces). An unquoted field
  starting with ``#`` starts a comment that runs to the end of the line.
"""
from __future__ import annotations

import os
from pathlib import Path

from .errors import InputError

_SPECIAL = ("'", '"', "[", "#")


class _LineError(Exception):
    """A tokenising error of one line (the caller adds file, line number and block)."""


def _fields(line: str) -> list[str]:
    """The fields of one line, comments dropped, quotes of quoted fields removed.

    Raises
    ------
    _LineError
        For a quote or bracket left open.
    """
    if not any(c in line for c in _SPECIAL):
        return line.split()
    out: list[str] = []
    i, n = 0, len(line)
    while i < n:
        c = line[i]
        if c.isspace():
            i += 1
            continue
        if c == "#":
            break
        if c in "'\"":
            j = i + 1
            while True:
                j = line.find(c, j)
                if j < 0:
                    raise _LineError(f"quoted field opened with {c} at column {i + 1} is not closed on this line")
                if j + 1 == n or line[j + 1].isspace():
                    break
                j += 1
            out.append(line[i + 1:j])
            i = j + 1
            continue
        if c == "[":
            depth, j = 0, i
            while j < n:
                if line[j] == "[":
                    depth += 1
                elif line[j] == "]":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            if depth:
                raise _LineError(f"list opened with [ at column {i + 1} is not closed on this line")
            if j + 1 < n and not line[j + 1].isspace():
                raise _LineError(f"list closed with ] at column {j + 1} is followed by {line[j + 1]!r} without a space")
            out.append(line[i:j + 1])
            i = j + 1
            continue
        j = i
        while j < n and not line[j].isspace():
            j += 1
        out.append(line[i:j])
        i = j
    return out


def check_star_syntax(path: str | os.PathLike) -> None:
    """Refuse a STAR file that cannot be read exactly.

    Parameters
    ----------
    path : path-like
        An existing STAR file (single- or multi-block).

    Raises
    ------
    InputError
        One line: ``PATH: line N (block data_X): what is wrong``, for content before the first block, a
        block name or label given twice in a block, a key without a value, a ``loop_`` without labels
        followed by rows, values after the blank line that ended a loop, a row with more or fewer fields than
        its loop has labels, or a quote or list left open. Also when the file is not readable text.
    """
    path = Path(path)
    blocks: dict[str, int] = {}  # block name -> line where it opened
    block: str | None = None
    labels: dict[str, int] = {}  # labels of the current block -> their line
    loop_labels: list[str] = []
    state = "outside"  # outside | header (reading loop labels) | rows | ended (blank line after rows)
    ended_at = 0

    def fail(lineno: int, what: str) -> InputError:
        where = f" (block data_{block})" if block is not None else ""
        return InputError(f"{path}: line {lineno}{where}: {what}")

    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise InputError(f"{path}: cannot open the star file ({exc.strerror})") from None
    with fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                s = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                raise InputError(f"{path}: line {lineno}: not a text file (bytes that are not UTF-8)") from None
            if not s:
                if state == "rows":
                    state, ended_at = "ended", lineno
                continue
            if s[0] == "#":
                continue
            if s.startswith("data_"):
                head = _fields(s)
                if len(head) != 1:
                    raise fail(lineno, f"{head[1]!r} after the block name {head[0]}")
                block = head[0][len("data_"):]
                if block in blocks:
                    raise fail(lineno, f"block data_{block} appears a second time (first at line {blocks[block]})")
                blocks[block] = lineno
                labels, loop_labels, state = {}, [], "outside"
                continue
            if block is None:
                raise InputError(f"{path}: line {lineno}: {s[:40]!r} before the first data_ block")
            try:
                fields = _fields(s)
            except _LineError as exc:
                raise fail(lineno, str(exc)) from None
            if not fields:
                continue
            first = fields[0]
            if state == "rows" or (state == "header" and not first.startswith("_")):
                if not loop_labels:
                    raise fail(lineno, "data row in a loop_ that has no labels")
                if len(fields) != len(loop_labels):
                    few = "few" if len(fields) < len(loop_labels) else "many"
                    raise fail(lineno, f"row has {len(fields)} fields, too {few} for the loop's {len(loop_labels)} labels")
                state = "rows"
                continue
            if s.startswith("loop_"):
                if len(fields) != 1 or first != "loop_":
                    raise fail(lineno, f"{s[:40]!r}: loop_ must stand alone on its line")
                loop_labels, state = [], "header"
                continue
            if first.startswith("_"):
                if len(first) == 1:
                    raise fail(lineno, "a label with no name (a lone _)")
                if first in labels:
                    raise fail(lineno, f"label {first} appears a second time in the block (first at line {labels[first]})")
                labels[first] = lineno
                if state == "header":
                    if len(fields) > 1:
                        raise fail(lineno, f"label {first} of a loop_ is followed by {fields[1]!r}; loop labels stand alone (a #N comment is allowed)")
                    loop_labels.append(first)
                    continue
                if len(fields) != 2:
                    what = "has no value" if len(fields) == 1 else f"has {len(fields) - 1} values; quote a value with spaces"
                    raise fail(lineno, f"key {first} {what}")
                state = "outside"
                continue
            if state == "ended":
                raise fail(lineno, f"values {s[:40]!r} after the blank line {ended_at} that ended the loop; "
                                   "remove the blank line or start a new loop_")
            raise fail(lineno, f"{s[:40]!r} is neither a data_ block, a loop_, a _label nor a row of a loop")
