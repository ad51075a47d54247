"""Command ``mapback``: ChimeraX scripts that place every particle, coloured by its label, in its tomogram.

Particle positions and orientations come from a Warp/RELION *volume-series* star (one row per particle:
``_rlnCoordinateX/Y/Z`` in tomogram pixels, ``_rlnMicrographName``, ``_rlnAngleRot/Tilt/Psi``). Particle
``i`` of that star is particle ``i`` of the image-series star (order of first appearance of
``_rlnGroupName``), as Warp writes both; ``--particles`` checks it.

Geometry (RELION conventions, see :mod:`.transforms`): with ``A = euler_to_matrix(rot, tilt, psi)`` an
image frequency ``k`` samples the reference's transform at ``A^T k``, so the particle in the tomogram is
the reference rotated by ``A``: a point ``p`` of the reference (relative to its centre) lies at
``A p`` from the particle centre, and the particle centre is ``coordinate - origin``. A volume placed
in ChimeraX therefore gets the model-to-scene matrix ``[A | centre - A c]``, ``c`` being the volume's
centre (voxel ``D // 2`` on every axis) in its own model coordinates, A.
"""
from __future__ import annotations

import argparse
import logging
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .errors import InputError
from .outputs import safe_name, write_text

if TYPE_CHECKING:
    from .star import TiltSeriesStar

log = logging.getLogger("tomodrgn_scipion")

COORD_COLUMNS = ("rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ")
ANGLE_COLUMNS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
ORIGIN_A_COLUMNS = ("rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst")
ORIGIN_PX_COLUMNS = ("rlnOriginX", "rlnOriginY", "rlnOriginZ")
PIXEL_COLUMNS = ("rlnPixelSize", "rlnDetectorPixelSize")
DEFAULT_MARKER_RADIUS = 50.0


@dataclass
class VolumeSeries:
    """Particle placements read from a volume-series star.

    Attributes
    ----------
    path : Path
        The star file.
    tomograms : list of str, length N
        ``_rlnMicrographName`` of each particle (row).
    centers_a : numpy.ndarray, float64, shape (N, 3)
        Particle centres ``(x, y, z)`` in the tomogram, A: coordinate x pixel size - origin shift.
    euler : numpy.ndarray, float64, shape (N, 3)
        rot, tilt, psi, degrees.
    """

    path: Path
    tomograms: list[str]
    centers_a: np.ndarray
    euler: np.ndarray

    @property
    def n_particles(self) -> int:
        """Number of particles (rows)."""
        return len(self.tomograms)


def _numeric(df: pd.DataFrame, column: str, path: Path) -> np.ndarray:
    """A star column as float64, shape (N,); text, NaN or infinity give a one-line :class:`InputError`."""
    from .formats.relion import numeric

    return numeric(df, column, str(path))


def _positive(values: np.ndarray, column: str, path: Path) -> np.ndarray:
    bad = values <= 0
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(f"{path}: row {row + 1}: column _{column} is {values[row]:g}, expected a pixel size > 0")
    return values


