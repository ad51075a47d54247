"""Writing results: text tables and plots, each atomically (temporary name, then rename)."""
from __future__ import annotations

import errno
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from .errors import InputError


#: Files the running command reads, by resolved path and by (device, inode), so that no output replaces one
#: (see :func:`protect_inputs`); empty outside the command line.
_INPUTS: dict[object, Path] = {}

_CAUSES = {
    errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system", errno.EACCES: "permission denied", errno.EPERM: "permission denied",
    errno.EISDIR: "the path is a folder", errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EEXIST: "a file is in the way of a folder", errno.ENAMETOOLONG: "the name is too long",
}


def _keys(path: Path) -> list[object]:
    keys: list[object] = [str(path.resolve())]
    try:
        st = os.stat(path)
        keys.append((st.st_dev, st.st_ino))
    except OSError:
        pass
    return keys


def protect_inputs(*paths: str | os.PathLike | None) -> None:
    """Record files the command reads: an output that is one of them (the same resolved path, through
    symbolic links, or the same file through a hard link) is refused by :func:`check_not_input`.
    ``None`` and paths that are not files are skipped."""
    for p in paths:
        if p is None:
            continue
        p = Path(p)
        if p.is_file():
            for k in _keys(p):
                _INPUTS.setdefault(k, p)


def forget_inputs() -> None:
    """Clear the record of :func:`protect_inputs` (a new command starts)."""
    _INPUTS.clear()


def check_not_input(path: str | os.PathLike) -> None:
    """Raise :class:`InputError` naming both files when writing ``path`` would replace an input."""
    path = Path(path)
    for k in _keys(path):
        if k in _INPUTS:
            raise InputError(f"{path}: this output would replace the input {_INPUTS[k]}; choose another output name")


def check_outputs(paths: Iterable[str | os.PathLike]) -> None:
    """:func:`check_not_input` for every planned output, before any work is done."""
    for p in paths:
        check_not_input(p)


def os_error_line(path: str | os.PathLike, exc: OSError) -> str:
    """One line naming ``path`` and the cause of an OS error on writing it."""
    return f"{path}: cannot write: {_CAUSES.get(exc.errno or -1, exc.strerror or type(exc).__name__)}"


def atomic_path(path: str | os.PathLike) -> tuple[Path, Path]:
    """A temporary sibling of ``path`` (same suffix) and ``path`` itself, with the folder created.

    Raises
    ------
    InputError
        If ``path`` is a file the command reads, is a folder, or its folder cannot be created or written.
    """
    path = Path(path)
    check_not_input(path)
    if path.is_dir():
        raise InputError(f"{path}: cannot write: the path is a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f"{TMP_MARK}{path.suffix}", dir=path.parent)
    except OSError as exc:
        raise InputError(os_error_line(path, exc)) from None
    os.close(fd)
    # mkstemp creates 0600 files; give the result the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return Path(tmp), path


#: Part of every temporary name: ``.STEM.XXXXXXXX.tmp.SUFFIX`` (see :func:`remove_stale_temporaries`).
TMP_MARK = ".tmp"


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files that killed runs left in ``folder`` (not in its sub-folders).

    Returns
    -------
    list of Path
        The files removed.
    """
    gone = []
    for p in Path(folder).glob(".*"):
        if p.is_file() and re.fullmatch(r"\..+\.[A-Za-z0-9_]{8}\.tmp(\.[^.]+)?", p.name):
            p.unlink(missing_ok=True)
            gone.append(p)
    return gone


#: Open groups of :func:`all_or_nothing`: the (temporary, final) pairs whose renames wait for the group's end.
_PENDING: list[list[tuple[Path, Path]]] = []


@contextmanager
def all_or_nothing() -> Iterator[None]:
    """Hold back the renames of :func:`atomic_write` until the block ends: when it ends well every output
    appears, when it fails (or is interrupted) none does and the temporary files are removed.

    Used around a whole command, so that a command stopped by an error half-way leaves no output under a
    final name. ``train_vae`` does not use it: its checkpoints must land as they are written.
    """
    group: list[tuple[Path, Path]] = []
    _PENDING.append(group)
    try:
        yield
    except BaseException:
        for tmp, _ in group:
            tmp.unlink(missing_ok=True)
        raise
    finally:
        _PENDING.remove(group)
    for i, (tmp, final) in enumerate(group):
        try:
            os.replace(tmp, final)
        except OSError as exc:
            for t, _ in group[i:]:
                t.unlink(missing_ok=True)
            raise InputError(os_error_line(final, exc)) from None


@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write to; on success it replaces ``path`` (at the end of an enclosing
    :func:`all_or_nothing` block, if any), on error it is removed.

    Raises
    ------
    InputError
        One line naming ``path`` and the cause when the system refuses to write it (no space, read-only,
        permission, a folder in the way), or when ``path`` is an input of the command.
    """
    tmp, final = atomic_path(path)
    done = False
    try:
        yield tmp
        if _PENDING:
            _PENDING[-1].append((tmp, final))
        else:
            os.replace(tmp, final)
        done = True
    except OSError as exc:
        raise InputError(os_error_line(final, exc)) from None
    finally:
        if not done and tmp.exists():
            tmp.unlink()


def safe_name(name: str) -> str:
    """A file-name-safe form of a tomogram name: its base name without extension, other characters as ``_``."""
    base = Path(name).name
    stem = Path(base).stem if Path(base).suffix else base
    return re.sub(r"[^A-Za-z0-9._-]", "_", stem).strip(".") or "tomogram"


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically."""
    with atomic_write(path) as tmp:
        tmp.write_text(text)


def write_fsc_csv(path: str | os.PathLike, curve: np.ndarray, d: int, pixel_size: float) -> None:
    """FSC table: ``shell, frequency_1_per_A, resolution_A, fsc`` (one row per shell)."""
    shells = np.arange(len(curve))
    freq = shells / (d * pixel_size)
    with np.errstate(divide="ignore"):
        res = np.where(freq > 0, 1.0 / np.maximum(freq, 1e-30), np.inf)
    lines = ["shell,frequency_1_per_A,resolution_A,fsc"]
    lines += [f"{s},{f:.6f},{r:.3f},{c:.6f}" for s, f, r, c in zip(shells, freq, res, curve)]
    write_text(path, "\n".join(lines) + "\n")


def plot_fsc(path: str | os.PathLike, curve: np.ndarray, d: int, pixel_size: float, freq_0143: float,
             title: str = "") -> None:
    """Plot an FSC curve with the 0.143 threshold and the resolution it gives (PNG, atomic)."""
    from .plots import fsc_figure, save_figure

    save_figure(fsc_figure(np.arange(len(curve)) / (d * pixel_size), curve, freq_0143, title), path)
