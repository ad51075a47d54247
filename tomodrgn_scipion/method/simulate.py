"""Warp-style particle tilt series from one or more volumes, with known ground truth.

Each particle gets a uniformly random orientation ``A_p`` and a position in its tomogram. Every tilt
``t`` of the tilt scheme images it with pose ``A = Ry(t) A_p`` (the stage tilt composed with the
particle orientation; tilt axis Y, as Warp's), a defocus that follows the particle's height in the
tilted specimen, the CTF, physical dose attenuation ``exp(-N / 2Ne(k))``, ``cos(t)`` attenuation and
a random sub-pixel origin shift; Gaussian noise is added at a target SNR (signal variance over noise
variance, over the whole box of the noise-free images of up to 8 tomograms spread over the set). The
j-th image acquired (0-based) has received a cumulative dose of ``(j + 1) * dose_per_tilt``, written as
``_rlnCtfBfactor = -4 * dose`` as Warp does.

Heterogeneity is either discrete (each particle drawn from one of the volumes, balanced labels) or
continuous (two volumes mixed with a coefficient ``t`` in [0, 1] per particle).

The particles' placements in their tomograms are also written as a Warp/RELION *volume-series* star
(one row per particle, as for subtomograms), which ``mapback`` reads: coordinates in pixels of
``pixel_size`` from the corner of a ``tomogram_width`` x ``tomogram_width`` x ``tomogram_thickness`` A
tomogram, and the angles of ``A_p`` itself, i.e. the pose of the particle's 0-degree tilt image.

Memory is bounded: images are computed and written in chunks, and the star file is streamed.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import fft
from .imaging import PREMULTIPLIED_SIGN, ImagingParams
from .lattice import Lattice
from .outputs import write_text
from .progress import Progress
from .projection import Projector, SliceGeometry
from .stacks import StackWriter, write_mrc
from .formats.relion import relion31_tables
from .star import StarWriter
from .transforms import matrix_to_euler, random_rotations, rotation_about_y, shift_fourier

log = logging.getLogger(__name__)

STAR_COLUMNS = [
    "rlnMagnification", "rlnDetectorPixelSize", "rlnVoltage", "rlnSphericalAberration",
    "rlnAmplitudeContrast", "rlnPhaseShift", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle",
    "rlnImageName", "rlnMicrographName", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi",
    "rlnOriginX", "rlnOriginY", "rlnCtfBfactor", "rlnCtfScalefactor", "rlnGroupName",
]
#: Columns of the volume-series star, one row per particle.
VOLUME_STAR_COLUMNS = [
    "rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ",
    "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnMagnification", "rlnDetectorPixelSize", "rlnPixelSize",
]
VOLUME_STAR_NAME = "particles_volumes.star"
# spawn key of the generator of the draws added with the volume-series star (the y coordinates): a
# stream of its own, so that every earlier draw, hence particles.star and the stacks, stay as they were
_PLACEMENT_STREAM = (3,)
# the same for the draws of the tilt-series geometry (3D origins, per-frame astigmatism)
_FRAME_STREAM = (4,)
LAYOUTS = ("relion3", "relion31", "relion5", "warptools")


def tilt_scheme(max_tilt: float = 60.0, step: float = 3.0, scheme: str = "dose-symmetric") -> np.ndarray:
    """Stage tilts in acquisition order, degrees.

    ``dose-symmetric`` (Hagen et al. 2017): 0, +s, -s, -2s, +2s, +3s, -3s, ... (the side switches
    after every two images); ``sequential``: from -max to +max; ``bidirectional``: 0 to +max, then -s
    to -max.
    """
    n = int(round(max_tilt / step))
    pos = [k * step for k in range(1, n + 1)]
    if scheme == "dose-symmetric":
        order = [0.0]
        for k, t in enumerate(pos):
            order += [t, -t] if k % 2 == 0 else [-t, t]
        return np.array(order)
    if scheme == "sequential":
        return np.array([-t for t in reversed(pos)] + [0.0] + pos)
    if scheme == "bidirectional":
        return np.array([0.0] + pos + [-t for t in pos])
    raise ValueError(f"unknown tilt scheme {scheme!r}; use dose-symmetric, sequential or bidirectional")


@dataclass
class SimulationConfig:
    """What :func:`simulate` makes. Lengths in A, angles in degrees, dose in e/A^2."""

    n_particles: int = 200
    particles_per_tomogram: int = 50
    pixel_size: float = 6.0
    tilt_max: float = 60.0
    tilt_step: float = 3.0
    tilt_scheme: str = "dose-symmetric"
    dose_per_tilt: float = 3.0
    voltage: float = 300.0
    cs: float = 2.7
    amplitude_contrast: float = 0.07
    phase_shift: float = 0.0
    defocus_min: float = 15000.0
    defocus_max: float = 35000.0
    astigmatism: float = 500.0
    tomogram_width: float = 4000.0
    tomogram_thickness: float = 1000.0
    shift_std: float = 1.0
    snr: float = 0.1
    contrast: str = "light"
    continuous: bool = False
    pad: int = 3
    chunk_images: int = 1024
    seed: int = 0
    stack_dir: str | None = None
    layout: str = "relion3"
    premultiply: bool = False
    tilt_axis: float = 0.0
    tilt_series_geometry: bool = False

    @property
    def particle_series(self) -> bool:
        """Whether the layout lists particles with 2D stacks (RELION 5, WarpTools)."""
        return self.layout in ("relion5", "warptools")

    @property
    def frame_geometry(self) -> bool:
        """Whether images follow one geometry per tilt series: a 3D origin per particle projected
        into each tilt, and one astigmatism per tilt (forced by the particle-series layouts, whose files
        cannot say anything else)."""
        return self.tilt_series_geometry or self.particle_series


def _rz(angle_deg: float) -> torch.Tensor:
    """Active right-handed rotation about z by ``angle_deg`` (RELION 5's ZRot), shape (3, 3)."""
    a = np.radians(angle_deg)
    c, s = np.cos(a), np.sin(a)
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)