def read_volume_series(path: str | Path, coords_pixel_size: float | None = None) -> VolumeSeries:
    """Read particle centres, orientations and tomograms from a volume-series star.

    Parameters
    ----------
    path : path-like
        RELION 3.0 / Warp volume-series star, one row per particle.
    coords_pixel_size : float, optional
        A per pixel of ``_rlnCoordinateX/Y/Z``; overrides ``_rlnPixelSize`` / ``_rlnDetectorPixelSize``.

    Returns
    -------
    VolumeSeries

    Raises
    ------
    InputError
        Missing columns, non-numeric values, or no pixel size for the coordinates.

    Notes
    -----
    Origin shifts ``_rlnOriginX/Y/ZAngst`` are in A; ``_rlnOriginX/Y/Z`` are in pixels of the star's own
    pixel size column (the particle's pixels in RELION 3.0), else of ``coords_pixel_size``.
    """
    from .star import read_star

    path = Path(path)
    df = read_star(path)
    missing = [c for c in COORD_COLUMNS + ("rlnMicrographName",) + ANGLE_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"{path}: missing required column(s): {', '.join('_' + c for c in missing)} (a volume-series star is needed)")
    pix_col = next((c for c in PIXEL_COLUMNS if c in df.columns), None)
    star_pixel = _positive(_numeric(df, pix_col, path), pix_col, path) if pix_col else None
    if coords_pixel_size is not None:
        if not np.isfinite(coords_pixel_size) or coords_pixel_size <= 0:
            raise InputError(f"--coords-pixel-size {coords_pixel_size:g}: must be > 0")
        coord_pixel = np.full(len(df), float(coords_pixel_size))
    elif star_pixel is not None:
        coord_pixel = star_pixel
    else:
        raise InputError(f"{path}: no _rlnPixelSize or _rlnDetectorPixelSize column; give the pixel size of the coordinates with --coords-pixel-size")

    coords_px = np.stack([_numeric(df, c, path) for c in COORD_COLUMNS], 1)
    euler = np.stack([_numeric(df, c, path) for c in ANGLE_COLUMNS], 1)
    origin_a = np.zeros((len(df), 3))
    for cols, in_angstrom in ((ORIGIN_A_COLUMNS, True), (ORIGIN_PX_COLUMNS, False)):
        present = [c for c in cols if c in df.columns]
        if not present:
            continue
        if len(present) < 3:
            absent = [c for c in cols if c not in df.columns]
            raise InputError(f"{path}: has _{present[0]} but not {', '.join('_' + c for c in absent)}; origin shifts need all three axes")
        shifts = np.stack([_numeric(df, c, path) for c in cols], 1)
        origin_a = shifts if in_angstrom else shifts * (star_pixel if star_pixel is not None else coord_pixel)[:, None]
        break
    centers = coords_px * coord_pixel[:, None] - origin_a
    tomograms = [str(t) for t in df["rlnMicrographName"].astype(str)]
    return VolumeSeries(path, tomograms, centers, euler)


def check_particles(vs: VolumeSeries, particles: str | Path) -> TiltSeriesStar:
    """Check that the image-series star lists the same particles, grouped into tomograms the same way.

    Parameters
    ----------
    vs : VolumeSeries
    particles : path-like
        Image-series star (one row per tilt image).

    Returns
    -------
    TiltSeriesStar
        The image-series star, read.

    Raises
    ------
    InputError
        Different particle counts, or the first row of ``vs`` whose tomogram grouping differs.
    """
    from .star import TiltSeriesStar

    star = TiltSeriesStar(particles)
    if star.n_particles != vs.n_particles:
        raise InputError(f"{vs.path}: {vs.n_particles} particles (rows), but {star.path} has {star.n_particles} particles "
                         "(distinct _rlnGroupName); they must list the same particles in the same order")
    # Names may differ (".tomostar" vs ".mrc"); the partition into tomograms, in order, may not.
    img_codes, img_names = pd.factorize(pd.Series(star.tomogram_of_particle()), sort=False)
    vol_codes, vol_names = pd.factorize(pd.Series(vs.tomograms), sort=False)
    diff = img_codes != vol_codes
    if diff.any():
        i = int(np.flatnonzero(diff)[0])
        raise InputError(
            f"{vs.path}: row {i + 1}: particle {i} is in tomogram {vol_names[vol_codes[i]]}, but particle {i} of {star.path} "
            f"({star.particle_ids[i]}) is in {img_names[img_codes[i]]}, grouped differently; the stars do not list the same particles in the same order")
    return star


