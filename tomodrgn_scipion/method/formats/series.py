"""What every format reader gives: one row per tilt image, with the numbers the method needs.

A reader turns its files into a :class:`SeriesSource`; :class:`..star.TiltSeriesStar` validates it and
groups the images by particle, so nothing downstream knows which format the data came from. The
source also knows how to write a subset of its particles back in its own format.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from .blocks import StarFile

#: Names of the formats (``--source-software``), and the words that name the same one.
FORMATS = ("relion3", "relion31", "relion5", "warptools")
ALIASES = {"auto": "auto", "relion3": "relion3", "warp": "relion3", "relion31": "relion31", "m": "relion31",
           "relion5": "relion5", "relion": "relion5", "warptools": "warptools", "warp2": "warptools"}
DESCRIPTION = {
    "relion3": "RELION 3.0 image series (Warp 1 / M)",
    "relion31": "RELION 3.1 image series with an optics table (M, RELION 3.1)",
    "relion5": "RELION 5 particle series (2D stacks, optimisation set)",
    "warptools": "WarpTools particle series (ts_export_particles --2d)",
}

#: ``edit(star, block)``: the star file that lists the particles (the image-series star, or the particle
#: series' particles.star), with some values changed; ``block`` names its table of images or particles, whose
#: row ``row_of_image[i]`` holds image ``i``. Rows and blocks must stay as they are (see
#: :func:`.blocks.with_values`).
Editor = Callable[[StarFile, str], StarFile]

#: Per-image fields every source provides, float64 arrays of shape (N_images,) unless noted.
FIELDS = ("dfu", "dfv", "dfang", "voltage", "cs", "w", "phase_shift", "dose", "ctf_scalefactor", "pixel_size")


@dataclass
class SeriesSource:
    """Tilt images of particles as a format reader found them.

    Attributes
    ----------
    kind : str
        One of :data:`FORMATS`.
    path : Path
        The file the user named (named in errors).
    df : pandas.DataFrame
        One row per tilt image: the columns the user had (as text) that describe the image, and for
        particle series the per-tilt columns of its tilt series.
    particle_key : numpy.ndarray of str, shape (N_images,)
        The particle each image belongs to (``_rlnGroupName`` or ``_rlnTomoParticleName``).
    tomogram : numpy.ndarray of str, shape (N_images,)
        The tomogram (tilt series) of each image.
    image_names : numpy.ndarray of str, shape (N_images,)
        ``N@stack`` (1-based) of each image.
    image_anchor : Path
        Relative stack paths are looked for beside this file and in the folders above it.
    values : dict of str to numpy.ndarray
        :data:`FIELDS`, plus ``euler`` (N_images, 3) in degrees and ``shifts_px`` (N_images, 2).
    premultiplied : numpy.ndarray of bool, shape (N_images,)
        Images already multiplied by their CTF (``_rlnCtfDataAreCtfPremultiplied``).
    dose_weighted : numpy.ndarray of bool, shape (N_images,)
        Images already weighted by their exposure (the exporter's dose filter).
    row_of_image : numpy.ndarray of int, shape (N_images,)
        Row (0-based) of the table the user's file lists the image's particle in, for errors.
    block : str
        Name of that table, for errors.
    columns : dict of str to str
        The star column each of :data:`FIELDS` came from (without underscore), for errors.
    particle_df : pandas.DataFrame or None
        For particle series: one row per particle (in order of first appearance), its columns as text.
    notes : list of str
        What the reader left out or assumed, logged once as warnings.
    writer : callable
        ``writer(particles, rows, out, edit=None)`` writes the particles at positions ``particles`` (numpy
        int array; their image rows ``rows``) to ``out`` in the source's format and returns the paths
        written. ``edit`` (an :data:`Editor`) changes values of the file that lists the particles first.
    """

    kind: str
    path: Path
    df: pd.DataFrame
    particle_key: np.ndarray
    tomogram: np.ndarray
    image_names: np.ndarray
    image_anchor: Path
    values: dict[str, np.ndarray]
    premultiplied: np.ndarray
    dose_weighted: np.ndarray
    row_of_image: np.ndarray
    block: str
    writer: Callable[..., list[Path]]
    columns: dict[str, str] = field(default_factory=dict)
    particle_df: pd.DataFrame | None = None
    notes: list[str] = field(default_factory=list)

    def where(self, image: int) -> str:
        """``path: block data_X, row R`` of an image's row, for errors."""
        block = f"block data_{self.block}, " if self.block else ""
        return f"{self.path}: {block}row {int(self.row_of_image[image]) + 1}"