def _fmt(x: np.ndarray, digits: int) -> list[str]:
    return [f"{v:.{digits}f}" for v in x]


@dataclass
class _TiltImages:
    """Everything random about the tilt images of one tomogram, shape (M,) or (M, ...) each."""

    particle: np.ndarray
    rot: torch.Tensor
    params: ImagingParams
    shifts: np.ndarray


class _Simulator:
    """Per-particle ground truth, and per-tomogram images drawn from generators seeded by
    ``(seed, tomogram)``, so any tomogram can be made again (for the noise pilot) and results do not
    depend on the chunk size."""

    def __init__(self, volumes: list[np.ndarray], cfg: SimulationConfig):
        self.cfg = cfg
        self.d = volumes[0].shape[-1]
        self.tilts = tilt_scheme(cfg.tilt_max, cfg.tilt_step, cfg.tilt_scheme)
        self.dose = (np.arange(len(self.tilts)) + 1) * cfg.dose_per_tilt
        rng = np.random.default_rng(cfg.seed)
        n = cfg.n_particles
        if cfg.continuous:
            self.mix, self.labels = rng.uniform(0.0, 1.0, n), None
        else:
            self.mix, self.labels = None, rng.permutation(np.arange(n) % len(volumes))
        self.rot_p = random_rotations(n, torch.Generator().manual_seed(cfg.seed))
        self.pos_x = rng.uniform(-cfg.tomogram_width / 2, cfg.tomogram_width / 2, n)
        self.pos_z = rng.uniform(-cfg.tomogram_thickness / 2, cfg.tomogram_thickness / 2, n)
        # y does not change the images (tilt axis Y), so it was never drawn for them
        placement_rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=_PLACEMENT_STREAM))
        self.pos_y = placement_rng.uniform(-cfg.tomogram_width / 2, cfg.tomogram_width / 2, n)
        self.tomo_index = np.arange(n) // cfg.particles_per_tomogram
        self.n_tomos = int(self.tomo_index.max()) + 1
        self.tomo_defocus = rng.uniform(cfg.defocus_min, cfg.defocus_max, self.n_tomos)
        self.tomo_names = [f"tomo_{t:03d}" for t in range(self.n_tomos)]
        self.pids = [f"{t:03d}_{p - t * cfg.particles_per_tomogram:06d}" for p, t in enumerate(self.tomo_index)]
        frame_rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=_FRAME_STREAM))
        # 3D origin of each particle (A): where the particle centre is off its listed coordinate
        self.origin_a = frame_rng.normal(0.0, cfg.shift_std * cfg.pixel_size, (n, 3)) if cfg.shift_std > 0 else np.zeros((n, 3))
        nt = len(self.tilts)
        self.frame_astig = frame_rng.uniform(-cfg.astigmatism / 2, cfg.astigmatism / 2, (self.n_tomos, nt))
        self.frame_dfang = frame_rng.uniform(-180.0, 180.0, (self.n_tomos, nt))
        # the tilt series' frame rotation R_f = Rz(tilt axis) Ry_relion(t) (RELION 5: YTilt = -t, ZRot = axis)
        self.frame_rot = _rz(cfg.tilt_axis) @ rotation_about_y(torch.as_tensor(self.tilts))
        self.geom = SliceGeometry(self.d, cfg.pad)
        self.projectors = [Projector(torch.from_numpy(np.asarray(v, dtype=np.float64)), self.geom) for v in volumes]
        self.freqs_a = self.geom.freqs2d / cfg.pixel_size

    def members(self, t: int) -> np.ndarray:
        """Particle numbers of tomogram ``t``."""
        return np.flatnonzero(self.tomo_index == t)

    def tomogram(self, t: int) -> _TiltImages:
        """The random draws of every tilt image of tomogram ``t``, in star order."""
        cfg, parts, nt = self.cfg, self.members(t), len(self.tilts)
        rng = np.random.default_rng([cfg.seed, t, 1])
        m = len(parts) * nt
        tilt = np.tile(self.tilts, len(parts))
        pidx = np.repeat(parts, nt)
        frame_rot = self.frame_rot[torch.as_tensor(np.tile(np.arange(nt), len(parts)))]
        rot = frame_rot @ self.rot_p[torch.as_tensor(pidx)]
        rad = np.radians(tilt)
        # height of the particle along the beam in the tilted specimen (RELION's Ry, third row; the tilt
        # axis rotation Rz leaves it unchanged)
        height = np.sin(rad) * self.pos_x[pidx] + np.cos(rad) * self.pos_z[pidx]
        df_mean = self.tomo_defocus[t] - height
        astig = rng.uniform(-cfg.astigmatism / 2, cfg.astigmatism / 2, m)
        dfang = rng.uniform(-180.0, 180.0, m)
        if cfg.frame_geometry:
            astig, dfang = np.tile(self.frame_astig[t], len(parts)), np.tile(self.frame_dfang[t], len(parts))
        params = ImagingParams(
            dfu=df_mean + astig, dfv=df_mean - astig, dfang=dfang,
            voltage=np.full(m, cfg.voltage), cs=np.full(m, cfg.cs), w=np.full(m, cfg.amplitude_contrast),
            phase_shift=np.full(m, cfg.phase_shift), dose=np.tile(self.dose, len(parts)), ctf_scalefactor=np.cos(rad),
        )
        shifts = rng.normal(0.0, cfg.shift_std, (m, 2)) if cfg.shift_std > 0 else np.zeros((m, 2))
        if cfg.frame_geometry:
            # RELION's origin of each image: the particle's 3D origin seen in the tilt (exp_model.cpp)
            shifts = np.einsum("nij,nj->ni", frame_rot.numpy(), self.origin_a[pidx])[:, :2] / cfg.pixel_size
        return _TiltImages(pidx, rot, params, shifts)

    def signal(self, ti: _TiltImages, rows: slice) -> np.ndarray:
        """Noise-free images of ``ti[rows]``, float64, shape (B, D, D), in the requested contrast."""
        pidx, rot = ti.particle[rows], ti.rot[rows]
        proj = torch.zeros(len(pidx), self.geom.coords.shape[0], dtype=torch.complex128)
        for k, pr in enumerate(self.projectors):
            # projection is linear in the volume: a mixture's projection is the mixture of projections
            if self.mix is not None:
                wk = torch.as_tensor(self.mix[pidx] if k == 1 else 1.0 - self.mix[pidx])
            else:
                wk = torch.as_tensor((self.labels[pidx] == k).astype(np.float64))
            sel = torch.nonzero(wk != 0).squeeze(1)
            if len(sel):
                proj[sel] += wk[sel, None] * pr.project(rot[sel])
        params = ti.params.subset(np.arange(len(ti.particle))[rows])
        f = self.geom.to_grid(proj * params.transfer(self.freqs_a))
        # The particle centre sits at -origin in the image (RELION's convention).
        img = fft.ifft2_center(shift_fourier(f, -torch.as_tensor(ti.shifts[rows]))).real.numpy()
        return -img if self.cfg.contrast == "light" else img

    def premultiply(self, img: np.ndarray, params: ImagingParams) -> np.ndarray:
        """Images multiplied by their CTF as RELION 5 and WarpTools do (RELION's sign, minus ours),
        over the whole box, noise included; float64, shape (B, D, D)."""
        lat = Lattice(self.d, dtype=torch.float64)
        ctf = params.ctf(lat.freqs2d / self.cfg.pixel_size).reshape(-1, self.d, self.d)
        f = fft.fft2_center(torch.as_tensor(img)) * (PREMULTIPLIED_SIGN * ctf)
        return fft.ifft2_center(f).real.numpy()

    def noise_sigma(self, chunk: int) -> float:
        """Noise std giving the target SNR over the noise-free images of up to 8 tomograms spread
        over the data set (all of them for small sets)."""
        if self.cfg.snr <= 0:
            return 0.0
        total, total_sq, count = 0.0, 0.0, 0
        for t in np.unique(np.linspace(0, self.n_tomos - 1, min(8, self.n_tomos)).round().astype(int)):
            ti = self.tomogram(int(t))
            for c0 in range(0, len(ti.particle), chunk):
                img = self.signal(ti, slice(c0, c0 + chunk))
                total, total_sq, count = total + img.sum(), total_sq + (img * img).sum(), count + img.size
        var = total_sq / count - (total / count) ** 2
        return float(np.sqrt(var / self.cfg.snr))


