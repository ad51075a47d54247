"""Central-slice projection and back-projection in Fourier space.

The 3D transform lives on a grid oversampled by ``pad`` (the volume is zero-padded to
``S = pad * D`` in real space), which is sampled or filled by trilinear interpolation; reconstructions
correct the resulting ``sinc^2`` apodization in real space. Images stay D x D: a tilt image's 2D DFT at
frequency ``k`` is the volume's 3D transform at ``k @ A`` (see :mod:`.transforms`), exactly the DFT of
the projection, as a direct DFT sum over the voxels gives it. Only frequencies inside the Nyquist
circle are used.
"""
from __future__ import annotations

import torch

from . import fft, interp
from .lattice import Lattice

Tensor = torch.Tensor


class SliceGeometry:
    """The 2D Fourier grid of a D x D image inside the Nyquist circle, and its central slices in 3D.

    Parameters
    ----------
    d : int
        Box size D of the images and volume.
    pad : int
        Oversampling factor of the 3D Fourier grid, ``S = pad * D`` wide.
    device : torch.device or str

    Attributes
    ----------
    size : int
        S.
    mask : Tensor, bool, shape (D*D,)
        Frequencies used (``|k| < 0.5`` cycles per pixel).
    coords : Tensor, float64, shape (P, 3)
        ``(kx, ky, 0)`` of the used frequencies, cycles per pixel.
    freqs2d : Tensor, float64, shape (P, 2)
        Their ``(kx, ky)``.
    half : Tensor, int64, shape (H,)
        Positions (in 0..P-1) of one frequency of each ``{k, -k}`` pair, and of ``k = 0``.
    half_weight : Tensor, float32, shape (H,)
        1, and 1/2 at ``k = 0`` (for insertion).
    mirror : Tensor, int64, shape (P,)
        For every used frequency, the position of ``-k``. Real images and volumes are Hermitian, so
        the values on ``half`` determine all others: this halves the work of slicing and inserting.
    """

    def __init__(self, d: int, pad: int = 2, device: torch.device | str = "cpu"):
        if pad < 1:
            raise ValueError(f"pad must be >= 1, got {pad}")
        self.d, self.pad, self.size = d, pad, d * pad
        self.device = torch.device(device)
        lat = Lattice(d, device=device, dtype=torch.float64)
        self.mask = lat.circular_mask(0.5)
        self.coords = lat.coords[self.mask]
        self.freqs2d = lat.freqs2d[self.mask]
        # The inscribed disc is closed under k -> -k, so every used frequency has its mirror in it.
        grid_pos = torch.full((d * d,), -1, dtype=torch.int64, device=self.mask.device)
        grid_pos[self.mask] = torch.arange(int(self.mask.sum()), device=self.mask.device)
        mirrored = fft.mirror(grid_pos.reshape(d, d), 2).reshape(-1)
        self.mirror = mirrored[self.mask]
        kx, ky = self.freqs2d[:, 0], self.freqs2d[:, 1]
        self.half = torch.nonzero((kx > 0) | ((kx == 0) & (ky >= 0))).squeeze(1)
        # k = 0 is its own mirror: inserted with weight 1/2, it counts once after Hermitian completion.
        self.half_weight = torch.where((kx[self.half] == 0) & (ky[self.half] == 0), 0.5, 1.0).to(torch.float32)

    def expand(self, half_values: Tensor) -> Tensor:
        """Values on all used frequencies from those on ``half`` (Hermitian symmetry).

        Parameters
        ----------
        half_values : Tensor, complex, shape (N, H)

        Returns
        -------
        Tensor, complex, shape (N, P)
        """
        out = torch.empty(half_values.shape[0], self.coords.shape[0], dtype=half_values.dtype, device=half_values.device)
        out[:, self.half] = half_values
        out[:, self.mirror[self.half]] = half_values.conj()
        return out

    def points(self, rot: Tensor, half: bool = False) -> Tensor:
        """Voxel coordinates of the central slices.

        Parameters
        ----------
        rot : Tensor, shape (N, 3, 3)
            RELION matrices ``A`` of the images.
        half : bool
            Only the frequencies of ``half``.

        Returns
        -------
        Tensor, float32, shape (N, P or H, 3)
            ``(x, y, z)`` in voxel units of the S^3 grid.
        """
        coords = self.coords[self.half] if half else self.coords
        k3 = coords.unsqueeze(0) @ rot.to(self.device, torch.float64)
        # float32 locates a sample to ~1e-5 voxel on any practical grid and halves the memory traffic
        return (k3 * self.size + self.size // 2).to(torch.float32)

    def to_grid(self, values: Tensor) -> Tensor:
        """Place values on the used frequencies into full D x D grids (zeros elsewhere).

        Parameters
        ----------
        values : Tensor, shape (N, P)

        Returns
        -------
        Tensor, shape (N, D, D)
        """
        out = torch.zeros(values.shape[0], self.d * self.d, dtype=values.dtype, device=values.device)
        out[:, self.mask] = values
        return out.reshape(-1, self.d, self.d)

    def from_grid(self, grid: Tensor) -> Tensor:
        """Values of full D x D grids (N, D, D) at the used frequencies, shape (N, P)."""
        return grid.reshape(grid.shape[0], -1)[:, self.mask]


class Projector:
    """Fourier-space projector of one volume.

    Parameters
    ----------
    volume : Tensor, shape (D, D, D)
        Real-space density indexed ``[z, y, x]``.
    geometry : SliceGeometry
    dtype : torch.dtype
        Complex dtype of the stored transform (complex64 halves the memory of ``(pad D)^3`` values).
    """

    def __init__(self, volume: Tensor, geometry: SliceGeometry, dtype: torch.dtype = torch.complex64):
        g = geometry
        self.geometry = g
        # No pre-division by the trilinear apodization: it is exact only on average over sub-voxel
        # positions and biases every sample that falls on a grid point (the zero frequency always
        # does) by up to a few %. Oversampling by 3 keeps projections within 1e-3 of a DFT sum.
        v = volume.to(g.device, torch.float64)
        self.ft = fft.fft3_center(fft.pad_center(v, g.size, 3)).to(dtype)

    def project(self, rot: Tensor) -> Tensor:
        """Fourier transforms of the padded projections.

        Parameters
        ----------
        rot : Tensor, shape (N, 3, 3)

        Returns
        -------
        Tensor, complex, shape (N, P)
            Values at ``geometry.coords``; the D x D projection image is
            ``fft.ifft2_center(geometry.to_grid(values)).real``.
        """
        g = self.geometry
        pts = g.points(rot, half=True)
        n, h, _ = pts.shape
        idx, w = interp.trilinear_stencil(pts.reshape(-1, 3), g.size)
        return g.expand(interp.gather(self.ft, idx, w).reshape(n, h))


class BackProjector:
    """Accumulates ``sum h F`` and ``sum h^2`` over images on the padded 3D Fourier grid.

    Only one frequency of each ``{k, -k}`` pair of an image is inserted (the zero frequency with
    weight 1/2); :meth:`accumulated` adds the mirror image of the grids, which is what inserting the
    other half would have added, since the images are real.

    Parameters
    ----------
    geometry : SliceGeometry
    dtype : torch.dtype
        Real dtype of the accumulators (float64 by default).
    """

    def __init__(self, geometry: SliceGeometry, dtype: torch.dtype = torch.float64):
        g = geometry
        self.geometry = g
        cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        self.num = torch.zeros((g.size,) * 3, dtype=cdtype, device=g.device)
        self.den = torch.zeros((g.size,) * 3, dtype=dtype, device=g.device)
        self.count = 0

    def insert(self, values: Tensor, transfer: Tensor, rot: Tensor) -> None:
        """Add images, given on the ``geometry.half`` frequencies only (the rest follow by symmetry).

        Parameters
        ----------
        values : Tensor, complex, shape (N, H)
            Image transforms at ``geometry.coords[geometry.half]``, already multiplied by their
            transfer ``h``.
        transfer : Tensor, real, shape (N, H)
            ``h``: CTF times any dose and tilt attenuation, at the same frequencies.
        rot : Tensor, shape (N, 3, 3)
        """
        g = self.geometry
        idx, w = interp.trilinear_stencil(g.points(rot, half=True).reshape(-1, 3), g.size)
        w = (w.reshape(values.shape[0], -1, 8) * g.half_weight[None, :, None]).reshape(-1, 8)
        interp.scatter(self.num, idx, w, values.reshape(-1))
        interp.scatter(self.den, idx, w, (transfer ** 2).reshape(-1))
        self.count += values.shape[0]

    def __iadd__(self, other: "BackProjector") -> "BackProjector":
        self.num += other.num
        self.den += other.den
        self.count += other.count
        return self

    def accumulated(self) -> tuple[Tensor, Tensor]:
        """``(sum h F, sum h^2)`` over whole images, shape (S, S, S) each (Hermitian completion)."""
        return self.num + fft.mirror(self.num, 3).conj(), self.den + fft.mirror(self.den, 3)

    def reconstruct(self, reg: Tensor | float) -> Tensor:
        """Wiener-style reconstruction ``num / (den + reg)``, back in real space.

        Parameters
        ----------
        reg : Tensor, shape (S, S, S), or float
            Regularisation added to the denominator (noise-to-signal power times ``den`` scale).

        Returns
        -------
        Tensor, float64, shape (D, D, D)
        """
        g = self.geometry
        num, den = self.accumulated()
        den = den + reg
        ft = torch.where(den > 0, num / den.clamp(min=1e-30), torch.zeros_like(num))
        vol = fft.ifft3_center(ft).real
        vol = fft.crop_center(vol, g.d, 3)
        return vol / interp.trilinear_apodization(g.d, g.size).to(vol.device)
