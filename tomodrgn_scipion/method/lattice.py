"""Sampling grids in real and Fourier space, with their masks.

Frequencies follow :mod:`.fft`: index ``i`` of a size-D axis holds ``(i - D // 2) / D`` cycles per
pixel; divide by the pixel size (A) for 1/A.
"""
from __future__ import annotations

import torch

from . import dose as dose_mod

Tensor = torch.Tensor


def freqs_1d(d: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Tensor:
    """Centred frequencies of a size-d axis, cycles per pixel, shape (d,)."""
    return (torch.arange(d, device=device, dtype=dtype) - d // 2) / d


class Lattice:
    """The 2D Fourier grid of a D x D image, embedded in 3D as the central (z = 0) plane.

    Parameters
    ----------
    d : int
        Box size in pixels.
    device, dtype
        Where and how the coordinates are stored.

    Attributes
    ----------
    coords : Tensor, shape (D*D, 3)
        ``(kx, ky, 0)`` in cycles per pixel, row-major over the image ``[y, x]``.
    freqs2d : Tensor, shape (D*D, 2)
        ``(kx, ky)`` in cycles per pixel.
    radius : Tensor, shape (D*D,)
        ``|k|`` in cycles per pixel.
    """

    def __init__(self, d: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        self.d = d
        k = freqs_1d(d, device, dtype)
        ky, kx = torch.meshgrid(k, k, indexing="ij")
        self.freqs2d = torch.stack([kx.reshape(-1), ky.reshape(-1)], 1)
        self.coords = torch.cat([self.freqs2d, torch.zeros_like(self.freqs2d[:, :1])], 1)
        self.radius = self.freqs2d.norm(dim=1)

    def circular_mask(self, radius: float | None = None) -> Tensor:
        """Boolean mask, shape (D*D,), of frequencies with ``|k| < radius`` (cycles per pixel).

        The default radius 0.5 (Nyquist) keeps the inscribed disc, which is closed under k -> -k.
        """
        return self.radius < (0.5 if radius is None else radius)

    def dose_mask(self, dose_e_per_a2: Tensor, pixel_size_a: float, voltage_kv: Tensor | float) -> Tensor:
        """Frequencies still worth using after a cumulative dose (Grant & Grigorieff 2015).

        Parameters
        ----------
        dose_e_per_a2 : Tensor, shape (N,)
            Cumulative dose of each tilt image, e/A^2.
        pixel_size_a : float
            A per pixel.
        voltage_kv : Tensor, shape (N,), or float
            Acceleration voltage, kV.

        Returns
        -------
        Tensor, bool, shape (N, D*D)
            True where the dose is within the optimal exposure 2.51284 Ne(k).
        """
        return dose_mod.optimal_exposure_mask(self.radius / pixel_size_a, dose_e_per_a2, voltage_kv)


def soft_circular_window(d: int, in_rad: float = 0.85, out_rad: float = 0.99,
                         device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Tensor:
    """Real-space circular window with a raised-cosine edge.

    Parameters
    ----------
    d : int
        Box size in pixels.
    in_rad, out_rad : float
        Radii, as fractions of the half box ``D / 2``, where the window starts to fall (1 inside) and
        where it reaches 0.

    Returns
    -------
    Tensor, shape (D, D)
        1 inside ``in_rad``, 0 beyond ``out_rad``, ``0.5 * (1 + cos(pi * t))`` between, with ``t`` the
        fraction of the way from ``in_rad`` to ``out_rad``.
    """
    if not 0 <= in_rad < out_rad:
        raise ValueError(f"window radii must satisfy 0 <= in_rad < out_rad, got {in_rad}, {out_rad}")
    x = (torch.arange(d, device=device, dtype=torch.float64) - d // 2) / (d / 2)
    yy, xx = torch.meshgrid(x, x, indexing="ij")
    r = torch.sqrt(xx * xx + yy * yy)
    t = ((r - in_rad) / (out_rad - in_rad)).clamp(0.0, 1.0)
    return (0.5 * (1.0 + torch.cos(torch.pi * t))).to(dtype)


def radial_shells(d: int, ndim: int, device: torch.device | str = "cpu") -> Tensor:
    """Integer shell index ``round(|k| * D)`` of every sample of a centred D^ndim Fourier grid.

    Returns
    -------
    Tensor, int64, shape (D,) * ndim
        Shell 0 is the zero frequency; shell ``D // 2`` is Nyquist.
    """
    k = torch.arange(d, device=device, dtype=torch.float64) - d // 2
    grids = torch.meshgrid(*([k] * ndim), indexing="ij")
    r = torch.sqrt(sum(g * g for g in grids))
    return torch.round(r).to(torch.int64)