def read_labels(path: str | Path, n_particles: int) -> np.ndarray:
    """Read one integer label per particle (``-1``: not analysed).

    Parameters
    ----------
    path : path-like
        Text file, one integer per line (blank lines ignored), star order.
    n_particles : int
        Number of particles expected.

    Returns
    -------
    numpy.ndarray, int64, shape (n_particles,)
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: labels file not found")
    labels = []
    for line_no, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        s = line.strip()
        if not s:
            continue
        try:
            v = int(s)
        except ValueError:
            raise InputError(f"{path}: line {line_no}: {s!r} is not an integer label") from None
        if v < -1:
            raise InputError(f"{path}: line {line_no}: label {v} is below -1 (-1 means not analysed)")
        labels.append(v)
    if len(labels) != n_particles:
        raise InputError(f"{path}: {len(labels)} labels, but the volume-series star has {n_particles} particles; one label per particle is needed")
    return np.asarray(labels, dtype=np.int64)


def label_colors(labels: np.ndarray) -> dict[int, str]:
    """Hex colour of each label present: Okabe-Ito (cividis beyond 8 labels), grey for -1.

    Parameters
    ----------
    labels : numpy.ndarray, int, shape (N,)

    Returns
    -------
    dict
        ``label -> "#rrggbb"``, the same colours as the analysis figures.
    """
    from matplotlib.colors import to_hex

    from .plots import UNASSIGNED, category_colors

    present = sorted(int(v) for v in np.unique(labels))
    palette = category_colors(max(present, default=0) + 1)
    return {lab: (UNASSIGNED if lab < 0 else to_hex(palette[lab]).upper()) for lab in present}


def placement_matrices(euler: np.ndarray, centers_a: np.ndarray, volume_center_a: np.ndarray) -> np.ndarray:
    """ChimeraX model-to-scene matrices placing a reference volume at each particle.

    Parameters
    ----------
    euler : numpy.ndarray, shape (N, 3)
        rot, tilt, psi, degrees (RELION).
    centers_a : numpy.ndarray, shape (N, 3)
        Particle centres in the tomogram, A.
    volume_center_a : numpy.ndarray, shape (3,) or (N, 3)
        Centre of each volume in its own model coordinates, A.

    Returns
    -------
    numpy.ndarray, float64, shape (N, 3, 4)
        ``[A | centre - A c]``: rotation by RELION's ``A`` about the volume centre, which lands on the
        particle centre.
    """
    import torch

    from .transforms import euler_to_matrix

    e = torch.as_tensor(np.asarray(euler, dtype=np.float64))
    rot = euler_to_matrix(e[:, 0], e[:, 1], e[:, 2]).numpy()
    c = np.broadcast_to(np.asarray(volume_center_a, dtype=np.float64), centers_a.shape)
    t = centers_a - np.einsum("nij,nj->ni", rot, c)
    return np.concatenate([rot, t[:, :, None]], axis=2)


@dataclass
class VolumeFrame:
    """Where ChimeraX puts a map: voxel ``(i, j, k)`` of the x, y, z axes lies at ``origin + index * step``.

    Attributes
    ----------
    path : Path
    shape_xyz : tuple of int
        Voxels along x, y, z.
    step : numpy.ndarray, shape (3,)
        A per voxel along x, y, z.
    origin : numpy.ndarray, shape (3,)
        Model coordinates of voxel (0, 0, 0), A.
    """

    path: Path
    shape_xyz: tuple[int, int, int]
    step: np.ndarray
    origin: np.ndarray

    @property
    def center(self) -> np.ndarray:
        """Model coordinates (A) of voxel ``D // 2`` on every axis, the centre the method rotates about; shape (3,)."""
        return self.origin + np.array([d // 2 for d in self.shape_xyz]) * self.step

    @property
    def size_a(self) -> float:
        """Largest edge of the box, A."""
        return float(max(np.array(self.shape_xyz) * self.step))


def volume_frame(path: str | Path) -> VolumeFrame:
    """Read an MRC header as ChimeraX interprets it (header origin if non-zero, else start x step).

    Raises
    ------
    InputError
        Missing or unreadable file, or an axis order other than x, y, z.
    """
    import mrcfile

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: volume file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            with mrcfile.open(path, mode="r", permissive=True, header_only=True) as mrc:
                h = mrc.header
                shape = (int(h.nx), int(h.ny), int(h.nz))
                axes = (int(h.mapc), int(h.mapr), int(h.maps))
                vs = mrc.voxel_size
                step = np.array([float(vs.x), float(vs.y), float(vs.z)])
                origin = np.array([float(h.origin.x), float(h.origin.y), float(h.origin.z)])
                start = np.array([int(h.nxstart), int(h.nystart), int(h.nzstart)], dtype=np.float64)
    except Exception as exc:
        raise InputError(f"{path}: not a readable MRC file ({exc})") from None
    if axes != (1, 2, 3):
        raise InputError(f"{path}: axis order (mapc, mapr, maps) = {axes}; only 1, 2, 3 (x, y, z) is supported")
    step = np.where(step > 0, step, 1.0)
    if not np.any(origin):
        origin = start * step
    return VolumeFrame(path, shape, step, origin)


def _file_names(tomograms: list[str]) -> dict[str, str]:
    """Distinct safe file stems of the tomogram names (a numeric suffix resolves clashes)."""
    out: dict[str, str] = {}
    used: set[str] = set()
    for t in tomograms:
        s = base = safe_name(t)
        k = 2
        while s in used:
            s, k = f"{base}_{k}", k + 1
        used.add(s)
        out[t] = s
    return out


def _fmt(values: np.ndarray, digits: int) -> str:
    return ",".join(f"{v:.{digits}f}" for v in values)


def _header(tomogram: str, vs: VolumeSeries, labels_path: Path, members: np.ndarray, labels: np.ndarray,
            colors: dict[int, str]) -> list[str]:
    counts = Counter(int(v) for v in labels[members])
    lines = [
        f"# tomodrgn-scipion mapback: tomogram {tomogram}, {len(members)} particles",
        f"# positions and orientations: {vs.path}; labels: {labels_path}",
        "# run in a fresh ChimeraX session (open this file): models are numbered from #1",
        "# particle_N: particle N (0-based) of the star files, in order of first appearance",
    ]
    for lab in sorted(counts):
        what = "not analysed" if lab < 0 else f"label {lab}"
        lines.append(f"# {what}: {colors[lab]} ({counts[lab]} particles)")
    return lines


def markers_script(tomogram: str, vs: VolumeSeries, labels_path: Path, members: np.ndarray, labels: np.ndarray,
                   colors: dict[int, str], radius: float) -> str:
    """ChimeraX commands placing one marker (marker set #1) at each particle of ``members``.

    Parameters
    ----------
    tomogram : str
    vs : VolumeSeries
    labels_path : Path
        Named in the header comment.
    members : numpy.ndarray, int, shape (M,)
        Particle numbers (rows of ``vs``) of this tomogram.
    labels : numpy.ndarray, int, shape (N,)
    colors : dict
        ``label -> "#rrggbb"``.
    radius : float
        Marker radius, A.

    Returns
    -------
    str
    """
    lines = _header(tomogram, vs, labels_path, members, labels, colors)
    for i in members:
        lines.append(f"marker #1 position {_fmt(vs.centers_a[i], 3)} color {colors[int(labels[i])]} radius {radius:g}")
    lines.append("view")
    return "\n".join(lines) + "\n"


def volumes_script(tomogram: str, vs: VolumeSeries, labels_path: Path, members: np.ndarray, labels: np.ndarray,
                   colors: dict[int, str], frames: dict[int, VolumeFrame], level: float, radius: float) -> str:
    """ChimeraX commands opening the volume of each particle's label and placing it.

    The k-th particle of ``members`` with a label >= 0 becomes model #k; particles labelled -1 (no
    volume) become grey markers of one marker set numbered after the volumes.

    Parameters
    ----------
    tomogram, vs, labels_path, members, labels, colors
        As for :func:`markers_script`.
    frames : dict
        ``label -> VolumeFrame`` of the volume drawn for that label.
    level : float
        Isosurface level (map units).
    radius : float
        Radius of the markers of unlabelled particles, A.

    Returns
    -------
    str
    """
    lines = _header(tomogram, vs, labels_path, members, labels, colors)
    drawn = members[labels[members] >= 0]
    centers = np.stack([frames[int(labels[i])].center for i in drawn]) if len(drawn) else np.zeros((0, 3))
    mats = placement_matrices(vs.euler[drawn], vs.centers_a[drawn], centers)
    for k, (i, m) in enumerate(zip(drawn, mats), 1):
        frame = frames[int(labels[i])]
        lines.append(f'open "{frame.path.resolve()}" name particle_{i}')
        lines.append(f"view matrix models #{k},{_fmt(m.reshape(-1), 6)}")
        lines.append(f"volume #{k} style surface step 1 level {level:g} color {colors[int(labels[i])]}")
    for i in members[labels[members] < 0]:
        lines.append(f"marker #{len(drawn) + 1} position {_fmt(vs.centers_a[i], 3)} color {colors[-1]} radius {radius:g}")
    lines.append("view")
    return "\n".join(lines) + "\n"


def _default_level(frames: dict[int, VolumeFrame]) -> float:
    """The level enclosing the densest 1 % of voxels over the volumes used (ChimeraX's initial rule,
    shared so that the states are drawn alike)."""
    from .stacks import read_volume

    values = np.concatenate([read_volume(f.path)[0].ravel() for f in frames.values()])
    return float(np.quantile(values, 0.99))


def _particle_box_a(a: argparse.Namespace, star: TiltSeriesStar | None) -> float | None:
    """Edge of the particle box in A, from a volume of --vols-dir or the image stacks of --particles."""
    if a.vols_dir is not None:
        vols = sorted(Path(a.vols_dir).glob("vol_*.mrc"))
        if vols:
            return volume_frame(vols[0]).size_a
    if star is not None:
        from .stacks import ImageSource

        try:
            # one stack's header is enough: all stacks share the box
            return ImageSource(star.image_names[:1], star.image_anchor, lazy=True, named_in=star.path).box * star.pixel_size
        except InputError as exc:
            log.info("particle box unknown (%s)", exc)
    return None


def summary_text(vs: VolumeSeries, labels: np.ndarray, colors: dict[int, str], tomos: list[str],
                 labels_path: Path) -> str:
    """Tab-separated counts of particles per label (rows) and tomogram (columns), with each label's colour."""
    tomo_arr = np.asarray(vs.tomograms, dtype=object)
    lines = [f"# mapback of {vs.path} with labels {labels_path}; label -1 = not analysed",
             "\t".join(["label", "color"] + tomos + ["total"])]
    for lab, col in colors.items():
        counts = [int(((labels == lab) & (tomo_arr == t)).sum()) for t in tomos]
        lines.append("\t".join([str(lab), col] + [str(c) for c in counts] + [str(sum(counts))]))
    totals = [int((tomo_arr == t).sum()) for t in tomos]
    lines.append("\t".join(["all", "-"] + [str(c) for c in totals] + [str(sum(totals))]))
    return "\n".join(lines) + "\n"


def add_mapback(p: argparse.ArgumentParser) -> None:
    """Arguments of ``mapback``."""
    p.add_argument("volstar", type=Path,
                   help="Warp/RELION volume-series star: one row per particle with _rlnCoordinateX/Y/Z (tomogram pixels), "
                        "_rlnMicrographName and _rlnAngleRot/Tilt/Psi, in the particle order of the image-series star")
    p.add_argument("--labels", type=Path, required=True,
                   help="one integer label per particle, star order (e.g. ANADIR/kmeansK/labels.txt); -1 is drawn grey")
    p.add_argument("-o", "--outdir", type=Path, required=True,
                   help="output folder: <tomogram>.cxc per tomogram and mapback_summary.txt")
    p.add_argument("--particles", type=Path,
                   help="image-series star used for training: checks that both stars list the same particles, per tomogram, in order")
    p.add_argument("--coords-pixel-size", type=float,
                   help="A per pixel of the coordinates (default: the star's _rlnPixelSize or _rlnDetectorPixelSize)")
    p.add_argument("--tomogram", help="write the script of this tomogram only (_rlnMicrographName, or its file name without extension)")
    p.add_argument("--mode", choices=("markers", "volumes"), default="markers",
                   help="a marker per particle, or the volume of its label placed and oriented (default: markers)")
    p.add_argument("--vols-dir", type=Path,
                   help="folder with vol_LLL.mrc for every label LLL drawn (e.g. ANADIR/kmeansK); needed by --mode volumes")
    p.add_argument("--marker-radius", type=float,
                   help=f"marker radius, A; in volumes mode, of the grey markers of particles labelled -1 (default: a quarter "
                        f"of the particle box when known, else {DEFAULT_MARKER_RADIUS:g})")
    p.add_argument("--vol-level", type=float,
                   help="isosurface level of the volumes (default: the level enclosing the densest 1%% of their voxels)")


def run_mapback(a: argparse.Namespace) -> None:
    """Run ``mapback``."""
    vs = read_volume_series(a.volstar, a.coords_pixel_size)
    star = check_particles(vs, a.particles) if a.particles is not None else None
    labels = read_labels(a.labels, vs.n_particles)
    colors = label_colors(labels)

    tomos = list(dict.fromkeys(vs.tomograms))
    names = _file_names(tomos)
    if a.tomogram is not None:
        chosen = [t for t in tomos if a.tomogram in (t, names[t], safe_name(t))]
        if not chosen:
            raise InputError(f"{vs.path}: --tomogram {a.tomogram}: no such _rlnMicrographName (the star has {', '.join(tomos[:5])}"
                             f"{', ...' if len(tomos) > 5 else ''})")
        tomos = chosen[:1]
    tomo_arr = np.asarray(vs.tomograms, dtype=object)
    members = {t: np.flatnonzero(tomo_arr == t) for t in tomos}

    if a.mode == "volumes":
        if a.vols_dir is None:
            raise InputError("--mode volumes needs --vols-dir (the folder holding vol_LLL.mrc per label)")
        used = sorted({int(v) for t in tomos for v in labels[members[t]] if v >= 0})
        frames = {v: volume_frame(Path(a.vols_dir) / f"vol_{v:03d}.mrc") for v in used}
        if a.vol_level is not None and not np.isfinite(a.vol_level):
            raise InputError(f"--vol-level {a.vol_level}: must be a finite number")
        level = a.vol_level if a.vol_level is not None or not frames else _default_level(frames)
    radius = a.marker_radius
    if radius is None:
        box = _particle_box_a(a, star)
        radius = box / 4.0 if box else DEFAULT_MARKER_RADIUS
    if not np.isfinite(radius) or radius <= 0:
        raise InputError(f"--marker-radius {radius:g}: must be > 0")

    out = Path(a.outdir)
    for t in tomos:
        if a.mode == "volumes":
            text = volumes_script(t, vs, a.labels, members[t], labels, colors, frames, level, radius)
        else:
            text = markers_script(t, vs, a.labels, members[t], labels, colors, radius)
        path = out / f"{names[t]}.cxc"
        write_text(path, text)
        print(f"{t}: {len(members[t])} particles ({a.mode}): {path}")
    path = out / "mapback_summary.txt"
    write_text(path, summary_text(vs, labels, colors, tomos, a.labels))
    print(f"particles per label and tomogram, label colours: {path}")
