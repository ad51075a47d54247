"""Star files, and the one internal model of particle tilt series, :class:`TiltSeriesStar`.

:func:`read_star` / :func:`write_star` read and write a single-table star (RELION 3.0 image series, Warp
volume series) with every column as the exact text of the file, so that rows written back keep every
value, column and row order untouched (``000_000001`` stays a string, ``1.10`` stays ``1.10``).

:class:`TiltSeriesStar` takes any format of :mod:`.formats` (RELION 3.0, RELION 3.1 with optics, RELION 5
and WarpTools particle series) and gives the same numeric views of every tilt image, grouped by
particle, with one-line errors that name the file, block, row and column at fault.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from .errors import InputError
from .formats.series import Editor
from .outputs import atomic_path, atomic_write

log = logging.getLogger(__name__)


def read_star(path: str | os.PathLike) -> pd.DataFrame:
    """Read the one table of a single-table star file (RELION 3.0), every value as its original text.

    Parameters
    ----------
    path : path-like

    Returns
    -------
    pandas.DataFrame
        One row per data row in file order; columns named without the leading underscore; the block
        name in ``attrs["block_name"]``.

    Raises
    ------
    InputError
        If the file is missing, unreadable, has several tables (RELION 3.1 optics) or no rows.
    """
    from .formats.blocks import read_blocks

    star = read_blocks(path)
    loops = star.loops()
    if star.get("optics") is not None:
        raise InputError(f"{star.path}: a RELION 3.1+ star with an optics table, where a single table is expected")
    if not loops or all(len(b.rows) == 0 for b in loops):
        raise InputError(f"{star.path}: star file has no particle rows")
    if len(loops) > 1:
        raise InputError(f"{star.path}: expected one table, found {len(loops)} ({', '.join('data_' + b.name for b in loops)})")
    df = loops[0].table(star.path).copy()
    df.attrs["block_name"] = loops[0].name
    return df.reset_index(drop=True)


def write_star(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write a particle table as a RELION 3.0 star file, atomically (temporary name, then rename).

    Text values are written as they are, so a table from :func:`read_star` comes back unchanged;
    floats added by the method are written with the shortest exact representation.
    """
    with atomic_write(path) as tmp:
        starfile.write({df.attrs.get("block_name", ""): df}, tmp, float_format=repr, sep="\t")


