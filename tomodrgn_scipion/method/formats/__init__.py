"""Particle tilt-series formats, each read in one place into one :class:`.series.SeriesSource`.

=============  ====================================================================================
``relion3``    RELION 3.0 image-series star (Warp 1, M): one table, one row per tilt image
``relion31``   RELION 3.1+ image-series star with ``data_optics`` (M, RELION 3.1)
``relion5``    RELION 5 particle series: optimisation set -> particles.star (one row per particle,
               2D stacks) + tomograms.star (``_rlnTomoXTilt/YTilt/ZRot/X-YShiftAngst`` per tilt)
``warptools``  WarpTools particle series (``ts_export_particles --2d``): the same layout, with
               ``_rlnTomoProjX/Y/Z/W`` projection matrices per tilt and one stack per particle
=============  ====================================================================================

:func:`detect` tells them apart from the file's blocks and columns; ``--source-software`` forces one.
"""
from __future__ import annotations

import os

from ..errors import InputError
from .blocks import StarFile, read_blocks
from .series import ALIASES, DESCRIPTION, FORMATS, SeriesSource

__all__ = ["FORMATS", "ALIASES", "DESCRIPTION", "SeriesSource", "detect", "open_source", "source_software"]

#: Labels that only particle-series files (RELION 4/5, WarpTools) have.
PARTICLE_SERIES_LABELS = ("rlnTomoParticleName", "rlnTomoVisibleFrames", "rlnTomoSubTomosAre2DStacks",
                          "rlnTomoParticlesFile", "rlnTomoTomogramsFile")


def source_software(name: str) -> str:
    """The format a ``--source-software`` word names (``auto`` stays ``auto``)."""
    key = name.strip().lower().replace("-", "").replace("_", "").replace(".", "")
    if key not in ALIASES:
        raise InputError(f"--source-software {name}: unknown; use auto, {', '.join(FORMATS)}")
    return ALIASES[key]


def is_particle_series(star: StarFile) -> bool:
    """Whether the file is an optimisation set or a particle-series particles.star."""
    return any(star.has_label(c) for c in PARTICLE_SERIES_LABELS)


def detect(star: StarFile, tomograms: str | os.PathLike | None = None) -> str:
    """The format of a star file, from its blocks and columns.

    Parameters
    ----------
    star : StarFile
    tomograms : path-like, optional
        A tomograms.star given beside a particle-series particles.star.

    Returns
    -------
    str
        One of :data:`FORMATS`.
    """
    if is_particle_series(star) or tomograms is not None:
        from .tomo import detect_tomo

        return detect_tomo(star, tomograms)
    if star.get("optics") is not None:
        return "relion31"
    return "relion3"


def open_source(path: str | os.PathLike, source: str = "auto", tomograms: str | os.PathLike | None = None) -> SeriesSource:
    """Read particle tilt series in any format of :data:`FORMATS`.

    Parameters
    ----------
    path : path-like
        An image-series star, an optimisation set, or a particle-series particles.star.
    source : str
        ``auto`` or a name of :func:`source_software`.
    tomograms : path-like, optional
        tomograms.star for a particles.star that is not named by an optimisation set.

    Returns
    -------
    SeriesSource
    """
    star = read_blocks(path)
    kind = source_software(source)
    if kind == "auto":
        kind = detect(star, tomograms)
    if kind in ("relion3", "relion31"):
        if is_particle_series(star):
            raise InputError(f"{star.path}: a particle-series file (RELION 5 / WarpTools), not a {DESCRIPTION[kind]}; "
                             f"use --source-software auto")
        from .relion import read_relion3

        return read_relion3(star, kind)
    from .tomo import read_particle_series

    return read_particle_series(star, kind, tomograms)

