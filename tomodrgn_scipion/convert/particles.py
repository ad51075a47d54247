"""Particle tilt-series files (every format of :mod:`..method.formats`) <-> Scipion sets.

* :func:`particles_from_star` / :func:`star_from_particles`: star <-> :class:`TomoDrgnParticles`, one
  item per particle. The star file (or optimisation set) stays with the set, and exports restrict it to
  the particles of the set in the same format, so the round trip is exact (same rows, blocks, columns
  and text).
* :func:`particles_with_z`: attach latent vectors, matched by particle id (never by position).
* :func:`tilt_images_from_particles` / :func:`star_from_tilt_images`: our set <-> a pwem
  ``SetOfParticles`` with one item per tilt image (CTF, acquisition, and the pose as a Scipion
  ``Transform`` in the convention Scipion's RELION plugin uses for projection alignment), and back:
  poses, shifts and defoci changed by another program are written into the rows, everything else is
  kept as it was.
"""
from __future__ import annotations

import os
from typing import Iterable

import numpy as np
from pwem.convert.transformations import euler_from_matrix, euler_matrix
from pwem.objects import CTFModel, Particle, SetOfParticles, Transform
from pyworkflow.object import Float, Integer, String

from ..method.errors import InputError
from ..method.stacks import ImageSource
from ..method.star import TiltSeriesStar, write_star
from ..objects import TomoDrgnParticle, TomoDrgnParticles

# Extra attributes of each tilt image: RELION's plugin writes ``_rln*`` attributes back as columns.
GROUP_ATTR, BFACTOR_ATTR, SCALE_ATTR, ROW_ATTR = "_rlnGroupName", "_rlnCtfBfactor", "_rlnCtfScalefactor", "_tdRow"


def dose_per_tilt(star: TiltSeriesStar) -> float:
    """Median over particles of the smallest step between sorted cumulative doses, e/A^2."""
    steps = []
    for rows in star.rows_of_particle:
        d = np.diff(np.sort(star.dose[rows]))
        d = d[d > 1e-6]
        if len(d):
            steps.append(d.min())
    return float(np.median(steps)) if steps else float(star.dose.max())


def particles_from_star(star_path: str | os.PathLike, out: TomoDrgnParticles, datadir: str | os.PathLike | None = None,
                        protein_dark: bool = False, source_software: str = "auto") -> TiltSeriesStar:
    """Fill ``out`` with one item per particle of a star file (validated, stacks checked).

    Parameters
    ----------
    star_path : path-like
        The star file the set keeps (copy it next to the set's database first).
    out : TomoDrgnParticles
        An empty set.
    datadir : path-like, optional
        Second folder for the image stacks.
    protein_dark : bool
        Images are protein-dark (train with ``--uninvert-data``).
    source_software : str
        ``auto`` or a format of :mod:`..method.formats`.

    Returns
    -------
    TiltSeriesStar
    """
    star = TiltSeriesStar(star_path, source_software=source_software)
    ImageSource(star.image_names, star.image_anchor, datadir=datadir, lazy=True, named_in=star.path).close()  # every stack, header-checked
    out.setSamplingRate(star.pixel_size)
    out.setStar(str(star_path))
    out.setDataDir(str(datadir) if datadir else None)
    out.setProteinDark(protein_dark)
    acq = out.getAcquisition()
    acq.setVoltage(float(star.voltage[0]))
    acq.setSphericalAberration(float(star.cs[0]))
    acq.setAmplitudeContrast(float(star.w[0]))
    acq.setDosePerFrame(dose_per_tilt(star))
    acq.setAccumDose(float(star.dose.max()))
    acq.setAngleMax(float(star.stage_tilt_deg.max()))
    acq.setAngleMin(-float(star.stage_tilt_deg.max()))
    tomos = star.tomogram_of_particle()
    for i, pid in enumerate(star.particle_ids):
        p = TomoDrgnParticle()
        p.setObjId(i + 1)
        p.setSamplingRate(star.pixel_size)
        p.setParticleId(pid)
        p.setTomoId(tomos[i])
        p.setRows(star.rows_of_particle[i])
        out.append(p)
    return star


def _particle_rows(particles: TomoDrgnParticles, star: TiltSeriesStar) -> np.ndarray:
    """Image rows of every particle of the set, in file order, after checking their particle names."""
    groups = np.asarray(star.particle_ids, dtype=object)[star.particle_index].astype(str)
    rows = []
    for p in particles.iterItems(orderBy="id"):
        r = np.asarray(p.getRows(), dtype=np.int64)
        if len(r) == 0 or r.max() >= len(groups) or np.any(groups[r] != p.getParticleId()):
            raise InputError(f"{particles.getStar()}: rows of particle {p.getParticleId()} do not match the star file kept with the set")
        rows.append(r)
    if not rows:
        raise InputError("the particle set is empty")
    return np.sort(np.concatenate(rows))


def is_particle_series(path: str | os.PathLike) -> bool:
    """Whether a star file is a RELION 5 / WarpTools optimisation set or particles.star."""
    from ..method.formats import is_particle_series as _is
    from ..method.formats.blocks import read_blocks

    return _is(read_blocks(path))


