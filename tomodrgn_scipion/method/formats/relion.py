"""RELION 3.0 and 3.1 image-series star files: one row per tilt image, ``_rlnGroupName`` = particle.

* RELION 3.0 (Warp 1, M): one table with every column on the image rows.
* RELION 3.1+ (M, RELION 3.1): a ``data_optics`` table (pixel size ``_rlnImagePixelSize``, voltage, Cs,
  amplitude contrast, ``_rlnCtfDataAreCtfPremultiplied``...) joined to the image rows by
  ``_rlnOpticsGroup``; origins in A (``_rlnOriginXAngst/YAngst``). A column on the image rows wins over
  the optics table's column of the same name.

Dose is ``-_rlnCtfBfactor / 4`` (Warp's encoding of the cumulative exposure) and ``_rlnCtfScalefactor``
is ``cos(stage tilt)``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from .blocks import StarFile, write_blocks
from .series import Editor, SeriesSource

#: Columns the method needs (star names without the leading underscore).
REQUIRED_COLUMNS = (
    "rlnImageName", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnVoltage",
    "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi",
    "rlnCtfBfactor", "rlnCtfScalefactor", "rlnGroupName",
)
PIXEL_SIZE_COLUMNS = ("rlnDetectorPixelSize", "rlnImagePixelSize")
SHIFT_PX_COLUMNS = ("rlnOriginX", "rlnOriginY")
SHIFT_A_COLUMNS = ("rlnOriginXAngst", "rlnOriginYAngst")
PREMULTIPLIED_COLUMN = "rlnCtfDataAreCtfPremultiplied"


def numeric(df: pd.DataFrame, column: str, where: str) -> np.ndarray:
    """A text column as float64, shape (N,); text, NaN or infinity give an :class:`InputError`.

    Parameters
    ----------
    df : pandas.DataFrame
    column : str
        Column name without the underscore.
    where : str
        ``path`` or ``path: block data_X``, to start the error with.
    """
    col = df[column]
    values = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(f"{where}: row {row + 1}: column _{column} has {col.iloc[row]!r}, expected a finite number")
    return values


def flag(df: pd.DataFrame, column: str, where: str) -> np.ndarray:
    """A 0/1 column as bool, shape (N,); False where the column is absent."""
    if column not in df:
        return np.zeros(len(df), dtype=bool)
    v = numeric(df, column, where)
    bad = (v != 0) & (v != 1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(f"{where}: row {row + 1}: column _{column} is {v[row]:g}, expected 0 or 1")
    return v == 1


def image_table(star: StarFile) -> tuple[pd.DataFrame, str, bool]:
    """The image rows of a RELION 3.0/3.1 star, with the optics columns joined (3.1).

    Returns
    -------
    df : pandas.DataFrame
        Text columns, one row per tilt image.
    block : str
        Name of the image block.
    has_optics : bool
    """
    loops = star.loops()
    optics = star.get("optics")
    images = [b for b in loops if b.name != "optics"]
    if not images or all(len(b.rows) == 0 for b in images):
        raise InputError(f"{star.path}: star file has no particle rows")
    if len(images) > 1:
        raise InputError(f"{star.path}: expected one table of tilt images, found {len(images)} "
                         f"({', '.join('data_' + b.name for b in images)})")
    block = images[0]
    df = block.table(star.path)
    if optics is None or not optics.is_loop:
        return df, block.name, False
    where = f"{star.path}: block data_{block.name}"
    opt = optics.table(star.path)
    if "rlnOpticsGroup" not in opt:
        raise InputError(f"{star.path}: block data_optics: missing column _rlnOpticsGroup")
    if "rlnOpticsGroup" not in df:
        raise InputError(f"{where}: missing column _rlnOpticsGroup (the star has an optics table)")
    groups_opt = numeric(opt, "rlnOpticsGroup", f"{star.path}: block data_optics")
    groups = numeric(df, "rlnOpticsGroup", where)
    pos = {g: i for i, g in enumerate(groups_opt)}
    if len(pos) != len(groups_opt):
        raise InputError(f"{star.path}: block data_optics: optics group {groups_opt[0]:g} is listed twice")
    idx = np.array([pos.get(g, -1) for g in groups], dtype=np.int64)
    if (idx < 0).any():
        row = int(np.flatnonzero(idx < 0)[0])
        raise InputError(f"{where}: row {row + 1}: optics group {groups[row]:g} is not in data_optics")
    joined = df.copy()
    for c in opt.columns:
        if c not in joined.columns:
            joined[c] = opt[c].to_numpy()[idx]
    return joined, block.name, True


def read_relion3(star: StarFile, kind: str) -> SeriesSource:
    """A :class:`SeriesSource` from a RELION 3.0 (``relion3``) or 3.1 (``relion31``) image-series star."""
    df, block, has_optics = image_table(star)
    if kind == "relion31" and not has_optics:
        raise InputError(f"{star.path}: --source-software relion31 needs a data_optics table; this star has none")
    where = f"{star.path}: block data_{block}" if has_optics else str(star.path)
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if not any(c in df.columns for c in PIXEL_SIZE_COLUMNS):
        missing.append(PIXEL_SIZE_COLUMNS[0] + (" (or _rlnImagePixelSize in data_optics)" if has_optics else ""))
    if missing:
        raise InputError(f"{where}: missing required column(s): {', '.join('_' + c for c in missing)}")
    pix_col = next(c for c in reversed(PIXEL_SIZE_COLUMNS) if c in df.columns) if has_optics \
        else next(c for c in PIXEL_SIZE_COLUMNS if c in df.columns)
    pixel = numeric(df, pix_col, where)
    values = {
        "dfu": numeric(df, "rlnDefocusU", where), "dfv": numeric(df, "rlnDefocusV", where),
        "dfang": numeric(df, "rlnDefocusAngle", where), "voltage": numeric(df, "rlnVoltage", where),
        "cs": numeric(df, "rlnSphericalAberration", where), "w": numeric(df, "rlnAmplitudeContrast", where),
        "phase_shift": numeric(df, "rlnPhaseShift", where) if "rlnPhaseShift" in df else np.zeros(len(df)),
        "dose": -numeric(df, "rlnCtfBfactor", where) / 4.0,
        "ctf_scalefactor": numeric(df, "rlnCtfScalefactor", where),
        "pixel_size": pixel,
        "euler": np.stack([numeric(df, c, where) for c in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")], 1),
    }
    present = [c for c in SHIFT_PX_COLUMNS + SHIFT_A_COLUMNS if c in df.columns]
    if all(c in df for c in SHIFT_PX_COLUMNS):
        values["shifts_px"] = np.stack([numeric(df, c, where) for c in SHIFT_PX_COLUMNS], 1)
    elif all(c in df for c in SHIFT_A_COLUMNS):
        values["shifts_px"] = np.stack([numeric(df, c, where) for c in SHIFT_A_COLUMNS], 1) / np.where(pixel > 0, pixel, 1.0)[:, None]
    elif present:
        pair = SHIFT_PX_COLUMNS if present[0] in SHIFT_PX_COLUMNS else SHIFT_A_COLUMNS
        lacking = next(c for c in pair if c not in df.columns)
        raise InputError(f"{where}: column _{present[0]} is there but _{lacking} is missing; origins need both")
    else:
        values["shifts_px"] = np.zeros((len(df), 2))
    groups = df["rlnGroupName"].astype(str).to_numpy()
    if not star.ends_with_newline and (groups == groups[-1]).sum() == 1:
        # a file cut inside its last row makes a one-image particle of a cut name
        raise InputError(f"{where}: row {len(df)} (the last) has no line end and is the only image of particle "
                         f"{groups[-1]!r}: the file looks cut short; copy it again")
    if "rlnMicrographName" in df:
        tomos = df["rlnMicrographName"].astype(str).to_numpy()
    else:
        tomos = np.array([g.rsplit("_", 1)[0] if "_" in g else g for g in groups], dtype=object).astype(str)
    n = len(df)
    image_block = star.get(block)

    def writer(particles: np.ndarray, rows: np.ndarray, out: Path, edit: Editor | None = None) -> list[Path]:
        target = star if edit is None else edit(star, image_block.name)
        write_blocks(target, out, {image_block.name: np.sort(rows)})
        return [out]

    return SeriesSource(
        kind=kind, path=star.path, df=df, particle_key=groups, tomogram=tomos,
        image_names=df["rlnImageName"].to_numpy(dtype=str), image_anchor=star.path, values=values,
        premultiplied=flag(df, PREMULTIPLIED_COLUMN, where), dose_weighted=np.zeros(n, dtype=bool),
        row_of_image=np.arange(n), block=block if has_optics else "", writer=writer,
        columns={"pixel_size": pix_col, "voltage": "rlnVoltage", "w": "rlnAmplitudeContrast",
                 "ctf_scalefactor": "rlnCtfScalefactor", "dose": "rlnCtfBfactor"},
    )


#: RELION 3.0 image columns that RELION 3.1 keeps in the optics table.
OPTICS_FROM_IMAGES = ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast")


def relion31_tables(df: pd.DataFrame, premultiplied: bool = False, box: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A RELION 3.0 image table as RELION 3.1 writes it: (optics, images).

    Voltage, Cs, amplitude contrast and the pixel size move to ``data_optics`` (one group per distinct
    combination, ``_rlnImagePixelSize``), ``_rlnMagnification`` and ``_rlnDetectorPixelSize`` go,
    origins become ``_rlnOriginXAngst/YAngst`` (pixels x pixel size); every other column stays as it was.

    Parameters
    ----------
    df : pandas.DataFrame
        Text columns of a RELION 3.0 image-series star.
    premultiplied : bool
        Value of ``_rlnCtfDataAreCtfPremultiplied``.
    box : int, optional
        ``_rlnImageSize``, when known.
    """
    pix_col = next(c for c in PIXEL_SIZE_COLUMNS if c in df.columns)
    keys = [pix_col] + [c for c in OPTICS_FROM_IMAGES if c in df.columns]
    combo = df[keys].astype(str).agg("|".join, axis=1)
    codes, uniques = pd.factorize(combo, sort=False)
    first = [int(np.flatnonzero(codes == i)[0]) for i in range(len(uniques))]
    optics = pd.DataFrame({"rlnOpticsGroup": [str(i + 1) for i in range(len(uniques))],
                           "rlnOpticsGroupName": [f"opticsGroup{i + 1}" for i in range(len(uniques))]})
    for c in keys[1:]:
        optics[c] = df[c].to_numpy()[first]
    optics["rlnImagePixelSize"] = df[pix_col].to_numpy()[first]
    if box is not None:
        optics["rlnImageSize"] = str(box)
    optics["rlnImageDimensionality"] = "2"
    optics["rlnCtfDataAreCtfPremultiplied"] = "1" if premultiplied else "0"
    images = df.drop(columns=[c for c in keys + ["rlnMagnification", "rlnDetectorPixelSize", "rlnImagePixelSize"] if c in df.columns])
    pixel = pd.to_numeric(df[pix_col]).to_numpy()
    for a in "XY":
        if f"rlnOrigin{a}" in images:
            images[f"rlnOrigin{a}Angst"] = [repr(float(v)) for v in pd.to_numeric(images.pop(f"rlnOrigin{a}")).to_numpy() * pixel]
    images["rlnOpticsGroup"] = [str(c + 1) for c in codes]
    return optics, images
