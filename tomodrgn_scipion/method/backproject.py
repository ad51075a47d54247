"""Homogeneous reconstruction by Fourier-space back-projection with Wiener-style CTF correction.

Each image's transform ``F_i`` (re-centred by its origin shift) is inserted on its central slice as
``h_i F_i`` together with ``h_i^2``, where ``h_i`` is its CTF, optionally times dose and tilt
attenuation (a CTF-premultiplied image, which already is ``CTF F``, goes in as it is; see
:meth:`.imaging.ImagingParams.insertion`). The map is ``sum h F / (sum h^2 + lambda(k))`` with the noise-to-signal ratio
``lambda`` taken per shell from the half-map FSC (as RELION derives tau^2), refined twice. Half maps
split particles (never tilts of one particle) by alternating particle order.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from . import fft, fsc as fsc_mod
from .dataset import TiltSeriesData
from .lattice import radial_shells
from .progress import Progress
from .projection import BackProjector, SliceGeometry
from .transforms import shift_at

log = logging.getLogger(__name__)
Tensor = torch.Tensor


@dataclass
class Reconstruction:
    """Result of :func:`backproject`.

    Attributes
    ----------
    full, half1, half2, filtered : numpy.ndarray, float32, shape (D, D, D)
    fsc : numpy.ndarray, shape (D // 2 + 1,)
        Half-map FSC per shell.
    freq_0143 : float
        Frequency (1/A) where the FSC falls below 0.143.
    resolution_0143 : float
        Its inverse, A.
    pixel_size : float
    n_particles, n_images : int
    """

    full: np.ndarray
    half1: np.ndarray
    half2: np.ndarray
    filtered: np.ndarray
    fsc: np.ndarray
    freq_0143: float
    resolution_0143: float
    pixel_size: float
    n_particles: int
    n_images: int


def insert_images(data: TiltSeriesData, rows: np.ndarray, bp: BackProjector, dose_weight: bool,
                  tilt_weight: bool, dose_mask: bool) -> None:
    """Back-project the given tilt images into ``bp``."""
    g = bp.geometry
    img = data.real_images(rows).to(g.device, torch.float64)
    # Real images: one frequency of each {k, -k} pair carries all the information.
    values = shift_at(g.from_grid(fft.fft2_center(img))[:, g.half], data.shifts(rows), g.coords[g.half][:, :2])
    factor, h = data.imaging.subset(rows).insertion(g.freqs2d[g.half] / data.pixel_size, dose_weight, tilt_weight, dose_mask)
    bp.insert(values * factor, h, data.rotations(rows))


def split_halves(data: TiltSeriesData, particles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the two half sets: alternate particles, each with all of its tilt images.

    Parameters
    ----------
    data : TiltSeriesData
    particles : numpy.ndarray of int, shape (P,)
        Particle numbers in use.

    Returns
    -------
    rows1, rows2 : numpy.ndarray of int
        Star rows of particles ``particles[0::2]`` and ``particles[1::2]``.
    """
    rows = data.star.rows_of_particle
    return tuple(np.concatenate([rows[p] for p in particles[h::2]]) for h in (0, 1))


def padded_shells(g: SliceGeometry) -> Tensor:
    """Shell of the unpadded box (``round(|k| D)``) of every voxel of the padded grid, shape (S, S, S)."""
    return torch.div(radial_shells(g.size, 3, g.device) + g.pad // 2, g.pad, rounding_mode="floor")


def wiener_reg(bp: BackProjector, ssnr: Tensor, shells: Tensor) -> Tensor:
    """Per-voxel regulariser ``<sum h^2>_shell / SSNR(shell)`` on the padded grid.

    Parameters
    ----------
    bp : BackProjector
    ssnr : Tensor, shape (D // 2 + 1,)
        Spectral SNR expected of the map ``bp`` makes, per shell of the unpadded box.
    shells : Tensor, int64, shape (S, S, S)
        From :func:`padded_shells`.
    """
    n = bp.geometry.d // 2 + 1
    den = bp.accumulated()[1]
    per_shell = fsc_mod.shell_mean(den, shells, n) / ssnr.clamp(min=1e-6)
    # Beyond Nyquist nothing was measured: a huge regulariser zeroes those voxels.
    reg = torch.full_like(den, float(per_shell.max()) * 1e6 + 1.0)
    inside = shells < n
    reg[inside] = per_shell[shells[inside]]
    return reg


def backproject(data: TiltSeriesData, particles: np.ndarray | None = None, pad: int = 2,
                dose_weight: bool = False, tilt_weight: bool = False, dose_mask: bool = False,
                batch_images: int = 256, device: str = "cpu", iterations: int = 2) -> Reconstruction:
    """Reconstruct half maps, a full map and a filtered map from particle tilt series.

    Parameters
    ----------
    data : TiltSeriesData
    particles : numpy.ndarray of int, optional
        Particle numbers (order of first appearance) to use; all by default.
    pad : int
        Fourier oversampling.
    dose_weight, tilt_weight, dose_mask : bool
        Include dose attenuation / cos(tilt) in the transfer, or drop over-exposed frequencies.
    batch_images : int
        Images back-projected at once (bounds memory).
    device : str
    iterations : int
        Rounds of FSC-based refinement of the Wiener regulariser.

    Returns
    -------
    Reconstruction
    """
    if particles is None:
        particles = np.arange(data.n_particles)
    if len(particles) < 2:
        raise ValueError("at least two particles are needed for half maps")
    g = SliceGeometry(data.box, pad, device)
    halves = [BackProjector(g), BackProjector(g)]
    rows_per_half = split_halves(data, particles)
    n_images = sum(len(r) for r in rows_per_half)
    progress = Progress(n_images, "back-projected", "images", log)
    for h, rows in enumerate(rows_per_half):
        for start in range(0, len(rows), batch_images):
            chunk = rows[start:start + batch_images]
            insert_images(data, chunk, halves[h], dose_weight, tilt_weight, dose_mask)
            progress.update(len(chunk))

    shells = padded_shells(g)
    # Start from SNR 1 in every shell, then take the SSNR from the half-map FSC.
    ssnr_half = torch.ones(data.box // 2 + 1, dtype=torch.float64, device=g.device)
    for _ in range(iterations + 1):
        maps = [bp.reconstruct(wiener_reg(bp, ssnr_half, shells)) for bp in halves]
        curve = fsc_mod.fsc(maps[0], maps[1])
        c = curve.clamp(1e-3, 0.999)
        ssnr_half = c / (1 - c)
    full_bp = BackProjector(g)
    full_bp += halves[0]
    full_bp += halves[1]
    # The full map averages both halves: twice their SSNR.
    full = full_bp.reconstruct(wiener_reg(full_bp, 2 * ssnr_half, shells))
    curve_np = curve.cpu().numpy()
    freq, res = fsc_mod.resolution_at(curve_np, data.box, data.pixel_size)
    filtered = fsc_mod.lowpass(full, freq, data.pixel_size)
    f32 = lambda t: t.cpu().numpy().astype(np.float32)  # noqa: E731
    return Reconstruction(f32(full), f32(maps[0]), f32(maps[1]), f32(filtered), curve_np, freq, res,
                          data.pixel_size, len(particles), n_images)