class TiltSeriesStar:
    """Particle tilt series in any supported format: numeric views of every tilt image, by particle.

    Parameters
    ----------
    path : path-like
        A RELION 3.0/3.1 image-series star, a RELION 5 / WarpTools optimisation set, or their
        particles.star (with ``tomograms``).
    df : pandas.DataFrame, optional
        A RELION 3.0 table already read (all columns as text, as :func:`read_star` gives).
    source_software : str
        ``auto`` (detected from the blocks and columns) or a format of :mod:`.formats`.
    tomograms : path-like, optional
        tomograms.star of a particles.star given without its optimisation set.
    ctf_premultiplied, dose_weighted : bool, optional
        Override what the files say (``--image-ctf-premultiplied``, ``--image-dose-weighted``).

    Attributes
    ----------
    source : str
        The format read (one of :data:`.formats.FORMATS`).
    df : pandas.DataFrame
        One row per tilt image: the user's columns that describe it, as text.
    particle_df : pandas.DataFrame or None
        For particle series, one row per particle (the user's particles.star columns, as text).
    particle_ids : list of str
        Particle names (``_rlnGroupName``, or ``_rlnTomoParticleName``) in order of first appearance.
    particle_index : numpy.ndarray, int64, shape (N_images,)
        Particle number of each image.
    row_of_image : numpy.ndarray, int64, shape (N_images,)
        Row (0-based) of the table of the user's file that lists each image (RELION 3) or its particle
        (particle series), as :meth:`write_subset`'s ``edit`` sees it.
    rows_of_particle : list of numpy.ndarray
        Image numbers of each particle's tilt images, in file order.
    pixel_size : float
        A per pixel.
    image_names : numpy.ndarray of str, shape (N_images,)
        ``N@stack`` of each image (1-based).
    image_anchor : Path
        Relative stack paths are looked up from this file's folder.
    dfu, dfv, dfang, voltage, cs, w, phase_shift : numpy.ndarray, float64, shape (N_images,)
        CTF parameters: A, A, degrees, kV, mm, fraction, degrees (the particle's own defocus).
    euler : numpy.ndarray, float64, shape (N_images, 3)
        rot, tilt, psi in degrees: RELION's pose of the particle in each image.
    shifts_px : numpy.ndarray, float64, shape (N_images, 2)
        RELION origin ``(x, y)`` of the particle in each image, pixels.
    dose : numpy.ndarray, float64, shape (N_images,)
        Cumulative dose, e/A^2.
    ctf_scalefactor : numpy.ndarray, float64, shape (N_images,)
        ``cos(stage tilt)``.
    stage_tilt_deg : numpy.ndarray, float64, shape (N_images,)
        ``arccos(ctf_scalefactor)`` in degrees (unsigned).
    ctf_premultiplied, dose_weighted : numpy.ndarray of bool, shape (N_images,)
        Images already multiplied by their CTF / weighted by their dose by the exporter.
    """

    def __init__(self, path: str | os.PathLike, df: pd.DataFrame | None = None, source_software: str = "auto",
                 tomograms: str | os.PathLike | None = None, ctf_premultiplied: bool | None = None,
                 dose_weighted: bool | None = None):
        from .formats import open_source
        from .formats.blocks import Block, StarFile
        from .formats.relion import read_relion3

        self.path = Path(path)
        if df is not None:
            name = df.attrs.get("block_name", "")
            block = Block(name, ["data_" + name, "", "loop_"] + [f"_{c}" for c in df.columns], list(df.columns))
            block._table = df
            src = read_relion3(StarFile(self.path, [block]), "relion3")
        else:
            src = open_source(self.path, source_software, tomograms)
        self._src = src
        self.source = src.kind
        self.df = src.df
        self.particle_df = src.particle_df
        self.image_names = np.asarray(src.image_names, dtype=str)
        self.image_anchor = src.image_anchor
        self.row_of_image = np.asarray(src.row_of_image, dtype=np.int64)
        v = src.values
        self.dfu, self.dfv, self.dfang = v["dfu"], v["dfv"], v["dfang"]
        self.voltage, self.cs, self.w, self.phase_shift = v["voltage"], v["cs"], v["w"], v["phase_shift"]
        self.euler, self.shifts_px = v["euler"], v["shifts_px"]
        self.dose, self.ctf_scalefactor = v["dose"], v["ctf_scalefactor"]
        pixel = v["pixel_size"]
        n = len(self.df)
        self.ctf_premultiplied = np.full(n, bool(ctf_premultiplied)) if ctf_premultiplied is not None else src.premultiplied
        self.dose_weighted = np.full(n, bool(dose_weighted)) if dose_weighted is not None else src.dose_weighted

        col = {"pixel_size": "pixel size", "voltage": "voltage", "w": "amplitude contrast",
               "ctf_scalefactor": "cos(stage tilt)", "dose": "dose", **src.columns}
        self._check_range(col["pixel_size"], pixel, 0.0, np.inf, open_lo=True)
        self._check_range(col["voltage"], self.voltage, 0.0, np.inf, open_lo=True)
        self._check_range(col["w"], self.w, 0.0, 1.0)
        self._check_range(col["ctf_scalefactor"], self.ctf_scalefactor, 0.0, 1.0, open_lo=True, what="cos(stage tilt)")
        self._check_range(col["dose"], self.dose, 0.0, np.inf, what="dose")
        self.stage_tilt_deg = np.degrees(np.arccos(np.clip(self.ctf_scalefactor, -1.0, 1.0)))

        codes, uniques = pd.factorize(pd.Series(np.asarray(src.particle_key, dtype=str)), sort=False)
        self.particle_ids: list[str] = [str(u) for u in uniques]
        self.particle_index = codes.astype(np.int64)
        order = np.argsort(self.particle_index, kind="stable")
        bounds = np.cumsum(np.bincount(self.particle_index, minlength=len(uniques)))[:-1]
        self.rows_of_particle = np.split(order, bounds)
        self._tomogram = np.asarray(src.tomogram, dtype=str)

        self._check_constant_per_particle(col["voltage"], self.voltage)
        self._check_constant_per_particle(col["pixel_size"], pixel)
        if not np.all(pixel == pixel[0]):
            row = int(np.flatnonzero(pixel != pixel[0])[0])
            raise InputError(f"{src.where(row)}: pixel size {pixel[row]:g} A, but {pixel[0]:g} A on the first image; "
                             f"all images must share one pixel size")
        self.pixel_size = float(pixel[0])
        for note in src.notes:
            log.warning("%s: %s", self.path, note)
        self._warn_suspicious()

    @property
    def n_images(self) -> int:
        """Number of tilt images."""
        return len(self.df)

    @property
    def n_particles(self) -> int:
        """Number of particles."""
        return len(self.particle_ids)

    def numeric(self, column: str) -> np.ndarray:
        """A column of :attr:`df` as float64, shape (N_images,); text, NaN or infinity give an :class:`InputError`."""
        from .formats.relion import numeric

        if column not in self.df:
            raise InputError(f"{self.path}: no column _{column}")
        return numeric(self.df, column, str(self.path))

    def _check_range(self, column: str, values: np.ndarray, lo: float, hi: float, open_lo: bool = False,
                     what: str | None = None) -> None:
        bad = ((values <= lo) if open_lo else (values < lo)) | (values > hi)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            bounds = f"{'(' if open_lo else '['}{lo:g}, {hi:g}]"
            raise InputError(f"{self._src.where(row)}: column _{column} gives {what or 'a value'} {values[row]:g}, outside {bounds}")

    def _check_constant_per_particle(self, column: str, values: np.ndarray) -> None:
        first = np.array([values[r[0]] for r in self.rows_of_particle])
        diff = values != first[self.particle_index]
        if diff.any():
            row = int(np.flatnonzero(diff)[0])
            pid = self.particle_ids[self.particle_index[row]]
            raise InputError(f"{self._src.where(row)}: particle {pid} has _{column} {values[row]:g} but "
                             f"{first[self.particle_index[row]]:g} on its first image; its tilt images must agree")

    def _warn_suspicious(self) -> None:
        """One log line per kind of odd but possible value, with its count."""
        neg = (self.dfu < 0) | (self.dfv < 0)
        if neg.any():
            log.warning("%s: %d tilt image(s) have a negative (over-focus) defocus, the first at %s", self.path,
                        int(neg.sum()), self._src.where(int(np.flatnonzero(neg)[0])).split(": ", 1)[-1])
        twice = pd.Series(self.image_names).duplicated(keep="first").to_numpy()
        if twice.any():
            log.warning("%s: %d tilt image(s) are listed more than once, the first %s", self.path, int(twice.sum()),
                        self.image_names[int(np.flatnonzero(twice)[0])])
        single = sum(1 for r in self.rows_of_particle if len(r) == 1)
        if single:
            log.warning("%s: %d of %d particle(s) have a single tilt image", self.path, single, self.n_particles)

    def tomogram_of_particle(self) -> list[str]:
        """Tomogram name of each particle: ``_rlnMicrographName`` (RELION 3), ``_rlnTomoName`` (particle
        series), else the part of ``_rlnGroupName`` before the last ``_``."""
        return [str(self._tomogram[r[0]]) for r in self.rows_of_particle]

    def write_subset(self, particles: np.ndarray, out: str | os.PathLike, edit: Editor | None = None) -> list[Path]:
        """Write some particles in the format they were read in, every block and column kept.

        Parameters
        ----------
        particles : numpy.ndarray of int
            Particle numbers (0-based, order of first appearance); written in file order.
        out : path-like
            The output star: an image-series star, or for particle series an optimisation set (its
            particles.star is written beside it, and the same tomograms.star is referenced).
        edit : callable, optional
            An :data:`.formats.series.Editor`: values of the particles' file to change first (``downsample``
            points the rows at new stacks), every other text kept.

        Returns
        -------
        list of Path
            The files written.
        """
        particles = np.sort(np.asarray(particles, dtype=np.int64))
        rows = np.sort(np.concatenate([self.rows_of_particle[p] for p in particles])) if len(particles) else np.zeros(0, np.int64)
        return self._src.writer(particles, rows, Path(out), edit)


class StarWriter:
    """Stream a RELION 3.0 particle table to disk chunk by chunk; renamed into place on close.

    Parameters
    ----------
    path : path-like
        Final star path.
    columns : sequence of str
        Column names without the leading underscore.
    block : str
        Name of the table's block (``data_<block>``).
    preamble : str
        Text written before it (other blocks, e.g. a RELION 3.1 optics table).
    """

    def __init__(self, path: str | os.PathLike, columns: list[str], block: str = "", preamble: str = ""):
        self.columns = list(columns)
        self.tmp, self.path = atomic_path(path)
        self.fh = open(self.tmp, "w")
        self.fh.write(f"{preamble}\ndata_{block}\n\nloop_\n")
        for i, c in enumerate(self.columns, 1):
            self.fh.write(f"_{c} #{i}\n")

    def append(self, df: pd.DataFrame) -> None:
        """Write rows; ``df`` must hold exactly the writer's columns."""
        df[self.columns].to_csv(self.fh, sep="\t", header=False, index=False, float_format=repr)

    def close(self) -> None:
        """Finish and rename into place."""
        self.fh.write("\n")
        self.fh.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        """Drop the partial file."""
        self.fh.close()
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)
