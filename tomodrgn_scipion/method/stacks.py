"""MRC image stacks named by ``N@path.mrcs`` (1-based), read with mrcfile, memory-mapped.

Paths resolve relative to the star file's folder first, then to ``--datadir`` (as written, then by
file name alone). Stacks may be shared by many particles or hold one particle each. Float32 (MRC mode 2)
and float16 (mode 12) are read as float32; the integer modes 0 (int8), 1 (int16) and 6 (uint16) are
converted to float32 value for value (no scaling), as the counts they hold. Other modes (complex, 4-bit)
are refused, and so is a file whose size is not what its header says (a truncated stack, or a header
whose mode does not match the data), and an image with a NaN or infinite pixel.
"""
from __future__ import annotations

import os
import threading
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import mrcfile
import numpy as np
import pandas as pd

from .errors import InputError
from .outputs import atomic_path, atomic_write, os_error_line, protect_inputs


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
    #: MRC modes read, and the bytes per pixel of each.
    MODES = {0: 1, 1: 2, 2: 4, 6: 2, 12: 2}
    MODE_NAMES = {0: "int8", 1: "int16", 2: "float32", 3: "complex int16", 4: "complex float32", 6: "uint16",
                  12: "float16", 101: "4-bit"}

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
        self._layout: list[tuple[int, str, int]] = []
        counts = []
        # one cache of open maps per thread: batch workers read in parallel, and a map one thread
        # closes must not be one another thread is reading
        self._local = threading.local()
        self._caches: list[OrderedDict[int, np.memmap]] = []
        self._caches_lock = threading.Lock()
        box_from: tuple[int, Path] | None = None
        for s, r in enumerate(uniques):
            path = self._resolve(str(r), int(first_row[s]))
            count, *shape, offset, dtype = self._header(path)
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
            self._layout.append((offset, dtype, count))
        protect_inputs(*self.paths)
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

    #: numpy type of each MRC mode, little-endian.
    DTYPES = {0: "i1", 1: "<i2", 2: "<f4", 6: "<u2", 12: "<f2"}

    @classmethod
    def _header(cls, path: Path) -> tuple[int, int, int, int, str]:
        """(number of images, ny, nx, data offset in bytes, numpy dtype) from the MRC header, checked
        against the mode and the file size.

        The 1024 header bytes are read directly (RELION, Warp and mrcfile write standard MRC2014
        headers; this is ~10x faster than opening with mrcfile, which matters at 10^5 stacks); a header
        whose machine stamp is not a standard one is read by mrcfile in permissive mode.
        """
        try:
            with open(path, "rb") as fh:
                raw = fh.read(1024)
        except OSError as exc:
            raise InputError(f"{path}: not a readable MRC file ({exc.strerror or exc})") from None
        stamp = raw[212:214] if len(raw) == 1024 else b""
        order = "<" if stamp in (b"\x44\x44", b"\x44\x41") else ">" if stamp == b"\x11\x11" else None
        if order is not None:
            nx, ny, nz, mode = (int(v) for v in np.frombuffer(raw, order + "i4", 4))
            ext = int(np.frombuffer(raw, order + "i4", 1, 92)[0])
        else:
            try:
                with warnings.catch_warnings():
                    # Many EM programs write headers that mrcfile only accepts in permissive mode.
                    warnings.simplefilter("ignore", RuntimeWarning)
                    with mrcfile.open(path, mode="r", permissive=True, header_only=True) as mrc:
                        h = mrc.header
                        nz, ny, nx, mode, ext = int(h.nz), int(h.ny), int(h.nx), int(h.mode), int(h.nsymbt)
                        order = "<" if mrc.header.mode.dtype.byteorder in ("<", "=", "|") else ">"
            except Exception as exc:
                raise InputError(f"{path}: not a readable MRC file ({exc})") from None
        if mode not in cls.MODES:
            name = cls.MODE_NAMES.get(mode, "unknown")
            raise InputError(f"{path}: MRC mode {mode} ({name}) is not an image mode read here "
                             f"(float32, float16, int8, int16, uint16)")
        if min(nx, ny, nz) < 1 or ext < 0:
            raise InputError(f"{path}: the header says {nz} images of {nx} x {ny} pixels; an empty stack")
        expected = 1024 + ext + nx * ny * nz * cls.MODES[mode]
        size = path.stat().st_size
        if size < expected:
            raise InputError(f"{path}: truncated: {size} bytes, but the header ({nz} images of {nx} x {ny}, "
                             f"{cls.MODE_NAMES[mode]}) needs {expected}")
        if size > expected:
            raise InputError(f"{path}: {size} bytes, more than the {expected} its header ({nz} images of {nx} x {ny}, "
                             f"{cls.MODE_NAMES[mode]}) describes; the mode or size in the header does not match the data")
        return nz, ny, nx, 1024 + ext, order + cls.DTYPES[mode][1:] if mode else "i1"

    @classmethod
    def _header_shape(cls, path: Path) -> tuple[int, int, int]:
        """(number of images, ny, nx) of an MRC stack (see :meth:`_header`)."""
        return cls._header(path)[:3]

    def _open_maps(self) -> "OrderedDict[int, np.memmap]":
        """This thread's open memory maps, least recently used first."""
        cache = getattr(self._local, "maps", None)
        if cache is None:
            cache = self._local.maps = OrderedDict()
            with self._caches_lock:
                self._caches.append(cache)
        return cache

    def _stack(self, s: int) -> np.ndarray:
        """Memory map of stack ``s``, shape (n, D, D); at most MAX_OPEN files per reading thread stay
        open (one stack per particle is common, and file handles are limited)."""
        maps = self._open_maps()
        if s in maps:
            maps.move_to_end(s)
        else:
            if len(maps) >= self.MAX_OPEN:
                maps.popitem(last=False)  # the map (and its file handle) goes with its last reference
            offset, dtype, count = self._layout[s]
            try:
                maps[s] = np.memmap(self.paths[s], dtype=dtype, mode="r", offset=offset, shape=(count, self.box, self.box))
            except (OSError, ValueError) as exc:
                raise InputError(f"{self.paths[s]}: not a readable MRC file ({exc})") from None
        return maps[s]

    def _read(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), self.box, self.box), dtype=np.float32)
        stacks = self.stack_of[rows]
        for s in np.unique(stacks):
            sel = np.flatnonzero(stacks == s)
            idx = self.index[rows[sel]]
            order = np.argsort(idx, kind="stable")
            out[sel[order]] = self._stack(int(s))[idx[order]]
        finite = np.isfinite(out).all(axis=(1, 2))
        if not finite.all():
            i = int(np.flatnonzero(~finite)[0])
            row = int(rows[i])
            raise InputError(f"{self.paths[self.stack_of[row]]}: image {self.index[row] + 1} (star row {row + 1}) "
                             f"has NaN or infinite pixels")
        return out

    def close(self) -> None:
        """Close the open memory maps of every thread (they reopen on demand); call it when no read is
        in flight."""
        with self._caches_lock:
            for cache in self._caches:
                cache.clear()

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


