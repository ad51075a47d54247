"""RELION 5 and WarpTools particle series: one row per particle, its tilt images in a 2D stack.

Layout (both): an optimisation set (``_rlnTomoParticlesFile``, ``_rlnTomoTomogramsFile``) names a
particles.star (``data_general`` with ``_rlnTomoSubTomosAre2DStacks 1``, ``data_optics``,
``data_particles``: ``_rlnTomoName``, ``_rlnTomoParticleName``, ``_rlnImageName`` = the particle's stack,
``_rlnTomoVisibleFrames`` = ``[0,1,1,...]`` over the tilt series' frames, angles and origins) and a
tomograms.star (``data_global``, one row per tilt series, and per tilt series a table of its frames:
in the file named by ``_rlnTomoTiltSeriesStarFile``, block ``data_<name>``, or as RELION 4 wrote it,
a block ``data_<name>`` of tomograms.star itself). Paths are relative to the RELION project folder: they
are looked up beside each of these files and in the folders above them.

Each tilt image of a particle gets, from the geometry (sources in ``docs/formats.md``):

* **pose** ``A_f = R_f A_sub A_part`` (RELION 5 ``exp_model.cpp`` / ``ml_optimiser.cpp``; WarpTools
  ``GetParticleRotationMatrixInAllTilts``), with ``A_part`` and ``A_sub`` RELION's Euler matrices of
  ``_rlnAngleRot/Tilt/Psi`` and ``_rlnTomoSubtomogramRot/Tilt/Psi`` (identity when absent), and ``R_f`` the
  frame's rotation: ``Rz(ZRot) Ry(YTilt) Rx(XTilt)`` (active, right-handed; RELION 5
  ``Tomogram::setProjectionMatrix``) or the 3 x 3 block of ``_rlnTomoProjX/Y/Z`` (rows of the matrix);
* **shift**: the particle sits at the box centre of its stack (both exporters resample the sub-pixel
  residual away), displaced by the 3D origin ``o`` (``_rlnOriginX/Y/ZAngst``) set by later refinement:
  RELION origin ``[R_f A_sub o]_xy / pixel size`` (``Experiment::getTranslationInTiltSeries``);
* **defocus**: the frame's defocus at the tomogram centre plus the particle's depth
  ``d = [R_f (X - A_sub o)]_z`` (``X`` its position from the tomogram centre, A): ``+ hand x d`` for
  RELION (``Tomogram::getDepthOffset``, ``getCtf``, with ``_rlnTomoDefocusSlope``), ``- hand x d`` for
  WarpTools, whose own CTF model (``TiltSeries.GetPositionInAllTilts``) is what its premultiplied images hold;
* **dose** ``_rlnMicrographPreExposure``, and **cos(stage tilt)** ``R_f[2, 2]`` (never
  ``_rlnCtfScalefactor``, which WarpTools writes as 0 for excluded tilts);
* **stack slice**: the stacks of RELION 5 and of current WarpTools hold the visible frames only, in
  frame order; those of WarpTools up to 2.0.0dev39 hold every frame. Which one is told by the stack's
  slice count.

Both exporters write CTF-premultiplied (``_rlnCtfDataAreCtfPremultiplied 1``) and, with it, dose-weighted
images, protein-light (contrast inverted), so they are read with the default contrast inversion.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..errors import InputError
from ..outputs import write_text
from ..transforms import euler_to_matrix, matrix_to_euler
from .blocks import Block, StarFile, read_blocks, write_blocks
from .relion import flag, numeric
from .series import Editor, SeriesSource

TWO_D_FLAG = "rlnTomoSubTomosAre2DStacks"
REEXTRACT = ("re-extract them as 2D stacks: RELION 5 'Extract subtomos' with 'Write output as 2D stacks?' = Yes "
             "(relion_tomo_subtomo --stack2d), or WarpTools ts_export_particles --2d")


def _resolve(name: str, anchors: list[Path]) -> Path | None:
    """The first existing file ``name`` is, beside one of ``anchors`` or in a folder above it."""
    p = Path(name)
    if p.is_absolute():
        return p if p.is_file() else None
    for a in anchors:
        folder = a.resolve().parent
        for base in (folder, *folder.parents):
            if (base / p).is_file():
                return base / p
    return None


def _required(df: pd.DataFrame, columns: tuple[str, ...], where: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputError(f"{where}: missing required column(s): {', '.join('_' + c for c in missing)}")


def _pairs_or_table(star: StarFile, label: str) -> str | None:
    """A value given as a ``_label value`` pair, or in a one-row loop."""
    pairs = star.pairs()
    if label in pairs:
        return pairs[label]
    for b in star.loops():
        if label in (b.labels or ()) and b.rows:
            return str(b.table(star.path)[label].iloc[0])
    return None


def _split_optimisation_set(star: StarFile, tomograms: str | os.PathLike | None) -> tuple[StarFile, Path, StarFile | None]:
    """(particles star, tomograms.star path, optimisation set or None)."""
    parts = _pairs_or_table(star, "rlnTomoParticlesFile")
    if parts is None:
        if tomograms is None:
            raise InputError(f"{star.path}: a particle-series particles.star needs its tomograms.star: give the optimisation "
                             f"set instead, or pass --tomograms tomograms.star")
        tpath = Path(tomograms)
        if not tpath.is_file():
            raise InputError(f"{tpath}: tomograms.star not found (--tomograms)")
        return star, tpath, None
    ppath = _resolve(parts, [star.path])
    if ppath is None:
        raise InputError(f"{star.path}: _rlnTomoParticlesFile names {parts}, which is not found beside the optimisation set "
                         f"or in the folders above it")
    if tomograms is not None:
        tpath = Path(tomograms)
        if not tpath.is_file():
            raise InputError(f"{tpath}: tomograms.star not found (--tomograms)")
    else:
        tname = _pairs_or_table(star, "rlnTomoTomogramsFile")
        if tname is None:
            raise InputError(f"{star.path}: the optimisation set has no _rlnTomoTomogramsFile; pass --tomograms")
        found = _resolve(tname, [star.path, ppath])
        if found is None:
            raise InputError(f"{star.path}: _rlnTomoTomogramsFile names {tname}, which is not found beside the optimisation set "
                             f"or in the folders above it")
        tpath = found
    return read_blocks(ppath), tpath, star


def detect_tomo(star: StarFile, tomograms: str | os.PathLike | None) -> str:
    """``relion5`` or ``warptools``, from the tomograms.star: WarpTools writes ``_rlnTomoProjX/Y/Z/W`` with a
    zero translation (and names tomograms ``*.tomostar``); RELION 5 writes ``_rlnTomoXTilt/YTilt/ZRot``."""
    _, tpath, _ = _split_optimisation_set(star, tomograms)
    tomos = read_blocks(tpath)
    glob = tomos.get("global")
    names = [] if glob is None or not glob.is_loop else glob.table(tomos.path).get("rlnTomoName", pd.Series([], dtype=str)).tolist()
    if any(str(n).endswith(".tomostar") for n in names):
        return "warptools"
    for b in tomos.loops():
        if b.name == "global":
            continue
        if "rlnTomoProjX" in (b.labels or ()) and b.rows:
            proj = _vectors(b.table(tomos.path), "rlnTomoProjX", f"{tomos.path}: block data_{b.name}")
            if np.all(proj[:, 3] == 0):
                return "warptools"
        return "relion5"
    return "relion5"


def _vectors(df: pd.DataFrame, column: str, where: str) -> np.ndarray:
    """``[a,b,c,d]`` texts as float64, shape (N, 4)."""
    text = df[column].astype(str).str.strip().str.strip("[]").str.split(",")
    try:
        out = np.array([[float(x) for x in row] for row in text], dtype=np.float64)
    except ValueError:
        bad = next(i for i, row in enumerate(text) if not all(_is_float(x) for x in row))
        raise InputError(f"{where}: row {bad + 1}: column _{column} has {df[column].iloc[bad]!r}, expected [a,b,c,d]") from None
    if out.ndim != 2 or out.shape[1] != 4 or not np.isfinite(out).all():
        raise InputError(f"{where}: column _{column}: expected four finite numbers [a,b,c,d] on every row")
    return out


def _is_float(x: str) -> bool:
    try:
        float(x)
        return True
    except ValueError:
        return False


def _rotations_xyz(xtilt: np.ndarray, ytilt: np.ndarray, zrot: np.ndarray) -> np.ndarray:
    """``Rz(zrot) Ry(ytilt) Rx(xtilt)``, active right-handed rotations, degrees in; shape (N, 3, 3)."""
    def rot(axis: int, deg: np.ndarray) -> np.ndarray:
        a = np.radians(deg)
        c, s = np.cos(a), np.sin(a)
        m = np.zeros((len(a), 3, 3))
        i, j = [(1, 2), (2, 0), (0, 1)][axis]
        m[:, axis, axis] = 1.0
        m[:, i, i], m[:, j, j] = c, c
        m[:, i, j], m[:, j, i] = -s, s
        return m

    return rot(2, zrot) @ rot(1, ytilt) @ rot(0, xtilt)


class _TiltSeries:
    """The frames of one tilt series: rotation, defocus, dose; and its global values."""

    def __init__(self, name: str, glob: pd.Series, table: pd.DataFrame, where: str, kind: str):
        self.name = name
        n = len(table)
        if n == 0:
            raise InputError(f"{where}: the tilt series {name} has no frames")
        if "rlnTomoProjX" in table.columns:
            rows = [_vectors(table, c, where) for c in ("rlnTomoProjX", "rlnTomoProjY", "rlnTomoProjZ")]
            self.rot = np.stack([r[:, :3] for r in rows], 1)
        else:
            _required(table, ("rlnTomoYTilt", "rlnTomoZRot"), where)
            x = numeric(table, "rlnTomoXTilt", where) if "rlnTomoXTilt" in table else np.zeros(n)
            self.rot = _rotations_xyz(x, numeric(table, "rlnTomoYTilt", where), numeric(table, "rlnTomoZRot", where))
        # the projection block may carry a scale (binned RELION 4 matrices): keep the rotation
        scale = np.linalg.norm(self.rot[:, 2, :], axis=1)
        if np.any(scale <= 0):
            raise InputError(f"{where}: row {int(np.flatnonzero(scale <= 0)[0]) + 1}: the projection matrix is singular")
        self.rot = self.rot / scale[:, None, None]
        _required(table, ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnMicrographPreExposure"), where)
        self.dfu, self.dfv = numeric(table, "rlnDefocusU", where), numeric(table, "rlnDefocusV", where)
        self.dfang = numeric(table, "rlnDefocusAngle", where)
        self.dose = numeric(table, "rlnMicrographPreExposure", where)
        self.phase_shift = numeric(table, "rlnPhaseShift", where) if "rlnPhaseShift" in table else np.zeros(n)
        self.micrograph = table["rlnMicrographName"].astype(str).to_numpy() if "rlnMicrographName" in table else np.full(n, "")
        self.n_frames = n
        gw = f"{where.split(': block')[0]}: block data_global, tomogram {name}"

        def gnum(col: str, default: float | None = None) -> float:
            if col in glob.index:
                try:
                    v = float(glob[col])
                except ValueError:
                    v = float("nan")
                if not np.isfinite(v):
                    raise InputError(f"{gw}: column _{col} has {glob[col]!r}, expected a finite number")
                return v
            if default is None:
                raise InputError(f"{gw}: missing required column _{col}")
            return default

        self.hand = gnum("rlnTomoHand", float("nan"))
        self.slope = gnum("rlnTomoDefocusSlope", 1.0)
        self.ts_pixel = gnum("rlnTomoTiltSeriesPixelSize", float("nan"))
        self.size = np.array([gnum(f"rlnTomoSize{a}", float("nan")) for a in "XYZ"])
        self.glob = glob
        self.kind = kind
        if "rlnTomoFrameCount" in glob.index and int(float(glob["rlnTomoFrameCount"])) != n:
            raise InputError(f"{gw}: _rlnTomoFrameCount is {glob['rlnTomoFrameCount']} but its table has {n} frames")


def _tilt_series(tomos: StarFile, names: set[str], kind: str) -> dict[str, _TiltSeries]:
    glob_block = tomos.get("global")
    if glob_block is None or not glob_block.is_loop:
        raise InputError(f"{tomos.path}: no data_global table of tilt series (a RELION 5 / WarpTools tomograms.star is needed)")
    glob = glob_block.table(tomos.path)
    _required(glob, ("rlnTomoName",), f"{tomos.path}: block data_global")
    out = {}
    for i, row in glob.iterrows():
        name = str(row["rlnTomoName"])
        if name not in names:
            continue
        if "rlnTomoTiltSeriesStarFile" in glob.columns:
            ref = str(row["rlnTomoTiltSeriesStarFile"])
            path = _resolve(ref, [tomos.path])
            if path is None:
                raise InputError(f"{tomos.path}: block data_global, row {i + 1}: _rlnTomoTiltSeriesStarFile names {ref}, which is "
                                 f"not found beside tomograms.star or in the folders above it")
            ts = read_blocks(path)
            block = ts.get(name) or (ts.loops()[0] if len(ts.loops()) == 1 else None)
            if block is None or not block.is_loop:
                raise InputError(f"{path}: no block data_{name} of the tilt series' frames")
        else:
            ts = tomos
            block = tomos.get(name)
            if block is None or not block.is_loop:
                raise InputError(f"{tomos.path}: no block data_{name} with the frames of tilt series {name} (and no "
                                 f"_rlnTomoTiltSeriesStarFile column)")
        out[name] = _TiltSeries(name, row, block.table(ts.path), f"{ts.path}: block data_{block.name}", kind)
    return out


def _visible(text: pd.Series, where: str) -> list[np.ndarray]:
    out = []
    for i, t in enumerate(text.astype(str)):
        s = t.strip()
        try:
            v = np.array([int(x) for x in s.strip("[]").split(",")], dtype=np.int64) if s.strip("[]") else np.zeros(0, np.int64)
        except ValueError:
            raise InputError(f"{where}: row {i + 1}: column _rlnTomoVisibleFrames has {t!r}, expected [0,1,1,...]") from None
        if not (s.startswith("[") and s.endswith("]")) or np.any((v != 0) & (v != 1)):
            raise InputError(f"{where}: row {i + 1}: column _rlnTomoVisibleFrames has {t!r}, expected [0,1,1,...]")
        out.append(v.astype(bool))
    return out


def _stack_slices(path: Path) -> int:
    """Number of images in an MRC stack, from its header (checked against the file size)."""
    from ..stacks import ImageSource

    return ImageSource._header_shape(path)[0]


def read_particle_series(star: StarFile, kind: str, tomograms: str | os.PathLike | None) -> SeriesSource:
    """A :class:`SeriesSource` of a RELION 5 (``relion5``) or WarpTools (``warptools``) particle series.

    Parameters
    ----------
    star : StarFile
        The optimisation set, or the particles.star.
    kind : str
    tomograms : path-like, optional
        tomograms.star (needed with a particles.star; overrides the optimisation set's).
    """
    pstar, tpath, optset = _split_optimisation_set(star, tomograms)
    anchors = [pstar.path, tpath] + ([optset.path] if optset is not None else [])
    two_d = _pairs_or_table(pstar, TWO_D_FLAG)
    if two_d is None or two_d.strip() not in ("1", "1.0"):
        state = "absent" if two_d is None else two_d.strip()
        raise InputError(f"{pstar.path}: block data_general: _{TWO_D_FLAG} is {state}: these are 3D subtomograms; {REEXTRACT}")
    block = pstar.get("particles") or next((b for b in pstar.loops() if b.name not in ("optics", "general")), None)
    if block is None or not block.rows:
        raise InputError(f"{pstar.path}: no particle rows (block data_particles)")
    where = f"{pstar.path}: block data_{block.name}"
    parts = block.table(pstar.path)
    _required(parts, ("rlnTomoName", "rlnImageName", "rlnTomoVisibleFrames", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"), where)
    n_parts = len(parts)

    # optics: per particle
    opt_block = pstar.get("optics")
    if opt_block is None or not opt_block.is_loop:
        raise InputError(f"{pstar.path}: no data_optics table")
    opt = opt_block.table(pstar.path)
    ow = f"{pstar.path}: block data_optics"
    _required(opt, ("rlnOpticsGroup", "rlnImagePixelSize"), ow)
    groups_opt = numeric(opt, "rlnOpticsGroup", ow)
    groups = numeric(parts, "rlnOpticsGroup", where) if "rlnOpticsGroup" in parts else np.full(n_parts, groups_opt[0])
    pos = {g: i for i, g in enumerate(groups_opt)}
    oidx = np.array([pos.get(g, -1) for g in groups])
    if (oidx < 0).any():
        r = int(np.flatnonzero(oidx < 0)[0])
        raise InputError(f"{where}: row {r + 1}: optics group {groups[r]:g} is not in data_optics")
    img_pixel = numeric(opt, "rlnImagePixelSize", ow)[oidx]
    premult = flag(opt, "rlnCtfDataAreCtfPremultiplied", ow)[oidx]

    tomo_names = parts["rlnTomoName"].astype(str).to_numpy()
    tomos_star = read_blocks(tpath)
    series = _tilt_series(tomos_star, set(tomo_names), kind)
    missing = [t for t in dict.fromkeys(tomo_names) if t not in series]
    if missing:
        r = int(np.flatnonzero(tomo_names == missing[0])[0])
        raise InputError(f"{where}: row {r + 1}: tomogram {missing[0]} is not in {tpath}")

    def optics_or_global(col: str) -> np.ndarray:
        if col in opt.columns:
            return numeric(opt, col, ow)[oidx]
        vals = []
        for t in tomo_names:
            g = series[t].glob
            if col not in g.index:
                raise InputError(f"{pstar.path}: no _{col} in data_optics, nor in data_global of {tpath} (tomogram {t})")
            vals.append(float(g[col]))
        return np.asarray(vals, dtype=np.float64)

    voltage, cs, w = (optics_or_global(c) for c in ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"))
    ts_pixel = optics_or_global("rlnTomoTiltSeriesPixelSize") if "rlnTomoTiltSeriesPixelSize" in opt.columns else \
        np.array([series[t].ts_pixel for t in tomo_names])

    # particle names
    if "rlnTomoParticleName" in parts:
        pnames = parts["rlnTomoParticleName"].astype(str).to_numpy()
    elif "rlnTomoParticleId" in parts:
        pnames = np.array([f"{t}/{i}" for t, i in zip(tomo_names, parts["rlnTomoParticleId"].astype(str))])
    else:
        pnames = np.array([f"{t}/{i + 1}" for i, t in enumerate(tomo_names)])
    dup = pd.Series(pnames).duplicated().to_numpy()
    if dup.any():
        r = int(np.flatnonzero(dup)[0])
        raise InputError(f"{where}: row {r + 1}: particle {pnames[r]} is listed twice")

    # orientations and positions
    a_part = euler_to_matrix(*(torch.as_tensor(np.array(numeric(parts, c, where))) for c in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"))).numpy()
    sub_cols = ("rlnTomoSubtomogramRot", "rlnTomoSubtomogramTilt", "rlnTomoSubtomogramPsi")
    a_sub = euler_to_matrix(*(torch.as_tensor(np.array(numeric(parts, c, where))) for c in sub_cols)).numpy() \
        if all(c in parts for c in sub_cols) else np.broadcast_to(np.eye(3), (n_parts, 3, 3))
    origin = np.stack([numeric(parts, f"rlnOrigin{a}Angst", where) if f"rlnOrigin{a}Angst" in parts else np.zeros(n_parts)
                       for a in "XYZ"], 1)
    origin_tomo = np.einsum("nij,nj->ni", a_sub, origin)
    centre_a = np.array([series[t].size * series[t].ts_pixel for t in tomo_names]) / 2.0
    if all(f"rlnCenteredCoordinate{a}Angst" in parts for a in "XYZ"):
        coord = np.stack([numeric(parts, f"rlnCenteredCoordinate{a}Angst", where) for a in "XYZ"], 1)
    elif all(f"rlnCoordinate{a}" in parts for a in "XYZ"):
        # RELION 4/5: pixels of the tilt series; WarpTools: pixels of the particle images
        px = img_pixel if kind == "warptools" else ts_pixel
        coord = np.stack([numeric(parts, f"rlnCoordinate{a}", where) for a in "XYZ"], 1) * px[:, None] - centre_a
    else:
        coord = None
    position = None if coord is None else coord - origin_tomo
    if position is not None and not np.isfinite(position).all():
        r = int(np.flatnonzero(~np.isfinite(position).all(1))[0])
        raise InputError(f"{where}: row {r + 1}: the tomogram's _rlnTomoSizeX/Y/Z or _rlnTomoTiltSeriesPixelSize is missing, "
                         f"needed to place the particle")

    # frames of each particle, stack slices
    visible = _visible(parts["rlnTomoVisibleFrames"], where)
    stack_names = parts["rlnImageName"].astype(str).to_numpy()
    resolved: dict[str, Path | None] = {}
    counts: dict[str, int] = {}
    img_part, img_frame, img_slice, img_stack = [], [], [], []
    for p in range(n_parts):
        ts = series[tomo_names[p]]
        vis = visible[p]
        if len(vis) != ts.n_frames:
            raise InputError(f"{where}: row {p + 1}: _rlnTomoVisibleFrames has {len(vis)} entries, but tilt series "
                             f"{tomo_names[p]} has {ts.n_frames} frames")
        name = stack_names[p]
        if name not in resolved:
            resolved[name] = _resolve(name, anchors)
            counts[name] = _stack_slices(resolved[name]) if resolved[name] is not None else -1
        if "@" in name:
            raise InputError(f"{where}: row {p + 1}: _rlnImageName {name!r} names one image; a particle series names the "
                             f"particle's whole 2D stack")
        frames = np.flatnonzero(vis)
        nz = counts[name]
        if nz == -1:
            slices = np.arange(len(frames))  # not found: ImageSource names the missing file
        elif nz == len(frames):
            slices = np.arange(len(frames))
        elif nz == ts.n_frames:
            slices = frames  # every frame in the stack (WarpTools up to 2.0.0dev39)
        else:
            raise InputError(f"{resolved[name]}: {nz} images, but particle {pnames[p]} ({where.split(': ')[0]}, row {p + 1}) "
                             f"has {len(frames)} visible frames of {ts.n_frames}")
        img_part.append(np.full(len(frames), p))
        img_frame.append(frames)
        img_slice.append(slices)
        img_stack.append(np.full(len(frames), name, dtype=object))
    ip = np.concatenate(img_part).astype(np.int64)
    fr = np.concatenate(img_frame).astype(np.int64)
    sl = np.concatenate(img_slice).astype(np.int64)
    stacks = np.concatenate(img_stack)
    empty = np.setdiff1d(np.arange(n_parts), ip)
    notes = [f"{len(empty)} particle(s) with no visible frame left out"] if len(empty) else []

    # every frame of every tilt series in one table; images index it by global frame number
    order = list(series)
    offset = dict(zip(order, np.cumsum([0] + [series[t].n_frames for t in order])[:-1]))
    cat = {a: np.concatenate([getattr(series[t], a) for t in order]) for a in ("rot", "dfu", "dfv", "dfang", "dose",
                                                                           "phase_shift", "micrograph")}
    gframe = np.array([offset[t] for t in tomo_names], dtype=np.int64)[ip] + fr
    rot_f = cat["rot"][gframe]
    a_img = rot_f @ a_sub[ip] @ a_part[ip]
    e = np.stack([t.numpy() for t in matrix_to_euler(torch.as_tensor(a_img))], 1)
    shift = np.einsum("nij,nj->ni", rot_f, origin_tomo[ip])[:, :2] / img_pixel[ip, None]
    dfu, dfv, dfang, dose, phase = (cat[a][gframe] for a in ("dfu", "dfv", "dfang", "dose", "phase_shift"))
    if position is not None:
        depth = np.einsum("nj,nj->n", rot_f[:, 2, :], position[ip])
        hand = np.array([series[t].hand for t in tomo_names])
        if not np.isfinite(hand).all():
            t = tomo_names[int(np.flatnonzero(~np.isfinite(hand))[0])]
            raise InputError(f"{tpath}: block data_global, tomogram {t}: missing _rlnTomoHand, needed for the defocus of each particle")
        slope = np.array([series[t].slope for t in tomo_names])
        delta = (hand * slope)[ip] * depth if kind == "relion5" else -hand[ip] * depth
        dfu, dfv = dfu + delta, dfv + delta
    else:
        notes.append("no particle coordinates: the defocus of each tilt is the tilt series' own")
    cos_tilt = np.abs(rot_f[:, 2, 2])

    full = {n: str(resolved[n]) if resolved[n] is not None else n for n in resolved}
    image_names = np.array([f"{s + 1}@{full[n]}" for s, n in zip(sl, stacks)])
    micrographs = cat["micrograph"][gframe]
    df = pd.DataFrame({
        "rlnTomoParticleName": pnames[ip], "rlnTomoName": tomo_names[ip], "rlnMicrographName": micrographs,
        "rlnTomoFrame": fr + 1, "rlnImageName": image_names,
        "rlnDefocusU": dfu, "rlnDefocusV": dfv, "rlnDefocusAngle": dfang, "rlnMicrographPreExposure": dose,
        "rlnAngleRot": e[:, 0], "rlnAngleTilt": e[:, 1], "rlnAnglePsi": e[:, 2],
        "rlnOriginX": shift[:, 0], "rlnOriginY": shift[:, 1], "cosStageTilt": cos_tilt,
    })
    values = {
        "dfu": dfu, "dfv": dfv, "dfang": dfang, "voltage": voltage[ip], "cs": cs[ip], "w": w[ip], "phase_shift": phase,
        "dose": dose, "ctf_scalefactor": cos_tilt, "pixel_size": img_pixel[ip], "euler": e, "shifts_px": shift,
    }
    premult_img = premult[ip]
    kept = np.unique(ip)

    def writer(particles: np.ndarray, rows: np.ndarray, out: Path, edit: Editor | None = None) -> list[Path]:
        target = pstar if edit is None else edit(pstar, block.name)
        return write_particle_series(target, target.get(block.name), optset, tpath, kept[particles], out)

    return SeriesSource(
        kind=kind, path=star.path, df=df, particle_key=pnames[ip], tomogram=tomo_names[ip], image_names=image_names,
        image_anchor=pstar.path, values=values, premultiplied=premult_img, dose_weighted=premult_img.copy(),
        row_of_image=ip, block=block.name, writer=writer,
        columns={"pixel_size": "rlnImagePixelSize", "voltage": "rlnVoltage", "w": "rlnAmplitudeContrast",
                 "ctf_scalefactor": "rlnTomoProjZ / _rlnTomoXTilt,YTilt", "dose": "rlnMicrographPreExposure"},
        particle_df=parts.iloc[kept].reset_index(drop=True), notes=notes,
    )


def optimisation_set_paths(out: Path) -> tuple[Path, Path]:
    """(optimisation set, particles.star) written for an output name: ``X_optimisation_set.star`` gives
    ``X_particles.star``; any other ``Y.star`` gives ``Y_particles.star`` beside it."""
    name = out.name
    stem = name[:-len("_optimisation_set.star")] if name.endswith("_optimisation_set.star") else out.stem
    return out, out.with_name(f"{stem}_particles.star")


def write_particle_series(pstar: StarFile, block: Block, optset: StarFile | None, tomograms: Path,
                          rows: np.ndarray, out: Path) -> list[Path]:
    """Write particles.star rows ``rows`` (every block, column and text kept) and, when the input was an
    optimisation set, a new optimisation set naming it and the same tomograms.star (absolute paths, so
    RELION and WarpTools/M take it from any folder).

    Returns
    -------
    list of Path
        The files written (optimisation set first).
    """
    if optset is None:
        write_blocks(pstar, out, {block.name: np.sort(rows)})
        return [out]
    oset, ppath = optimisation_set_paths(out)
    write_blocks(pstar, ppath, {block.name: np.sort(rows)})
    lines = []
    done = set()
    for b in optset.blocks:
        lines += [ln if not ln.strip().startswith("_") else _replace_value(ln, ppath, tomograms, done) for ln in b.header]
        lines.append("")
    for label, value in (("rlnTomoParticlesFile", ppath), ("rlnTomoTomogramsFile", tomograms)):
        if label not in done:
            lines.append(f"_{label} {Path(value).resolve()}")
    write_text(oset, "\n".join(lines) + "\n")
    return [oset, ppath]


def _replace_value(line: str, particles: Path, tomograms: Path, done: set[str]) -> str:
    label = line.strip().split()[0][1:]
    new = {"rlnTomoParticlesFile": particles, "rlnTomoTomogramsFile": tomograms}.get(label)
    if new is None:
        return line
    done.add(label)
    return f"_{label} {Path(new).resolve()}"
