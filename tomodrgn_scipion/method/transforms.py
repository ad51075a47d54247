"""Geometry: RELION ZYZ Euler angles, rotation matrices and Fourier-space shifts.

Conventions (pinned by tests against scipy and real-space projections):

* ``euler_to_matrix(rot, tilt, psi)`` returns RELION's matrix ``A = Rz(psi) Ry(tilt) Rz(rot)``
  built from passive (coordinate-frame) rotations, as RELION's ``Euler_angles2matrix`` does.
* An image is the projection along z of the volume seen through ``A``: a 2D frequency ``k`` of the
  image samples the volume's 3D transform at ``A^T (kx, ky, 0)``; with row vectors, the central slice
  is ``lattice @ A``.
* Volume arrays are indexed ``[z, y, x]`` and images ``[y, x]``; coordinate vectors are ``(x, y, z)``.
* ``_rlnOriginX/Y`` (pixels) is RELION's origin offset: the particle centre sits at ``-origin`` in the
  image, so an image is its centred projection translated by ``-origin``; ``shift_fourier(F, origin)``
  re-centres it.
"""
from __future__ import annotations

import math

import torch

Tensor = torch.Tensor


def _as_tensor(x: Tensor | float | list, dtype: torch.dtype = torch.float64) -> Tensor:
    return x if isinstance(x, Tensor) else torch.as_tensor(x, dtype=dtype)


def euler_to_matrix(rot: Tensor, tilt: Tensor, psi: Tensor) -> Tensor:
    """RELION Euler angles to rotation matrices.

    Parameters
    ----------
    rot, tilt, psi : Tensor, shape (N,) or scalars
        ``_rlnAngleRot``, ``_rlnAngleTilt``, ``_rlnAnglePsi`` in degrees.

    Returns
    -------
    Tensor, float64, shape (N, 3, 3)
        RELION's ``A``; row vectors in the image frame map to the volume frame as ``v @ A``.
    """
    a, b, g = (torch.deg2rad(_as_tensor(t).to(torch.float64)).reshape(-1) for t in (rot, tilt, psi))
    ca, sa, cb, sb, cg, sg = a.cos(), a.sin(), b.cos(), b.sin(), g.cos(), g.sin()
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    rows = [
        torch.stack([cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb], -1),
        torch.stack([-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb], -1),
        torch.stack([sc, ss, cb], -1),
    ]
    return torch.stack(rows, -2)


def matrix_to_euler(A: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Inverse of :func:`euler_to_matrix`.

    Parameters
    ----------
    A : Tensor, shape (N, 3, 3)
        Rotation matrices.

    Returns
    -------
    rot, tilt, psi : Tensor, shape (N,)
        Degrees; tilt in [0, 180], rot and psi in (-180, 180]. At tilt 0 or 180 (gimbal lock)
        psi is set to 0 and rot carries the whole in-plane angle.
    """
    A = _as_tensor(A).reshape(-1, 3, 3)
    cb = A[:, 2, 2].clamp(-1.0, 1.0)
    tilt = torch.acos(cb)
    sb = torch.sqrt(torch.clamp(1.0 - cb * cb, min=0.0))
    regular = sb > 1e-6
    rot = torch.where(regular, torch.atan2(A[:, 2, 1], A[:, 2, 0]), torch.zeros_like(cb))
    psi = torch.where(regular, torch.atan2(A[:, 1, 2], -A[:, 0, 2]), torch.zeros_like(cb))
    # Gimbal lock: A = Rz(psi) Ry(0 or 180) Rz(rot); with psi = 0 the first row gives rot.
    sign = torch.where(cb >= 0, 1.0, -1.0).to(A.dtype)
    locked_rot = torch.atan2(A[:, 0, 1] * sign, A[:, 0, 0] * sign)
    rot = torch.where(regular, rot, locked_rot)
    return torch.rad2deg(rot), torch.rad2deg(tilt), torch.rad2deg(psi)


def rotation_about_y(angle_deg: Tensor | float) -> Tensor:
    """RELION's passive rotation about Y, the stage tilt of an untilted specimen.

    Parameters
    ----------
    angle_deg : Tensor, shape (N,) or scalar
        Stage tilt in degrees.

    Returns
    -------
    Tensor, shape (N, 3, 3)
        ``euler_to_matrix(0, angle, 0)``; composing ``rotation_about_y(t) @ A`` gives the pose of a
        particle with orientation ``A`` in the tomogram, seen in the image tilted by ``t``.
    """
    t = _as_tensor(angle_deg).reshape(-1)
    return euler_to_matrix(torch.zeros_like(t), t, torch.zeros_like(t))


def random_rotations(n: int, generator: torch.Generator) -> Tensor:
    """Rotation matrices drawn uniformly from SO(3) (normalised Gaussian quaternions).

    Returns
    -------
    Tensor, shape (n, 3, 3), float64
    """
    q = torch.randn(n, 4, generator=generator, dtype=torch.float64)
    q = q / q.norm(dim=1, keepdim=True)
    w, x, y, z = q.unbind(1)
    return torch.stack(
        [
            torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            torch.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            torch.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        -2,
    )


def shift_fourier(f: Tensor, shift_px: Tensor) -> Tensor:
    """Translate images in Fourier space.

    Parameters
    ----------
    f : Tensor, complex, shape (N, D, D)
        Centred 2D Fourier transforms (see :mod:`.fft`).
    shift_px : Tensor, shape (N, 2)
        Translation ``(dx, dy)`` in pixels: image content moves by ``+dx`` along x and ``+dy`` along y.

    Returns
    -------
    Tensor, complex, shape (N, D, D)
    """
    d = f.shape[-1]
    k = (torch.arange(d, dtype=torch.float64, device=f.device) - d // 2) / d
    ky, kx = torch.meshgrid(k, k, indexing="ij")
    grid = torch.stack([kx.reshape(-1), ky.reshape(-1)], 1)
    return shift_at(f.reshape(f.shape[0], -1), shift_px, grid).reshape(f.shape)


def shift_at(values: Tensor, shift_px: Tensor, k: Tensor) -> Tensor:
    """Translate images given by their Fourier transform at some frequencies only.

    Parameters
    ----------
    values : Tensor, complex, shape (N, M)
        Transforms at the frequencies ``k``.
    shift_px : Tensor, shape (N, 2)
        Translation ``(dx, dy)`` in pixels, as for :func:`shift_fourier`.
    k : Tensor, shape (M, 2)
        ``(kx, ky)`` in cycles per pixel.

    Returns
    -------
    Tensor, complex, shape (N, M)
        ``values * exp(-2 pi i (dx kx + dy ky))``; the phase is computed in float64 (it reaches tens of
        radians for large shifts).
    """
    s = shift_px.to(device=values.device, dtype=torch.float64)
    phase = (-2.0 * math.pi) * (s @ k.to(device=values.device, dtype=torch.float64).T)
    return values * torch.polar(torch.ones_like(phase), phase).to(values.dtype)