def check_finite(path: str | os.PathLike, data: np.ndarray) -> None:
    """Refuse to write an array with NaN or infinite values (they come from bad input, never from the method).

    Raises
    ------
    InputError
        Naming ``path`` and the number of such values.
    """
    bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
    if bad:
        raise InputError(f"{path}: not written: {bad} of {np.size(data)} values would be NaN or infinite; "
                         f"check the input images and the numeric options")


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
    check_finite(path, data)
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
        try:
            self.mrc = mrcfile.new_mmap(self.tmp, shape=(n, box, box), mrc_mode=2, overwrite=True)
        except OSError as exc:
            os.unlink(self.tmp)
            raise InputError(os_error_line(self.path, exc)) from None
        try:
            # Reserve the space now: writing into a sparse memory map on a full disk dies of SIGBUS.
            fd = os.open(self.tmp, os.O_RDWR)
            try:
                os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
            finally:
                os.close(fd)
        except OSError as exc:
            self.abort()
            raise InputError(os_error_line(self.path, exc)) from None
        self.mrc.set_image_stack()
        self.mrc.voxel_size = pixel_size
        self._min, self._max, self._sum, self._sum2, self._count = np.inf, -np.inf, 0.0, 0.0, 0

    def write(self, start: int, images: np.ndarray) -> None:
        """Put ``images`` (B, D, D) at positions ``start .. start + B - 1`` (0-based)."""
        check_finite(self.path, images)
        self.mrc.data[start:start + len(images)] = images
        x = np.asarray(images, dtype=np.float64)
        self._min, self._max = min(self._min, float(x.min())), max(self._max, float(x.max()))
        self._sum += float(x.sum())
        self._sum2 += float(np.square(x).sum())
        self._count += x.size

    def close(self) -> None:
        """Finish the header and rename the file into place.

        The header statistics (min, max, mean, RMS deviation from the mean) are kept as images come:
        mrcfile's ``update_header_stats`` would make a temporary copy of the whole stack.
        """
        h = self.mrc.header
        mean = self._sum / max(self._count, 1)
        h.dmin, h.dmax, h.dmean = np.float32(self._min), np.float32(self._max), np.float32(mean)
        h.rms = np.float32(np.sqrt(max(self._sum2 / max(self._count, 1) - mean * mean, 0.0)))
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
