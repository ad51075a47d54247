"""STAR files as a list of data blocks, every value kept as the file's text.

A block is either a loop (labels, then one row per line) or a list of ``_label value`` pairs. The text
of every header line (``data_`` line, ``loop_``, labels, comments) and of every data row is kept
verbatim, so that a subset of a table is written back as the same lines: every block, label, value,
comment and number format the user had, only with rows left out.
"""
from __future__ import annotations

import dataclasses
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..errors import InputError
from ..outputs import atomic_write

_BLOCK_RE = re.compile(r"^[ \t]*data_", re.MULTILINE)


@dataclass
class Block:
    """One ``data_`` block of a STAR file.

    Attributes
    ----------
    name : str
        The block name after ``data_`` (may be empty).
    header : list of str
        Verbatim lines from the ``data_`` line through the last label (or every line of a pair block).
    labels : list of str or None
        Loop labels without the leading underscore; None for a block of pairs.
    rows : list of str
        Verbatim data rows of a loop, in file order.
    pairs : dict of str to str
        ``label -> value`` text of a block of pairs (label without the underscore).
    first_line : int
        1-based line number of the ``data_`` line in the file.
    """

    name: str
    header: list[str]
    labels: list[str] | None
    rows: list[str] = field(default_factory=list)
    pairs: dict[str, str] = field(default_factory=dict)
    first_line: int = 1
    _table: pd.DataFrame | None = None

    @property
    def is_loop(self) -> bool:
        return self.labels is not None

    def table(self, path: Path) -> pd.DataFrame:
        """The loop as text, one column per label (named without the underscore).

        Parameters
        ----------
        path : Path
            The file, named in errors.

        Returns
        -------
        pandas.DataFrame
            ``len(rows)`` rows, every value a str.
        """
        if self._table is None:
            self._table = _parse_rows(self, path)
        return self._table


def _parse_rows(block: Block, path: Path) -> pd.DataFrame:
    labels = block.labels or []
    if len(set(labels)) != len(labels):
        dup = next(c for c in labels if labels.count(c) > 1)
        raise InputError(f"{path}: block data_{block.name}: label _{dup} appears twice")
    if not block.rows:
        return pd.DataFrame({c: pd.Series([], dtype=object) for c in labels})
    try:
        df = pd.read_csv(io.StringIO("\n".join(block.rows)), sep=r"\s+", header=None, names=labels, dtype=str,
                         keep_default_na=False, na_filter=False, quotechar='"', engine="c", comment=None)
    except pd.errors.ParserError as exc:
        raise InputError(f"{path}: block data_{block.name}: rows do not match the {len(labels)} labels ({exc})") from None
    short = df.iloc[:, -1].to_numpy() == "" if len(labels) else np.zeros(len(df), bool)
    if short.any():
        row = int(np.flatnonzero(short)[0])
        raise InputError(f"{path}: block data_{block.name}: row {row + 1} has fewer values than the {len(labels)} labels")
    return df


@dataclass
class StarFile:
    """The blocks of a STAR file, in file order.

    Attributes
    ----------
    path : Path
    blocks : list of Block
    preamble : str
        Text before the first block (comments such as ``# version 50001``).
    ends_with_newline : bool
        Whether the file's last line is complete (a file cut short by a full disk or a killed copy is not).
    """

    path: Path
    blocks: list[Block]
    preamble: str = ""
    ends_with_newline: bool = True

    def names(self) -> list[str]:
        """Block names, in file order."""
        return [b.name for b in self.blocks]

    def get(self, name: str) -> Block | None:
        """The first block of that name (None if absent)."""
        return next((b for b in self.blocks if b.name == name), None)

    def loops(self) -> list[Block]:
        """The loop blocks, in file order."""
        return [b for b in self.blocks if b.is_loop]

    def pairs(self) -> dict[str, str]:
        """Every ``label -> value`` pair of the pair blocks (first occurrence wins)."""
        out: dict[str, str] = {}
        for b in self.blocks:
            for k, v in b.pairs.items():
                out.setdefault(k, v)
        return out

    def has_label(self, label: str) -> bool:
        """Whether any block has this loop label or pair label (without underscore)."""
        return any(label in (b.labels or ()) or label in b.pairs for b in self.blocks)


def read_blocks(path: str | os.PathLike) -> StarFile:
    """Read every block of a STAR file, as text.

    Parameters
    ----------
    path : path-like

    Returns
    -------
    StarFile

    Raises
    ------
    InputError
        If the file is missing, unreadable, or has no ``data_`` block.
    """
    from ..starsyntax import check_star_syntax

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: star file not found")
    check_star_syntax(path)
    try:
        text = path.read_text(errors="strict")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a readable text file ({exc})") from None
    starts = [m.start() for m in _BLOCK_RE.finditer(text)]
    if not starts:
        raise InputError(f"{path}: not a star file (no data_ block)")
    blocks = []
    line_no = text.count("\n", 0, starts[0]) + 1
    for i, s in enumerate(starts):
        chunk = text[s:starts[i + 1] if i + 1 < len(starts) else len(text)]
        blocks.append(_parse_block(chunk, line_no, path))
        line_no += chunk.count("\n")
    return StarFile(path, blocks, text[:starts[0]], text.endswith("\n"))