def particle_star_name(particles: TomoDrgnParticles, stem: str) -> str:
    """File name for an export of the set: ``<stem>.star`` for image series, ``<stem>_optimisation_set.star``
    for particle series (its ``<stem>_particles.star`` is written beside it)."""
    return f"{stem}_optimisation_set.star" if is_particle_series(particles.getStar()) else f"{stem}.star"


def star_from_particles(particles: TomoDrgnParticles, out_star: str | os.PathLike) -> int:
    """Write the set's star file restricted to its particles, in its own format (every block, column and
    text as they were).

    Returns
    -------
    int
        Number of tilt images of the particles written.
    """
    star = TiltSeriesStar(particles.getStar())
    pos = {pid: i for i, pid in enumerate(star.particle_ids)}
    sel = []
    for p in particles.iterItems(orderBy="id"):
        if p.getParticleId() not in pos:
            raise InputError(f"{particles.getStar()}: particle {p.getParticleId()} of the set is not in the star file kept with it")
        sel.append(pos[p.getParticleId()])
    if not sel:
        raise InputError("the particle set is empty")
    star.write_subset(np.asarray(sel), out_star)
    return int(sum(len(star.rows_of_particle[i]) for i in sel))


def particles_with_z(particles: TomoDrgnParticles, out: TomoDrgnParticles, z: np.ndarray, ids: Iterable[str]) -> int:
    """Copy the items that have a latent vector, setting it from ``z`` by particle id.

    Parameters
    ----------
    particles : TomoDrgnParticles
    out : TomoDrgnParticles
        An empty set.
    z : numpy.ndarray, shape (P, zdim)
    ids : iterable of str, length P
        Particle id (``_rlnGroupName``) of each row of z.

    Returns
    -------
    int
        Items without a latent vector (left out), e.g. particles dropped for having too few tilts.
    """
    ids = list(ids)
    z = np.asarray(z, dtype=np.float32)
    if z.ndim != 2 or z.shape[0] != len(ids):
        raise InputError(f"z has shape {z.shape} for {len(ids)} particle ids")
    row_of = {pid: i for i, pid in enumerate(ids)}
    if len(row_of) != len(ids):
        raise InputError("particle ids of z are not unique")
    out.copyInfo(particles)
    out.setZDim(z.shape[1])
    missing = 0
    for p in particles.iterItems(orderBy="id"):
        i = row_of.get(p.getParticleId())
        if i is None:
            missing += 1
            continue
        q = p.clone()
        q.setZ(z[i])
        out.append(q)
    return missing


def pose_matrix(rot: float, tilt: float, psi: float, shift_x: float, shift_y: float) -> np.ndarray:
    """Scipion's 4 x 4 projection-alignment matrix of a RELION pose (angles in degrees, shifts in px).

    The rotation block of the matrix before inversion is RELION's ``A``; Scipion stores the inverse
    of ``[[A, -s], [0, 1]]`` for projection alignment.
    """
    m = euler_matrix(*np.radians([-rot, -tilt, -psi]), axes="szyz")
    m[:3, 3] = -np.array([shift_x, shift_y, 0.0])
    return np.linalg.inv(m)


def pose_from_matrix(m: np.ndarray) -> tuple[float, float, float, float, float]:
    """Inverse of :func:`pose_matrix`: ``(rot, tilt, psi, shift_x, shift_y)``."""
    inv = np.linalg.inv(np.asarray(m, dtype=np.float64))
    rot, tilt, psi = (-np.degrees(a) for a in euler_from_matrix(inv[:3, :3], axes="szyz"))
    shifts = -inv[:3, 3]
    return float(rot), float(tilt), float(psi), float(shifts[0]), float(shifts[1])


def tilt_images_from_particles(particles: TomoDrgnParticles, out: SetOfParticles) -> int:
    """Fill ``out`` with one Scipion particle per tilt image of the set (CTF, acquisition, pose).

    Each image keeps its particle id (``_rlnGroupName``), ``_rlnCtfBfactor``, ``_rlnCtfScalefactor`` and
    its row in the set's star file (``_tdRow``).

    Returns
    -------
    int
        Number of tilt images.
    """
    star = TiltSeriesStar(particles.getStar())
    if star.source != "relion3":
        raise InputError(f"{particles.getStar()}: one Scipion particle per tilt image is made from RELION 3.0 image series "
                         f"only; this is a {star.source} file")
    src = ImageSource(star.image_names, star.image_anchor, datadir=particles.getDataDir(), lazy=True, named_in=star.path)
    src.close()
    bfactor, scale = star.numeric("rlnCtfBfactor"), star.ctf_scalefactor
    out.setSamplingRate(star.pixel_size)
    acq = out.getAcquisition()
    acq.setVoltage(float(star.voltage[0]))
    acq.setSphericalAberration(float(star.cs[0]))
    acq.setAmplitudeContrast(float(star.w[0]))
    acq.setMagnification(10000.0)
    out.setHasCTF(True)
    out.setAlignmentProj()
    rows = _particle_rows(particles, star)
    for r in rows:
        img = Particle()
        img.setLocation(int(src.index[r]) + 1, str(src.paths[src.stack_of[r]]))
        img.setSamplingRate(star.pixel_size)
        ctf = CTFModel()
        ctf.setStandardDefocus(float(star.dfu[r]), float(star.dfv[r]), float(star.dfang[r]))
        ctf.setPhaseShift(float(star.phase_shift[r]))
        img.setCTF(ctf)
        img.setAcquisition(acq)
        img.setTransform(Transform(pose_matrix(*star.euler[r], *star.shifts_px[r])))
        setattr(img, GROUP_ATTR, String(star.particle_ids[star.particle_index[r]]))
        setattr(img, BFACTOR_ATTR, Float(float(bfactor[r])))
        setattr(img, SCALE_ATTR, Float(float(scale[r])))
        setattr(img, ROW_ATTR, Integer(int(r)))
        out.append(img)
    return len(rows)


