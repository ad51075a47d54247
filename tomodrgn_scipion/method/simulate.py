"""Warp-style particle tilt series from one or more volumes, with known ground truth.

Each particle gets a uniformly random orientation ``A_p`` and a position in its tomogram. Every tilt
``t`` of the tilt scheme images it with pose ``A = Ry(t) A_p`` (the stage tilt composed with the
particle orientation; tilt axis Y, as Warp's), a defocus that follows the particle's height in the
tilted specimen, the CTF, physical dose attenuation ``exp(-N / 2Ne(k))``, ``cos(t)`` attenuation and
a random sub-pixel origin shift; Gaussian noise is added at a target SNR (signal variance over noise
variance, measured over the whole box of the noise-free images of the first chunk).

Heterogeneity is either discrete (each particle drawn from one of the volumes, balanced labels) or
continuous (two volumes mixed with a coefficient ``t`` in [0, 1] per particle).

Memory is bounded: images are computed and written in chunks, and the star file is streamed.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import fft
from .imaging import ImagingParams
from .outputs import write_text
from .projection import Projector, SliceGeometry
from .stacks import StackWriter, write_mrc
from .star import StarWriter
from .transforms import matrix_to_euler, random_rotations, rotation_about_y, shift_fourier

log = logging.getLogger(__name__)

STAR_COLUMNS = [
    "rlnMagnification", "rlnDetectorPixelSize", "rlnVoltage", "rlnSphericalAberration",
    "rlnAmplitudeContrast", "rlnPhaseShift", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle",
    "rlnImageName", "rlnMicrographName", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi",
    "rlnOriginX", "rlnOriginY", "rlnCtfBfactor", "rlnCtfScalefactor", "rlnGroupName",
]


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


def _fmt(x: np.ndarray, digits: int) -> list[str]:
    return [f"{v:.{digits}f}" for v in x]


def simulate(volumes: list[np.ndarray], out_dir: str | Path, cfg: SimulationConfig) -> dict:
    """Simulate particle tilt series and write them as Warp would export them.

    Parameters
    ----------
    volumes : list of numpy.ndarray, each shape (D, D, D)
        Ground-truth densities (positive = protein), indexed ``[z, y, x]``; two for ``continuous``.
    out_dir : path-like
        Receives ``particles.star``, ``stacks/<tomogram>.mrcs``, ``ground_truth.csv``, ``labels.txt``
        (discrete) or ``mixing.txt`` (continuous) and ``volumes/vol_NNN.mrc``.
    cfg : SimulationConfig

    Returns
    -------
    dict
        Paths written and counts.
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
    tilts = tilt_scheme(cfg.tilt_max, cfg.tilt_step, cfg.tilt_scheme)
    n_tilts = len(tilts)
    dose = (np.arange(n_tilts) + 1) * cfg.dose_per_tilt
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)

    geom = SliceGeometry(d, cfg.pad)
    projectors = [Projector(torch.from_numpy(np.asarray(v, dtype=np.float64)), geom) for v in volumes]
    freqs_a = geom.freqs2d / cfg.pixel_size

    # Per-particle ground truth.
    n = cfg.n_particles
    if cfg.continuous:
        mix = rng.uniform(0.0, 1.0, n)
        labels = None
    else:
        labels = rng.permutation(np.arange(n) % len(volumes))
        mix = None
    rot_p = random_rotations(n, gen)
    pos_x = rng.uniform(-cfg.tomogram_width / 2, cfg.tomogram_width / 2, n)
    pos_z = rng.uniform(-cfg.tomogram_thickness / 2, cfg.tomogram_thickness / 2, n)
    tomo_index = np.arange(n) // cfg.particles_per_tomogram
    n_tomos = int(tomo_index.max()) + 1
    tomo_defocus = rng.uniform(cfg.defocus_min, cfg.defocus_max, n_tomos)
    tomo_names = [f"tomo_{t:03d}" for t in range(n_tomos)]
    pids = [f"{tomo_index[p]:03d}_{p - tomo_index[p] * cfg.particles_per_tomogram:06d}" for p in range(n)]

    vol_dir = out / "volumes"
    for i, v in enumerate(volumes):
        write_mrc(vol_dir / f"vol_{i:03d}.mrc", v, cfg.pixel_size)

    star = StarWriter(out / "particles.star", STAR_COLUMNS)
    noise_sigma: float | None = None
    ppc = max(1, cfg.chunk_images // n_tilts)
    t0 = time.time()
    truth_rows = []
    try:
        for t in range(n_tomos):
            members = np.flatnonzero(tomo_index == t)
            writer = StackWriter(out / "stacks" / f"{tomo_names[t]}.mrcs", len(members) * n_tilts, d, cfg.pixel_size)
            try:
                for c0 in range(0, len(members), ppc):
                    parts = members[c0:c0 + ppc]
                    m = len(parts) * n_tilts
                    tilt = np.tile(tilts, len(parts))
                    pidx = np.repeat(parts, n_tilts)
                    rot = rotation_about_y(torch.as_tensor(tilt)) @ rot_p[torch.as_tensor(pidx)]
                    rad = np.radians(tilt)
                    height = np.sin(rad) * pos_x[pidx] + np.cos(rad) * pos_z[pidx]
                    df_mean = tomo_defocus[t] - height
                    astig = rng.uniform(-cfg.astigmatism / 2, cfg.astigmatism / 2, m) if cfg.astigmatism else np.zeros(m)
                    params = ImagingParams(
                        dfu=df_mean + astig, dfv=df_mean - astig, dfang=rng.uniform(-180, 180, m) if cfg.astigmatism else np.zeros(m),
                        voltage=np.full(m, cfg.voltage), cs=np.full(m, cfg.cs), w=np.full(m, cfg.amplitude_contrast),
                        phase_shift=np.full(m, cfg.phase_shift), dose=np.tile(dose, len(parts)),
                        ctf_scalefactor=np.cos(rad),
                    )
                    shifts = rng.normal(0.0, cfg.shift_std, (m, 2)) if cfg.shift_std > 0 else np.zeros((m, 2))
                    # Project: linear in the volume, so a mixture of volumes is the mixture of projections.
                    proj = torch.zeros(m, geom.coords.shape[0], dtype=torch.complex128)
                    for k, pr in enumerate(projectors):
                        if cfg.continuous:
                            wk = torch.as_tensor(mix[pidx] if k == 1 else 1.0 - mix[pidx])
                        else:
                            wk = torch.as_tensor((labels[pidx] == k).astype(np.float64))
                        sel = torch.nonzero(wk != 0).squeeze(1)
                        if len(sel):
                            proj[sel] += wk[sel, None] * pr.project(rot[sel])
                    f = geom.to_grid(proj * params.transfer(freqs_a))
                    # The particle centre sits at -origin in the image (RELION's convention).
                    f = shift_fourier(f, -torch.as_tensor(shifts))
                    img = fft.ifft2_center(f).real.numpy()
                    if cfg.contrast == "light":
                        img = -img
                    if noise_sigma is None:
                        noise_sigma = float(np.sqrt(img.var() / cfg.snr)) if cfg.snr > 0 else 0.0
                    img = img + rng.normal(0.0, noise_sigma, img.shape) if noise_sigma else img
                    start = (c0) * n_tilts
                    writer.write(start, img.astype(np.float32))
                    rot_e, tilt_e, psi_e = (x.numpy() for x in matrix_to_euler(rot))
                    star.append(pd.DataFrame({
                        "rlnMagnification": "10000.0",
                        "rlnDetectorPixelSize": repr(float(cfg.pixel_size)),
                        "rlnVoltage": repr(float(cfg.voltage)),
                        "rlnSphericalAberration": repr(float(cfg.cs)),
                        "rlnAmplitudeContrast": repr(float(cfg.amplitude_contrast)),
                        "rlnPhaseShift": repr(float(cfg.phase_shift)),
                        "rlnDefocusU": _fmt(params.dfu, 2), "rlnDefocusV": _fmt(params.dfv, 2),
                        "rlnDefocusAngle": _fmt(params.dfang, 3),
                        "rlnImageName": [f"{start + i + 1}@stacks/{tomo_names[t]}.mrcs" for i in range(m)],
                        "rlnMicrographName": f"{tomo_names[t]}.tomostar",
                        "rlnAngleRot": _fmt(rot_e, 6), "rlnAngleTilt": _fmt(tilt_e, 6), "rlnAnglePsi": _fmt(psi_e, 6),
                        "rlnOriginX": _fmt(shifts[:, 0], 6), "rlnOriginY": _fmt(shifts[:, 1], 6),
                        "rlnCtfBfactor": _fmt(-4.0 * params.dose, 4),
                        "rlnCtfScalefactor": _fmt(params.ctf_scalefactor, 8),
                        "rlnGroupName": [pids[p] for p in pidx],
                    }))
                    done = (members[0] + c0 + len(parts)) * n_tilts
                    rate = done / max(time.time() - t0, 1e-9)
                    log.info("simulated %d/%d images (%.0f images/s, ETA %.0f s)", done, n * n_tilts, rate,
                             (n * n_tilts - done) / rate)
            except BaseException:
                writer.abort()
                raise
            writer.close()
    except BaseException:
        star.abort()
        raise
    star.close()

    e_rot, e_tilt, e_psi = (x.numpy() for x in matrix_to_euler(rot_p))
    truth = pd.DataFrame({
        "particle": pids, "tomogram": [tomo_names[t] for t in tomo_index],
        "label": labels if labels is not None else -1,
        "mixing": mix if mix is not None else np.nan,
        "rot": e_rot, "tilt": e_tilt, "psi": e_psi,
        "x_A": pos_x, "z_A": pos_z, "tomogram_defocus_A": tomo_defocus[tomo_index],
        "n_tilts": n_tilts, "noise_sigma": noise_sigma,
    })
    write_text(out / "ground_truth.csv", truth.to_csv(index=False, float_format="%.6g"))
    if labels is not None:
        write_text(out / "labels.txt", "".join(f"{v}\n" for v in labels))
    else:
        write_text(out / "mixing.txt", "".join(f"{v:.6f}\n" for v in mix))
    return {
        "star": out / "particles.star", "n_particles": n, "n_images": n * n_tilts, "box": d,
        "pixel_size": cfg.pixel_size, "noise_sigma": noise_sigma, "volumes": [vol_dir / f"vol_{i:03d}.mrc" for i in range(len(volumes))],
    }
