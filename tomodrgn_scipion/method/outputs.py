"""Writing results: text tables and plots, each atomically (temporary name, then rename)."""
from __future__ import annotations

import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np


def atomic_path(path: str | os.PathLike) -> tuple[Path, Path]:
    """A temporary sibling of ``path`` (same suffix) and ``path`` itself, with the folder created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    # mkstemp creates 0600 files; give the result the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return Path(tmp), path


@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write to; on success it replaces ``path``, on error it is removed."""
    tmp, final = atomic_path(path)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
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