def _same_defocus(a: tuple, b: tuple, tol: float) -> bool:
    """Whether two (U, V, angle) describe one astigmatic defocus: (U, V, t) = (V, U, t + 90), t mod 180."""
    def canonical(u, v, t):
        if u < v:
            u, v, t = v, u, t + 90.0
        return u, v, t % 180.0

    (u1, v1, t1), (u2, v2, t2) = canonical(*a), canonical(*b)
    dt = abs((t1 - t2 + 90.0) % 180.0 - 90.0)
    # the angle is meaningless without astigmatism
    return abs(u1 - u2) <= tol and abs(v1 - v2) <= tol and (dt <= 1e-3 or abs(u1 - v1) <= tol)


def _update_pose(df, r: int, matrix: np.ndarray, star: TiltSeriesStar, angle_tol: float, shift_tol: float,
                 source: str | os.PathLike) -> None:
    """Write row ``r``'s angles and shifts anew where ``matrix`` moved them beyond the tolerances."""
    old = pose_matrix(*star.euler[r], *star.shifts_px[r])
    rot, tilt, psi, sx, sy = pose_from_matrix(matrix)
    # compare rotations, not angles: (rot, tilt, psi) and (rot + 180, -tilt, psi + 180) are one pose
    cos_angle = (np.trace(old[:3, :3].T @ np.asarray(matrix)[:3, :3]) - 1.0) / 2.0
    if np.degrees(np.arccos(np.clip(cos_angle, -1.0, 1.0))) > angle_tol:
        for c, v in (("rlnAngleRot", rot), ("rlnAngleTilt", tilt), ("rlnAnglePsi", psi)):
            df.loc[r, c] = repr(float(v))
    if np.hypot(sx - star.shifts_px[r, 0], sy - star.shifts_px[r, 1]) > shift_tol:
        if "rlnOriginX" in df and "rlnOriginY" in df:
            df.loc[r, "rlnOriginX"], df.loc[r, "rlnOriginY"] = repr(float(sx)), repr(float(sy))
        elif "rlnOriginXAngst" in df and "rlnOriginYAngst" in df:
            df.loc[r, "rlnOriginXAngst"] = repr(float(sx * star.pixel_size))
            df.loc[r, "rlnOriginYAngst"] = repr(float(sy * star.pixel_size))
        else:
            raise InputError(f"{source}: row {r + 1} was shifted but the star has no _rlnOriginX/Y columns")


def star_from_tilt_images(images: SetOfParticles, source_star: str | os.PathLike, out_star: str | os.PathLike,
                          angle_tol: float = 1e-3, shift_tol: float = 1e-3, defocus_tol: float = 0.05) -> int:
    """Write the rows of ``source_star`` of the given tilt images, with their current poses and defoci.

    Values that differ from the source row by more than the tolerances (degrees, pixels, A) are
    written anew; all other text, and every other column, is kept.

    Returns
    -------
    int
        Number of rows written.
    """
    star = TiltSeriesStar(source_star)
    df = star.df.copy()
    rows = []
    for img in images.iterItems(orderBy="id"):
        row = getattr(img, ROW_ATTR, None)
        if row is None or row.get() is None or not 0 <= row.get() < len(df):
            raise InputError(f"tilt image {img.getObjId()} has no row of {source_star} ({ROW_ATTR})")
        r = int(row.get())
        rows.append(r)
        if img.hasTransform():
            _update_pose(df, r, img.getTransform().getMatrix(), star, angle_tol, shift_tol, source_star)
        if img.hasCTF():
            ctf = img.getCTF()
            new = (ctf.getDefocusU(), ctf.getDefocusV(), ctf.getDefocusAngle())
            old = (star.dfu[r], star.dfv[r], star.dfang[r])
            if None not in new and not _same_defocus(old, new, defocus_tol):
                for c, v in zip(("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"), new):
                    df.loc[r, c] = repr(float(v))
    if not rows:
        raise InputError("the tilt-image set is empty")
    write_star(df.iloc[np.sort(np.asarray(rows))].reset_index(drop=True), out_star)
    return len(rows)