def _parse_block(chunk: str, first_line: int, path: Path) -> Block:
    lines = chunk.split("\n")
    name = lines[0].strip()[len("data_"):].split()[0] if lines[0].strip() != "data_" else ""
    header = [lines[0]]
    i = 1
    # pairs and comments before any loop
    pairs: dict[str, str] = {}
    while i < len(lines):
        s = lines[i].strip()
        if s.startswith("loop_"):
            break
        if s.startswith("_"):
            parts = s.split(None, 1)
            pairs[parts[0][1:]] = parts[1].strip() if len(parts) > 1 else ""
        elif s and not s.startswith("#"):
            raise InputError(f"{path}: line {first_line + i}: {s[:40]!r} in block data_{name} is neither a label nor a loop")
        header.append(lines[i])
        i += 1
    if i == len(lines):
        while header and not header[-1].strip():
            header.pop()
        return Block(name, header, None, pairs=pairs, first_line=first_line)
    if pairs:
        raise InputError(f"{path}: line {first_line + i}: block data_{name} mixes _label value pairs and a loop")
    header.append(lines[i])
    i += 1
    labels = []
    while i < len(lines):
        s = lines[i].strip()
        if s.startswith("_"):
            labels.append(s.split()[0][1:])
        elif s and not s.startswith("#"):
            break
        header.append(lines[i])
        i += 1
    while header and not header[-1].strip():
        header.pop()
    rows = [ln for ln in lines[i:] if ln.strip() and not ln.lstrip().startswith("#")]
    return Block(name, header, labels, rows=rows, first_line=first_line)


def write_blocks(star: StarFile, path: str | os.PathLike, keep_rows: dict[str, np.ndarray] | None = None) -> None:
    """Write the blocks of ``star``, verbatim, with only some rows of some loops; atomically.

    Parameters
    ----------
    star : StarFile
    path : path-like
        Output file (temporary name, then renamed).
    keep_rows : dict of str to numpy.ndarray of int, optional
        For each named loop block, the rows to write (0-based, written in the given order). Other
        blocks are written whole.
    """
    keep_rows = keep_rows or {}
    with atomic_write(path) as tmp, open(tmp, "w") as fh:
        fh.write(star.preamble)
        for b in star.blocks:
            fh.write("\n".join(b.header) + "\n")
            if b.is_loop:
                rows = b.rows if b.name not in keep_rows else [b.rows[r] for r in np.asarray(keep_rows[b.name], dtype=np.int64)]
                if rows:
                    fh.write("\n".join(rows) + "\n")
            fh.write("\n")


#: A field of a loop row as the reader splits it (``pandas.read_csv`` with ``sep=\s+``, ``quotechar='"'``).
_FIELD_RE = re.compile(r'"[^"]*"|\S+')


def with_values(star: StarFile, block: str, values: dict[str, Sequence[str | None]]) -> StarFile:
    """A copy of ``star`` in which some values of one loop are replaced, every other character of every
    row (the other values, the spacing between them) kept.

    Parameters
    ----------
    star : StarFile
    block : str
        Name of the loop block (after ``data_``).
    values : dict of str to sequence of (str or None)
        For each label (without underscore) present in the block, the new text of each of its rows (one
        entry per row of the block, ``None`` to keep that row's value). Labels absent from the block are
        an error of the caller.

    Returns
    -------
    StarFile
        The other blocks are the same objects; the edited block is a new one.
    """
    b = star.get(block)
    if b is None or not b.is_loop:
        raise ValueError(f"{star.path}: no loop block data_{block}")
    index = {label: b.labels.index(label) for label in values}
    rows = list(b.rows)
    for r, line in enumerate(rows):
        new = {index[label]: col[r] for label, col in values.items() if col[r] is not None}
        if not new:
            continue
        spans = [m.span() for m in _FIELD_RE.finditer(line)]
        if len(spans) != len(b.labels):
            raise InputError(f"{star.path}: block data_{block}: row {r + 1} has {len(spans)} values, "
                             f"not one per label ({len(b.labels)})")
        parts, end = [], 0
        for i, (s, e) in enumerate(spans):
            parts.append(line[end:s])
            text = new.get(i)
            parts.append(line[s:e] if text is None else (f'"{text}"' if re.search(r"\s", text) else text))
            end = e
        parts.append(line[end:])
        rows[r] = "".join(parts)
    edited = dataclasses.replace(b, rows=rows, _table=None)
    return dataclasses.replace(star, blocks=[edited if x is b else x for x in star.blocks])
