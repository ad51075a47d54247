"""Trilinear interpolation on 3D grids, as a gather (slice extraction) and its adjoint scatter
(back-projection). Both share one weight computation, so projection and back-projection are exact
adjoints of each other.

Grids are indexed ``[z, y, x]``; points are given as ``(x, y, z)`` in voxel units of that grid.
"""
from __future__ import annotations

import torch

Tensor = torch.Tensor


def trilinear_stencil(points: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Flat indices and weights of the 8 voxels around each point.

    The grid holds a discrete Fourier transform, which is periodic: a neighbour past the last index
    wraps to index 0 (the Nyquist plane). This keeps interpolation at ``-k`` the exact mirror of
    interpolation at ``k``, so real volumes give Hermitian slices.

    Parameters
    ----------
    points : Tensor, shape (P, 3)
        ``(x, y, z)`` in voxel units, within ``[0, size)``.
    size : int
        Cubic grid size.

    Returns
    -------
    idx : Tensor, int64, shape (P, 8)
        Flat indices into the ``size**3`` grid.
    w : Tensor, shape (P, 8)
        Trilinear weights, dtype of ``points``.
    """
    p0 = torch.floor(points)
    frac = points - p0
    p0 = p0.to(torch.int64)
    idx_list, w_list = [], []
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                ix, iy, iz = (p0[:, 0] + dx) % size, (p0[:, 1] + dy) % size, (p0[:, 2] + dz) % size
                wx = frac[:, 0] if dx else 1 - frac[:, 0]
                wy = frac[:, 1] if dy else 1 - frac[:, 1]
                wz = frac[:, 2] if dz else 1 - frac[:, 2]
                idx_list.append((iz * size + iy) * size + ix)
                w_list.append(wx * wy * wz)
    return torch.stack(idx_list, 1), torch.stack(w_list, 1)


def gather(grid: Tensor, idx: Tensor, w: Tensor) -> Tensor:
    """Interpolate a grid at stencil points.

    Parameters
    ----------
    grid : Tensor, shape (S, S, S), real or complex
    idx, w : Tensor, shape (P, 8)
        From :func:`trilinear_stencil`.

    Returns
    -------
    Tensor, shape (P,)
    """
    vals = grid.reshape(-1)[idx]
    return (vals * w.to(vals.real.dtype)).sum(1)


def scatter(grid: Tensor, idx: Tensor, w: Tensor, values: Tensor) -> None:
    """Add ``values`` into ``grid`` at stencil points, in place (adjoint of :func:`gather`).

    Parameters
    ----------
    grid : Tensor, shape (S, S, S), real or complex
    idx, w : Tensor, shape (P, 8)
    values : Tensor, shape (P,)
    """
    contrib = values.unsqueeze(1).to(grid.dtype) * w.to(grid.real.dtype)
    grid.view(-1).index_add_(0, idx.reshape(-1), contrib.reshape(-1))


def trilinear_apodization(d: int, size: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """Real-space attenuation caused by trilinear interpolation of a ``size``-sampled transform.

    Linear interpolation in Fourier space multiplies the real-space object by ``sinc^2(x / size)``
    along each axis; this is that factor on the central ``d^3`` voxels, to divide out.

    Returns
    -------
    Tensor, shape (d, d, d)
    """
    x = (torch.arange(d, dtype=torch.float64) - d // 2) / size
    s = torch.sinc(x) ** 2
    return (s[:, None, None] * s[None, :, None] * s[None, None, :]).to(dtype)
