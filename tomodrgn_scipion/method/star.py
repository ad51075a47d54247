"""RELION 3.0 image-series star files, as Warp/M export them: one row per tilt image.

Every column is read as the exact text of the file, so that rows written back keep every value,
column and row order untouched (``000_000001`` stays a string, ``1.10`` stays ``1.10``). Numeric views
of the columns that the method needs are taken by :class:`TiltSeriesStar`, with one-line errors that
name the file, row and column at fault.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from .errors import InputError
from .outputs import atomic_path, atomic_write

#: Columns the method needs (star names without the leading underscore).
REQUIRED_COLUMNS = (
    "rlnImageName", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnVoltage",
    "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi",
    "rlnCtfBfactor", "rlnCtfScalefactor", "rlnGroupName",
)
PIXEL_SIZE_COLUMNS = ("rlnDetectorPixelSize", "rlnImagePixelSize")
#: Optional columns and the value used when they are absent.
OPTIONAL_DEFAULTS = {"rlnPhaseShift": 0.0}
SHIFT_PX_COLUMNS = ("rlnOriginX", "rlnOriginY")
SHIFT_A_COLUMNS = ("rlnOriginXAngst", "rlnOriginYAngst")


def _column_names(path: Path) -> list[str]:
    """Names of the loop columns of the first data block that has a loop."""
    names: list[str] = []
    in_loop = False
    with open(path, "r", errors="replace") as fh:
        for line in fh:
            s = line.strip()
            if s.startswith("loop_"):
                in_loop = True
                continue
            if in_loop and s.startswith("_"):
                names.append(s.split()[0][1:])
            elif in_loop and names and s and not s.startswith("#"):
                break
    return names


def read_star(path: str | os.PathLike) -> pd.DataFrame:
    """Read the particle table of a RELION 3.0 star file, every value as its original text.

    Parameters
    ----------
    path : path-like

    Returns
    -------
    pandas.DataFrame
        One row per tilt image in file order; columns named without the leading underscore.

    Raises
    ------
    InputError
        If the file is missing, unreadable, has several tables (RELION 3.1 optics) or no rows.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: star file not found")
    from .starsyntax import check_star_syntax; check_star_syntax(path)  # noqa: E702 (one line: star.py is being restructured)
    names = _column_names(path)
    try:
        data = starfile.read(path, parse_as_string=names, always_dict=True)
    except Exception as exc:  # starfile raises many kinds of parsing errors
        raise InputError(f"{path}: not a readable star file ({type(exc).__name__}: {exc})") from None
    tables = {k: v for k, v in data.items() if isinstance(v, pd.DataFrame)}
    if "optics" in tables:
        raise InputError(f"{path}: RELION 3.1+ star with an optics table; export a RELION 3.0 image-series star (Warp/M)")
    if not tables or all(len(t) == 0 for t in tables.values()):
        raise InputError(f"{path}: star file has no particle rows")
    if len(tables) > 1:
        raise InputError(f"{path}: expected one table of tilt images, found {len(tables)} ({', '.join(tables)})")
    df = next(iter(tables.values()))
    df = df.astype(str) if len(df.columns) else df
    df.attrs["block_name"] = next(iter(tables))
    return df.reset_index(drop=True)