def simulate(volumes: list[np.ndarray], out_dir: str | Path, cfg: SimulationConfig) -> dict:
    """Simulate particle tilt series and write them as Warp would export them.

    Parameters
    ----------
    volumes : list of numpy.ndarray, each shape (D, D, D)
        Ground-truth densities (positive = protein), indexed ``[z, y, x]``; two for ``continuous``.
    out_dir : path-like
        Receives ``particles.star`` (image series, one row per tilt image), ``particles_volumes.star``
        (volume series, see :func:`volume_star_rows`), ``stacks/<tomogram>.mrcs``, ``ground_truth.csv``,
        ``labels.txt`` (discrete) or ``mixing.txt`` (continuous) and ``volumes/vol_NNN.mrc``.
    cfg : SimulationConfig
        ``cfg.stack_dir``, when set, receives the stacks instead of ``out_dir/stacks``; the star names
        them relative to its own folder when they lie below it, else by file name alone (to be found
        with ``--datadir``).

    Returns
    -------
    dict
        Paths written (``star``, ``volume_star``, ``volumes``) and counts.
    """
    out = Path(out_dir)
    d = volumes[0].shape[-1]
    if any(v.shape != (d, d, d) for v in volumes):
        raise ValueError("all volumes must be cubic and of the same size")
    if d % 2:
        raise ValueError(f"box size must be even, got {d}")
    if cfg.continuous and len(volumes) != 2:
        raise ValueError("continuous heterogeneity mixes exactly two volumes")
    if cfg.contrast not in ("light", "dark"):
        raise ValueError("contrast must be 'light' or 'dark'")
    if cfg.n_particles < 1:
        raise ValueError("n_particles must be >= 1")
    sim = _Simulator(volumes, cfg)
    n, n_tilts = cfg.n_particles, len(sim.tilts)
    chunk = max(1, cfg.chunk_images)
    noise_sigma = sim.noise_sigma(chunk)

    vol_dir = out / "volumes"
    for i, v in enumerate(volumes):
        write_mrc(vol_dir / f"vol_{i:03d}.mrc", v, cfg.pixel_size)

    if cfg.layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}")
    writer = _LayoutWriter(sim, out)
    progress = Progress(n * n_tilts, "simulated", "images", log)
    if cfg.particle_series:
        chunk = max(1, chunk // n_tilts) * n_tilts  # whole particles: each has a stack of its own
    try:
        for t in range(sim.n_tomos):
            ti = sim.tomogram(t)
            m = len(ti.particle)
            noise_rng = np.random.default_rng([cfg.seed, t, 2])
            writer.begin(t, ti)
            for c0 in range(0, m, chunk):
                img = sim.signal(ti, slice(c0, c0 + chunk))
                if noise_sigma:
                    img = img + noise_rng.normal(0.0, noise_sigma, img.shape)
                if cfg.premultiply:
                    img = sim.premultiply(img, ti.params.subset(np.arange(c0, min(m, c0 + chunk))))
                writer.images(c0, img.astype(np.float32))
                progress.update(len(img))
            writer.end(t, ti)
    except BaseException:
        writer.abort()
        raise
    main_star = writer.close()

    vol_star = StarWriter(out / VOLUME_STAR_NAME, VOLUME_STAR_COLUMNS)
    try:
        vol_star.append(volume_star_rows(sim))
    except BaseException:
        vol_star.abort()
        raise
    vol_star.close()

    e_rot, e_tilt, e_psi = (x.numpy() for x in matrix_to_euler(sim.rot_p))
    truth = pd.DataFrame({
        "particle": writer.particle_names, "tomogram": [sim.tomo_names[t] for t in sim.tomo_index],
        "label": sim.labels if sim.labels is not None else -1,
        "mixing": sim.mix if sim.mix is not None else np.nan,
        "rot": e_rot, "tilt": e_tilt, "psi": e_psi,
        "x_A": sim.pos_x, "z_A": sim.pos_z, "tomogram_defocus_A": sim.tomo_defocus[sim.tomo_index],
        "n_tilts": n_tilts, "noise_sigma": noise_sigma,
    })
    write_text(out / "ground_truth.csv", truth.to_csv(index=False, float_format="%.6g"))
    if sim.labels is not None:
        write_text(out / "labels.txt", "".join(f"{v}\n" for v in sim.labels))
    else:
        write_text(out / "mixing.txt", "".join(f"{v:.6f}\n" for v in sim.mix))
    return {
        "star": main_star, "volume_star": out / VOLUME_STAR_NAME, "layout": cfg.layout,
        "n_particles": n, "n_images": n * n_tilts, "box": d,
        "pixel_size": cfg.pixel_size, "noise_sigma": noise_sigma,
        "volumes": [vol_dir / f"vol_{i:03d}.mrc" for i in range(len(volumes))],
    }


def _star_rows(sim: _Simulator, t: int, ti: _TiltImages, cfg: SimulationConfig, stack_ref: str) -> pd.DataFrame:
    """The star rows of tomogram ``t``, as text formatted as Warp writes them."""
    m = len(ti.particle)
    rot_e, tilt_e, psi_e = (x.numpy() for x in matrix_to_euler(ti.rot))
    p = ti.params
    return pd.DataFrame({
        "rlnMagnification": "10000.0",
        "rlnDetectorPixelSize": repr(float(cfg.pixel_size)),
        "rlnVoltage": repr(float(cfg.voltage)),
        "rlnSphericalAberration": repr(float(cfg.cs)),
        "rlnAmplitudeContrast": repr(float(cfg.amplitude_contrast)),
        "rlnPhaseShift": repr(float(cfg.phase_shift)),
        "rlnDefocusU": _fmt(p.dfu, 2), "rlnDefocusV": _fmt(p.dfv, 2), "rlnDefocusAngle": _fmt(p.dfang, 3),
        "rlnImageName": [f"{i + 1}@{stack_ref}{sim.tomo_names[t]}.mrcs" for i in range(m)],
        "rlnMicrographName": f"{sim.tomo_names[t]}.tomostar",
        "rlnAngleRot": _fmt(rot_e, 6), "rlnAngleTilt": _fmt(tilt_e, 6), "rlnAnglePsi": _fmt(psi_e, 6),
        "rlnOriginX": _fmt(ti.shifts[:, 0], 6), "rlnOriginY": _fmt(ti.shifts[:, 1], 6),
        "rlnCtfBfactor": _fmt(-4.0 * p.dose, 4),
        "rlnCtfScalefactor": _fmt(p.ctf_scalefactor, 8),
        "rlnGroupName": [sim.pids[q] for q in ti.particle],
    })


def volume_star_rows(sim: _Simulator) -> pd.DataFrame:
    """The volume-series star rows: one per particle, in the particle order of ``particles.star``.

    Parameters
    ----------
    sim : _Simulator

    Returns
    -------
    pandas.DataFrame
        :data:`VOLUME_STAR_COLUMNS` as text. ``_rlnMicrographName`` is the particle's tomogram as in
        ``particles.star``; ``_rlnCoordinateX/Y/Z`` are in pixels of ``pixel_size`` (also written as
        ``_rlnPixelSize`` and ``_rlnDetectorPixelSize``) from the tomogram's corner, its centre at
        ``(width / 2, width / 2, thickness / 2)``, so that ``x``, ``z`` are the positions the defocus of
        each tilt follows; ``_rlnAngleRot/Tilt/Psi`` are RELION's Euler angles of the particle
        orientation ``A_p``: every tilt image's pose is ``Ry(t) A_p``, and the 0-degree image's is ``A_p``.
    """
    cfg = sim.cfg
    centre = np.array([cfg.tomogram_width, cfg.tomogram_width, cfg.tomogram_thickness]) / 2
    coords = (np.stack([sim.pos_x, sim.pos_y, sim.pos_z], 1) + centre) / cfg.pixel_size
    rot_e, tilt_e, psi_e = (x.numpy() for x in matrix_to_euler(sim.rot_p))
    return pd.DataFrame({
        "rlnMicrographName": [f"{sim.tomo_names[t]}.tomostar" for t in sim.tomo_index],
        "rlnCoordinateX": _fmt(coords[:, 0], 3), "rlnCoordinateY": _fmt(coords[:, 1], 3),
        "rlnCoordinateZ": _fmt(coords[:, 2], 3),
        "rlnAngleRot": _fmt(rot_e, 6), "rlnAngleTilt": _fmt(tilt_e, 6), "rlnAnglePsi": _fmt(psi_e, 6),
        "rlnMagnification": "10000.0",
        "rlnDetectorPixelSize": repr(float(cfg.pixel_size)),
        "rlnPixelSize": repr(float(cfg.pixel_size)),
    })


class _LayoutWriter:
    """Writes the simulated images and their star files in the layout of ``sim.cfg.layout``.

    * ``relion3``: ``particles.star`` (one row per image, every column), ``stacks/<tomogram>.mrcs``.
    * ``relion31``: the same images; ``particles.star`` with ``data_optics`` and origins in A.
    * ``relion5``: ``optimisation_set.star`` -> ``particles.star`` (``data_general``, ``data_optics``,
      ``data_particles``: one row per particle, centred coordinates in A, 3D origin) and
      ``tomograms.star`` (``data_global``) -> ``tilt_series/<tomogram>.star`` (``_rlnTomoXTilt/YTilt/ZRot``,
      defocus at the tomogram centre, pre-exposure, frames sorted by tilt angle);
      ``Subtomograms/<tomogram>/<n>_stack2d.mrcs`` (the particle's frames in frame order).
    * ``warptools``: ``particles_optimisation_set.star`` -> ``particles.star`` (coordinates in pixels
      from the tomogram corner) and ``particles_tomograms.star`` with one block ``data_<tomogram>.tomostar``
      per tilt series (``_rlnTomoProjX/Y/Z/W``); ``particleseries/<tomogram>/<tomogram>_<px>A_<id>.mrcs``.

    In the particle-series layouts the hand is written so that the format's own defocus model gives the
    simulated defocus (``-1`` for RELION, ``+1`` for WarpTools, whose depth sign is RELION's opposite).
    """

    def __init__(self, sim: _Simulator, out: Path):
        self.sim, self.cfg, self.out = sim, sim.cfg, out
        cfg = self.cfg
        self.frames = np.argsort(sim.tilts, kind="stable")  # acquisition index of each frame
        self.particle_names: list[str] = []
        self.rows: list[pd.DataFrame] = []
        self.tomo_blocks: list[str] = []
        self.written: list[Path] = []
        self.stack = None
        if not cfg.particle_series:
            stack_dir = Path(cfg.stack_dir) if cfg.stack_dir else out / "stacks"
            self.stack_dir = stack_dir
            try:
                self.stack_ref = stack_dir.resolve().relative_to(out.resolve()).as_posix() + "/"
            except ValueError:
                self.stack_ref = ""
            # RELION 3.1: made with the first rows, which give the optics table
            self.star = StarWriter(out / "particles.star", STAR_COLUMNS) if cfg.layout == "relion3" else None
        else:
            self.star = None
            self.stack_dir = Path(cfg.stack_dir) if cfg.stack_dir else out / ("Subtomograms" if cfg.layout == "relion5" else "particleseries")

    def _name(self, t: int, k: int) -> str:
        tomo = self.sim.tomo_names[t]
        return f"{tomo}/{k + 1}" if self.cfg.particle_series else self.sim.pids[int(self.sim.members(t)[k])]

    def _stack_path(self, t: int, k: int) -> Path:
        tomo = self.sim.tomo_names[t]
        if self.cfg.layout == "relion5":
            return self.stack_dir / tomo / f"{k + 1}_stack2d.mrcs"
        return self.stack_dir / tomo / f"{tomo}_{self.cfg.pixel_size:.2f}A_{k + 1:06d}.mrcs"

    def begin(self, t: int, ti: _TiltImages) -> None:
        self._tomo = t
        self.particle_names += [self._name(t, k) for k in range(len(self.sim.members(t)))]
        if not self.cfg.particle_series:
            self.stack = StackWriter(self.stack_dir / f"{self.sim.tomo_names[t]}.mrcs", len(ti.particle), self.sim.d,
                                     self.cfg.pixel_size)

    def images(self, start: int, img: np.ndarray) -> None:
        if self.stack is not None:
            self.stack.write(start, img)
            return
        nt = len(self.frames)
        for q in range(len(img) // nt):
            k = start // nt + q
            t = self._tomo
            path = self._stack_path(t, k)
            write_mrc(path, img[q * nt:(q + 1) * nt][self.frames], self.cfg.pixel_size)
            self.written.append(path)

    def end(self, t: int, ti: _TiltImages) -> None:
        cfg, sim = self.cfg, self.sim
        if not cfg.particle_series:
            self.stack.close()
            self.stack = None
            rows = _star_rows(sim, t, ti, cfg, self.stack_ref)
            if cfg.layout == "relion31":
                optics, rows = relion31_tables(rows, premultiplied=cfg.premultiply, box=sim.d)
                if self.star is None:
                    self.star = StarWriter(self.out / "particles.star", list(rows.columns), block="particles",
                                           preamble=_block_text("optics", optics))
            self.star.append(rows)
            return
        self.rows.append(self._particle_rows(t))
        if cfg.layout == "relion5":
            path = self.out / "tilt_series" / f"{sim.tomo_names[t]}.star"
            write_text(path, _block_text(sim.tomo_names[t], self._frame_table(t)))
        else:
            self.tomo_blocks.append(_block_text(f"{sim.tomo_names[t]}.tomostar", self._frame_table(t)))

    def _frame_table(self, t: int) -> pd.DataFrame:
        cfg, sim = self.cfg, self.sim
        acq = self.frames
        df_centre = np.full(len(acq), sim.tomo_defocus[t])
        astig, dfang = sim.frame_astig[t][acq], sim.frame_dfang[t][acq]
        table = {"rlnMicrographName": [f"{sim.tomo_names[t]}_{a + 1:03d}.mrc" for a in acq]}
        if cfg.layout == "relion5":
            table.update({"rlnTomoXTilt": _fmt(np.zeros(len(acq)), 6), "rlnTomoYTilt": _fmt(-sim.tilts[acq], 6),
                          "rlnTomoZRot": _fmt(np.full(len(acq), cfg.tilt_axis), 6),
                          "rlnTomoXShiftAngst": _fmt(np.zeros(len(acq)), 6), "rlnTomoYShiftAngst": _fmt(np.zeros(len(acq)), 6)})
        else:
            r = sim.frame_rot.numpy()[acq]
            for i, c in enumerate("XYZ"):
                table[f"rlnTomoProj{c}"] = [f"[{r[j, i, 0]:.9g},{r[j, i, 1]:.9g},{r[j, i, 2]:.9g},0]" for j in range(len(acq))]
            table["rlnTomoProjW"] = "[0,0,0,1]"
        table.update({
            "rlnDefocusU": _fmt(df_centre + astig, 2), "rlnDefocusV": _fmt(df_centre - astig, 2),
            "rlnDefocusAngle": _fmt(dfang, 3), "rlnCtfScalefactor": _fmt(np.cos(np.radians(sim.tilts[acq])), 6),
            "rlnMicrographPreExposure": _fmt(sim.dose[acq], 4),
        })
        if cfg.phase_shift:
            table["rlnPhaseShift"] = _fmt(np.full(len(acq), cfg.phase_shift), 3)
        return pd.DataFrame(table)

    def _particle_rows(self, t: int) -> pd.DataFrame:
        cfg, sim = self.cfg, self.sim
        parts = sim.members(t)
        centre = np.array([cfg.tomogram_width, cfg.tomogram_width, cfg.tomogram_thickness]) / 2
        true = np.stack([sim.pos_x[parts], sim.pos_y[parts], sim.pos_z[parts]], 1)
        listed = true + sim.origin_a[parts]  # RELION: position = coordinate - origin
        e_rot, e_tilt, e_psi = (x.numpy() for x in matrix_to_euler(sim.rot_p[torch.as_tensor(parts)]))
        tomo = sim.tomo_names[t] + ("" if cfg.layout == "relion5" else ".tomostar")
        rows = {"rlnTomoName": tomo}
        if cfg.layout == "relion5":
            rows.update({f"rlnCenteredCoordinate{c}Angst": _fmt(listed[:, i], 4) for i, c in enumerate("XYZ")})
        else:
            rows["rlnTomoParticleId"] = [str(k + 1) for k in range(len(parts))]
            rows.update({f"rlnCoordinate{c}": _fmt((listed[:, i] + centre[i]) / cfg.pixel_size, 4) for i, c in enumerate("XYZ")})
        rows.update({
            "rlnAngleRot": _fmt(e_rot, 6), "rlnAngleTilt": _fmt(e_tilt, 6), "rlnAnglePsi": _fmt(e_psi, 6),
            "rlnTomoParticleName": [f"{sim.tomo_names[t]}/{k + 1}" for k in range(len(parts))], "rlnOpticsGroup": "1",
            "rlnImageName": [self._stack_path(t, k).relative_to(self.out).as_posix() if self._stack_path(t, k).is_relative_to(self.out)
                             else str(self._stack_path(t, k).resolve()) for k in range(len(parts))],
            "rlnOriginXAngst": _fmt(sim.origin_a[parts, 0], 4), "rlnOriginYAngst": _fmt(sim.origin_a[parts, 1], 4),
            "rlnOriginZAngst": _fmt(sim.origin_a[parts, 2], 4),
            "rlnTomoVisibleFrames": "[" + ",".join(["1"] * len(self.frames)) + "]",
        })
        return pd.DataFrame(rows)

    def close(self) -> Path:
        """Finish every star file; returns the one to give the method."""
        cfg, sim, out = self.cfg, self.sim, self.out
        if not cfg.particle_series:
            self.star.close()
            return out / "particles.star"
        relion5 = cfg.layout == "relion5"
        tomos = [sim.tomo_names[t] + ("" if relion5 else ".tomostar") for t in range(sim.n_tomos)]
        size = np.array([cfg.tomogram_width, cfg.tomogram_width, cfg.tomogram_thickness]) / cfg.pixel_size
        glob = {"rlnTomoName": tomos}
        if relion5:
            glob["rlnTomoTiltSeriesStarFile"] = [f"tilt_series/{t}.star" for t in sim.tomo_names]
        else:
            glob["rlnTomoFrameCount"] = str(len(self.frames))
        glob.update({
            "rlnVoltage": repr(float(cfg.voltage)), "rlnSphericalAberration": repr(float(cfg.cs)),
            "rlnAmplitudeContrast": repr(float(cfg.amplitude_contrast)), "rlnTomoHand": "-1.0" if relion5 else "1.0",
            "rlnTomoTiltSeriesPixelSize": repr(float(cfg.pixel_size)),
            "rlnTomoSizeX": _fmt(np.full(sim.n_tomos, size[0]), 3), "rlnTomoSizeY": _fmt(np.full(sim.n_tomos, size[1]), 3),
            "rlnTomoSizeZ": _fmt(np.full(sim.n_tomos, size[2]), 3),
        })
        tomo_text = _block_text("global", pd.DataFrame(glob)) + "".join(self.tomo_blocks)
        name = "tomograms.star" if relion5 else "particles_tomograms.star"
        write_text(out / name, tomo_text)
        optics = pd.DataFrame({
            "rlnOpticsGroup": ["1"], "rlnOpticsGroupName": ["opticsGroup1"], "rlnVoltage": [repr(float(cfg.voltage))],
            "rlnSphericalAberration": [repr(float(cfg.cs))], "rlnAmplitudeContrast": [repr(float(cfg.amplitude_contrast))],
            "rlnTomoTiltSeriesPixelSize": [repr(float(cfg.pixel_size))],
            "rlnCtfDataAreCtfPremultiplied": ["1" if cfg.premultiply else "0"], "rlnImageDimensionality": ["2"],
            "rlnTomoSubtomogramBinning": ["1.0"], "rlnImagePixelSize": [repr(float(cfg.pixel_size))],
            "rlnImageSize": [str(sim.d)],
        })
        text = "\ndata_general\n\n_rlnTomoSubTomosAre2DStacks 1\n\n" + _block_text("optics", optics) + \
            _block_text("particles", pd.concat(self.rows, ignore_index=True))
        write_text(out / "particles.star", text)
        oset = out / ("optimisation_set.star" if relion5 else "particles_optimisation_set.star")
        write_text(oset, f"\ndata_\n\n_rlnTomoParticlesFile particles.star\n_rlnTomoTomogramsFile {name}\n")
        return oset

    def abort(self) -> None:
        """Drop what was half written."""
        if self.stack is not None:
            self.stack.abort()
        if self.star is not None:
            self.star.abort()


def _block_text(name: str, df: pd.DataFrame) -> str:
    """A star loop block as text (values as they are)."""
    head = f"\ndata_{name}\n\nloop_\n" + "".join(f"_{c} #{i + 1}\n" for i, c in enumerate(df.columns))
    return head + df.to_csv(sep="\t", header=False, index=False) + "\n"
