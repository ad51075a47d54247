"""MRC image stacks named by ``N@path.mrcs`` (1-based), read with mrcfile, memory-mapped.

Paths resolve relative to the star file's folder first, then to ``--datadir`` (as written, then by
file name alone). Stacks may be shared by many particles or hold one particle each; float16 and
float32 (and the integer MRC modes) are read as float32.
"""
from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import mrcfile
import mrcfile.mrcmemmap
import numpy as np
import pandas as pd

from .errors import InputError
from .outputs import atomic_path, atomic_write


class ImageSource:
    """Random access to the tilt images of a star file.

    Parameters
    ----------
    image_names : sequence of str, length N_images
        ``_rlnImageName`` values.
    star_path : path-like
        The star file whose folder anchors relative paths (then the folders above it, as RELION writes
        paths relative to its project folder); named in errors.
    datadir : path-like, optional
        Second folder to look for stacks in.
    lazy : bool
        If False (default), all images are read into memory at once (float32); if True, images are read
        from the memory-mapped stacks on each access, for data larger than RAM.
    named_in : path-like, optional
        The file named in errors (default ``star_path``).

    Attributes
    ----------
    box : int
        Image size D in pixels (square, even).
    """

    MAX_OPEN = 64

    def __init__(self, image_names: Sequence[str], star_path: str | os.PathLike,
                 datadir: str | os.PathLike | None = None, lazy: bool = False,
                 named_in: str | os.PathLike | None = None):
        self.anchor = Path(star_path)
        self.star_path = Path(named_in) if named_in is not None else self.anchor
        self.datadir = Path(datadir) if datadir else None
        names = pd.Series(np.asarray(image_names, dtype=str))
        has_at = names.str.contains("@", regex=False)
        parts = names.str.split("@", n=1, expand=True) if has_at.any() else pd.DataFrame({0: names, 1: names})
        rel = parts[1].where(has_at, names)
        number = pd.to_numeric(parts[0].where(has_at, "1"), errors="coerce").to_numpy()
        bad = ~np.isfinite(number) | (number != np.round(number))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise InputError(f"{self.star_path}: row {row + 1}: column _rlnImageName has {names[row]!r}, expected N@stack.mrcs")
        self.index = number.astype(np.int64) - 1
        codes, uniques = pd.factorize(rel, sort=False)
        self.stack_of = codes.astype(np.int64)
        first_row = np.full(len(uniques), len(names))
        np.minimum.at(first_row, codes, np.arange(len(names)))
        self.paths: list[Path] = []
        counts = []
        self._open_maps: OrderedDict[int, mrcfile.mrcmemmap.MrcMemmap] = OrderedDict()
        box_from: tuple[int, Path] | None = None
        for s, r in enumerate(uniques):
            path = self._resolve(str(r), int(first_row[s]))
            count, *shape = self._header_shape(path)
            if shape[0] != shape[1]:
                raise InputError(f"{path}: images are {shape[1]} x {shape[0]} pixels; boxes must be square")
            if shape[0] % 2:
                raise InputError(f"{path}: box of {shape[0]} pixels is odd; boxes must be even")
            if box_from is None:
                box_from = (shape[0], path)
            elif shape[0] != box_from[0]:
                raise InputError(f"{path}: box of {shape[0]} pixels differs from {box_from[0]} in {box_from[1]}; all stacks must share one box size")
            self.paths.append(path)
            counts.append(count)
        beyond = (self.index < 0) | (self.index >= np.asarray(counts, dtype=np.int64)[self.stack_of])
        if beyond.any():
            row = int(np.flatnonzero(beyond)[0])
            s = self.stack_of[row]
            raise InputError(f"{self.star_path}: row {row + 1}: image {self.index[row] + 1} of {self.paths[s]} does not exist (the stack holds {counts[s]})")
        if box_from is None:
            raise InputError(f"{self.star_path}: star file has no particle rows")
        self.box = box_from[0]
        self.lazy = lazy
        self._memory: np.ndarray | None = None
        if not lazy:
            self._memory = self._read(np.arange(len(names)))
            self.close()

    def __len__(self) -> int:
        return len(self.index)

    def _resolve(self, rel: str, row: int) -> Path:
        p = Path(rel)
        folder = self.anchor.parent
        candidates = [p] if p.is_absolute() else [folder / p] + [up / p for up in folder.resolve().parents]
        if self.datadir is not None:
            candidates += [self.datadir / p, self.datadir / p.name]
        for c in candidates:
            if c.is_file():
                return c
        where = str(candidates[0]) + ("" if p.is_absolute() else " and in the folders above it")
        if self.datadir is not None:
            where += f", {self.datadir / p}, {self.datadir / p.name}"
        hint = "" if self.datadir is not None else "; pass --datadir if the stacks are elsewhere"
        raise InputError(f"{self.star_path}: row {row + 1}: image file {rel} not found (looked for {where}){hint}")

    @staticmethod
    def _header_shape(path: Path) -> tuple[int, int, int]:
        """(number of images, ny, nx) from the MRC header alone."""
        try:
            with warnings.catch_warnings():
                # Many EM programs write headers that mrcfile only accepts in permissive mode.
                warnings.simplefilter("ignore", RuntimeWarning)
                with mrcfile.open(path, mode="r", permissive=True, header_only=True) as mrc:
                    h = mrc.header
                    return int(h.nz), int(h.ny), int(h.nx)
        except Exception as exc:
            raise InputError(f"{path}: not a readable MRC file ({exc})") from None

    def _stack(self, s: int) -> np.ndarray:
        """Memory map of stack ``s``, shape (n, D, D); at most MAX_OPEN files stay open (one stack
        per particle is common, and file handles are limited)."""
        if s in self._open_maps:
            self._open_maps.move_to_end(s)
        else:
            if len(self._open_maps) >= self.MAX_OPEN:
                self._open_maps.popitem(last=False)[1].close()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                self._open_maps[s] = mrcfile.mmap(self.paths[s], mode="r", permissive=True)
        data = self._open_maps[s].data
        if data is None:
            raise InputError(f"{self.paths[s]}: not a readable MRC file (no data)")
        return data.reshape(-1, self.box, self.box)

    def _read(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), self.box, self.box), dtype=np.float32)
        stacks = self.stack_of[rows]
        for s in np.unique(stacks):
            sel = np.flatnonzero(stacks == s)
            idx = self.index[rows[sel]]
            order = np.argsort(idx, kind="stable")
            out[sel[order]] = self._stack(int(s))[idx[order]]
        return out

    def close(self) -> None:
        """Close the open memory maps (they reopen on demand)."""
        while self._open_maps:
            self._open_maps.popitem()[1].close()

    def get(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """Images of the given rows.

        Parameters
        ----------
        rows : array of int, shape (B,)
            Row numbers of the star file (0-based).

        Returns
        -------
        numpy.ndarray, float32, shape (B, D, D)
            Images indexed ``[y, x]`` (MRC row order).
        """
        rows = np.asarray(rows, dtype=np.int64)
        if self._memory is not None:
            return self._memory[rows]
        return self._read(rows)


def write_mrc(path: str | os.PathLike, data: np.ndarray, pixel_size: float) -> None:
    """Write an image stack or a volume as MRC (float32), atomically, with the pixel size in the header.

    Parameters
    ----------
    path : path-like
    data : numpy.ndarray, shape (N, D, D) or (D, D, D)
        A stack is written as an image stack (``.mrcs``), a volume as a volume, by the file suffix.
    pixel_size : float
        A per pixel.
    """
    with atomic_write(path) as tmp, mrcfile.new(tmp, overwrite=True) as mrc:
        mrc.set_data(np.ascontiguousarray(data, dtype=np.float32))
        if Path(path).suffix == ".mrcs":
            mrc.set_image_stack()
        mrc.voxel_size = pixel_size


class StackWriter:
    """Write a large image stack in chunks without holding it in memory; renamed into place on close.

    Parameters
    ----------
    path : path-like
        Final ``.mrcs`` path.
    n : int
        Number of images.
    box : int
        Image size.
    pixel_size : float
        A per pixel.
    """

    def __init__(self, path: str | os.PathLike, n: int, box: int, pixel_size: float):
        self.tmp, self.path = atomic_path(path)
        self.mrc = mrcfile.new_mmap(self.tmp, shape=(n, box, box), mrc_mode=2, overwrite=True)
        self.mrc.set_image_stack()
        self.mrc.voxel_size = pixel_size

    def write(self, start: int, images: np.ndarray) -> None:
        """Put ``images`` (B, D, D) at positions ``start .. start + B - 1`` (0-based)."""
        self.mrc.data[start:start + len(images)] = images

    def close(self) -> None:
        """Finish the header and rename the file into place."""
        self.mrc.update_header_stats()
        self.mrc.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        """Drop the partial file."""
        self.mrc.close()
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)


def read_volume(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """Read a cubic MRC volume.

    Returns
    -------
    volume : numpy.ndarray, float32, shape (D, D, D)
        Indexed ``[z, y, x]``.
    pixel_size : float
        From the header (A; 1.0 when the header has none).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: volume file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            with mrcfile.open(path, mode="r", permissive=True) as mrc:
                vol = np.asarray(mrc.data, dtype=np.float32).copy()
                pix = float(mrc.voxel_size.x) or 1.0
    except Exception as exc:
        raise InputError(f"{path}: not a readable MRC file ({exc})") from None
    if vol.ndim != 3 or len(set(vol.shape)) != 1:
        raise InputError(f"{path}: expected a cubic volume, got shape {vol.shape}")
    return vol, pix