def write_star(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write a particle table as a RELION 3.0 star file, atomically (temporary name, then rename).

    Text values are written as they are, so a table from :func:`read_star` comes back unchanged;
    floats added by the method are written with the shortest exact representation.
    """
    with atomic_write(path) as tmp:
        starfile.write({df.attrs.get("block_name", ""): df}, tmp, float_format=repr, sep="\t")


class TiltSeriesStar:
    """A validated image-series star: the table plus numeric views of what the method needs.

    Parameters
    ----------
    path : path-like
        The star file.
    df : pandas.DataFrame, optional
        The table, if already read (all columns as text, as :func:`read_star` gives).

    Attributes
    ----------
    df : pandas.DataFrame
        Every column as read, in file order.
    particle_ids : list of str
        ``_rlnGroupName`` values in order of first appearance.
    particle_index : numpy.ndarray, int64, shape (N_images,)
        Particle number of each row.
    rows_of_particle : list of numpy.ndarray
        Row numbers of each particle's tilt images, in file order.
    pixel_size : float
        A per pixel.
    image_names : numpy.ndarray of str, shape (N_images,)
    dfu, dfv, dfang, voltage, cs, w, phase_shift : numpy.ndarray, float64, shape (N_images,)
        CTF parameters: A, A, degrees, kV, mm, fraction, degrees.
    euler : numpy.ndarray, float64, shape (N_images, 3)
        rot, tilt, psi in degrees.
    shifts_px : numpy.ndarray, float64, shape (N_images, 2)
        ``_rlnOriginX/Y`` in pixels (from ``..Angst`` / pixel size when given in A; 0 when absent).
    dose : numpy.ndarray, float64, shape (N_images,)
        Cumulative dose ``-_rlnCtfBfactor / 4``, e/A^2.
    ctf_scalefactor : numpy.ndarray, float64, shape (N_images,)
        ``cos(stage tilt)``.
    stage_tilt_deg : numpy.ndarray, float64, shape (N_images,)
        ``arccos(_rlnCtfScalefactor)`` in degrees (unsigned).
    """

    def __init__(self, path: str | os.PathLike, df: pd.DataFrame | None = None):
        self.path = Path(path)
        self.df = read_star(self.path) if df is None else df
        if len(self.df) == 0:
            raise InputError(f"{self.path}: star file has no particle rows")
        missing = [c for c in REQUIRED_COLUMNS if c not in self.df.columns]
        if not any(c in self.df.columns for c in PIXEL_SIZE_COLUMNS):
            missing.append(PIXEL_SIZE_COLUMNS[0])
        if missing:
            raise InputError(f"{self.path}: missing required column(s): {', '.join('_' + c for c in missing)}")

        pix_col = next(c for c in PIXEL_SIZE_COLUMNS if c in self.df.columns)
        pixel = self.numeric(pix_col)
        self.image_names = self.df["rlnImageName"].to_numpy(dtype=str)
        self.dfu = self.numeric("rlnDefocusU")
        self.dfv = self.numeric("rlnDefocusV")
        self.dfang = self.numeric("rlnDefocusAngle")
        self.voltage = self.numeric("rlnVoltage")
        self.cs = self.numeric("rlnSphericalAberration")
        self.w = self.numeric("rlnAmplitudeContrast")
        self.phase_shift = self.numeric("rlnPhaseShift") if "rlnPhaseShift" in self.df else np.full(len(self.df), OPTIONAL_DEFAULTS["rlnPhaseShift"])
        self.euler = np.stack([self.numeric(c) for c in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")], 1)
        self.dose = -self.numeric("rlnCtfBfactor") / 4.0
        self.ctf_scalefactor = self.numeric("rlnCtfScalefactor")
        self._check_range("rlnCtfScalefactor", self.ctf_scalefactor, -1.0, 1.0)
        self._check_range(pix_col, pixel, 1e-6, np.inf)
        self._check_range("rlnVoltage", self.voltage, 1e-6, np.inf)
        self._check_range("rlnAmplitudeContrast", self.w, 0.0, 1.0)
        self.stage_tilt_deg = np.degrees(np.arccos(np.clip(self.ctf_scalefactor, -1.0, 1.0)))
        if all(c in self.df for c in SHIFT_PX_COLUMNS):
            self.shifts_px = np.stack([self.numeric(c) for c in SHIFT_PX_COLUMNS], 1)
        elif all(c in self.df for c in SHIFT_A_COLUMNS):
            self.shifts_px = np.stack([self.numeric(c) for c in SHIFT_A_COLUMNS], 1) / pixel[:, None]
        else:
            self.shifts_px = np.zeros((len(self.df), 2))

        groups = self.df["rlnGroupName"].astype(str).to_numpy()
        codes, uniques = pd.factorize(groups, sort=False)
        self.particle_ids: list[str] = [str(u) for u in uniques]
        self.particle_index = codes.astype(np.int64)
        order = np.argsort(self.particle_index, kind="stable")
        bounds = np.cumsum(np.bincount(self.particle_index, minlength=len(uniques)))[:-1]
        self.rows_of_particle = np.split(order, bounds)

        self._check_constant_per_particle(pix_col, pixel)
        self._check_constant_per_particle("rlnVoltage", self.voltage)
        if not np.all(pixel == pixel[0]):
            row = int(np.flatnonzero(pixel != pixel[0])[0])
            raise InputError(f"{self.path}: row {row + 1}: column _{pix_col} is {pixel[row]:g}, but row 1 has {pixel[0]:g}; all images must share one pixel size")
        self.pixel_size = float(pixel[0])

    @property
    def n_images(self) -> int:
        """Number of tilt images (rows)."""
        return len(self.df)

    @property
    def n_particles(self) -> int:
        """Number of particles (distinct ``_rlnGroupName``)."""
        return len(self.particle_ids)

    def numeric(self, column: str) -> np.ndarray:
        """A column as float64, shape (N_images,); text, NaN or infinity give an :class:`InputError`."""
        col = self.df[column]
        values = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise InputError(f"{self.path}: row {row + 1}: column _{column} has {col.iloc[row]!r}, expected a finite number")
        return values

    def _check_range(self, column: str, values: np.ndarray, lo: float, hi: float) -> None:
        bad = (values < lo) | (values > hi)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise InputError(f"{self.path}: row {row + 1}: column _{column} is {values[row]:g}, outside [{lo:g}, {hi:g}]")

    def _check_constant_per_particle(self, column: str, values: np.ndarray) -> None:
        first = np.array([values[r[0]] for r in self.rows_of_particle])
        diff = values != first[self.particle_index]
        if diff.any():
            row = int(np.flatnonzero(diff)[0])
            pid = self.particle_ids[self.particle_index[row]]
            first_row = int(self.rows_of_particle[self.particle_index[row]][0])
            raise InputError(
                f"{self.path}: row {row + 1}: particle {pid} has _{column} {values[row]:g} but {first[self.particle_index[row]]:g} at row {first_row + 1}; its tilt images must agree"
            )

    def tomogram_of_particle(self) -> list[str]:
        """Tomogram name of each particle: ``_rlnMicrographName`` when present, else the part of
        ``_rlnGroupName`` before the last ``_``."""
        if "rlnMicrographName" in self.df:
            names = self.df["rlnMicrographName"].astype(str).to_numpy()
            return [str(names[r[0]]) for r in self.rows_of_particle]
        return [pid.rsplit("_", 1)[0] if "_" in pid else pid for pid in self.particle_ids]


class StarWriter:
    """Stream a RELION 3.0 particle table to disk chunk by chunk; renamed into place on close.

    Parameters
    ----------
    path : path-like
        Final star path.
    columns : sequence of str
        Column names without the leading underscore.
    """

    def __init__(self, path: str | os.PathLike, columns: list[str]):
        self.columns = list(columns)
        self.tmp, self.path = atomic_path(path)
        self.fh = open(self.tmp, "w")
        self.fh.write("\ndata_\n\nloop_\n")
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
