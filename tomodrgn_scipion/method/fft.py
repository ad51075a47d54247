"""Centred Fourier and Hartley transforms in 2D and 3D.

Convention: the real-space origin and the zero frequency both sit at index ``D // 2`` of every
axis, so an array of size D holds frequencies ``(i - D // 2) / D`` cycles per pixel. Forward
transforms are unnormalised, inverses carry ``1 / N`` (numpy's default), so ``ifft(fft(x)) == x``.
The Hartley transform is ``H = Re(F) - Im(F)`` with ``F`` the centred Fourier transform; it is real,
and its inverse is itself divided by ``N``.
"""
from __future__ import annotations

import torch

Tensor = torch.Tensor


def _axes(ndim: int) -> tuple[int, ...]:
    return tuple(range(-ndim, 0))


def fftn_center(x: Tensor, ndim: int) -> Tensor:
    """Centred forward FFT over the last ``ndim`` axes.

    Parameters
    ----------
    x : Tensor, shape (..., D, D) or (..., D, D, D)
        Real or complex data, origin at index D // 2.
    ndim : int
        2 for images, 3 for volumes.

    Returns
    -------
    Tensor, complex, same shape
        Fourier coefficients, zero frequency at index D // 2.
    """
    axes = _axes(ndim)
    return torch.fft.fftshift(torch.fft.fftn(torch.fft.ifftshift(x, dim=axes), dim=axes), dim=axes)


def ifftn_center(f: Tensor, ndim: int) -> Tensor:
    """Inverse of :func:`fftn_center` (complex result; take ``.real`` for real data)."""
    axes = _axes(ndim)
    return torch.fft.fftshift(torch.fft.ifftn(torch.fft.ifftshift(f, dim=axes), dim=axes), dim=axes)


def fft2_center(img: Tensor) -> Tensor:
    """Centred 2D FFT of images, shape (..., D, D)."""
    return fftn_center(img, 2)


def ifft2_center(f: Tensor) -> Tensor:
    """Inverse centred 2D FFT, shape (..., D, D), complex."""
    return ifftn_center(f, 2)


def fft3_center(vol: Tensor) -> Tensor:
    """Centred 3D FFT of volumes, shape (..., D, D, D)."""
    return fftn_center(vol, 3)


def ifft3_center(f: Tensor) -> Tensor:
    """Inverse centred 3D FFT, shape (..., D, D, D), complex."""
    return ifftn_center(f, 3)


def htn_center(x: Tensor, ndim: int) -> Tensor:
    """Centred Hartley transform over the last ``ndim`` axes: ``Re(F) - Im(F)`` (real)."""
    f = fftn_center(x, ndim)
    return f.real - f.imag


def ihtn_center(h: Tensor, ndim: int) -> Tensor:
    """Inverse centred Hartley transform: the forward transform divided by the number of samples."""
    n = 1
    for s in h.shape[-ndim:]:
        n *= s
    return htn_center(h, ndim) / n


def ht2_center(img: Tensor) -> Tensor:
    """Centred 2D Hartley transform of images, shape (..., D, D)."""
    return htn_center(img, 2)


def iht2_center(h: Tensor) -> Tensor:
    """Inverse centred 2D Hartley transform, shape (..., D, D)."""
    return ihtn_center(h, 2)


def ht3_center(vol: Tensor) -> Tensor:
    """Centred 3D Hartley transform of volumes, shape (..., D, D, D)."""
    return htn_center(vol, 3)


def iht3_center(h: Tensor) -> Tensor:
    """Inverse centred 3D Hartley transform, shape (..., D, D, D)."""
    return ihtn_center(h, 3)


def hartley_to_fourier(h: Tensor, ndim: int) -> Tensor:
    """Fourier coefficients of a real signal from its centred Hartley transform.

    Uses ``F(k) = (H(k) + H(-k)) / 2 - i (H(k) - H(-k)) / 2``; ``H(-k)`` is the array mirrored about
    index D // 2 on every axis, which needs odd sizes or a zero Nyquist row: for even D the Nyquist
    entries (index 0) map to themselves.
    """
    hm = mirror(h, ndim)
    return torch.complex((h + hm) / 2, -(h - hm) / 2)


def mirror(x: Tensor, ndim: int) -> Tensor:
    """``x`` at ``-k``: each of the last ``ndim`` axes reflected about index D // 2.

    For even D the Nyquist entry (index 0), which has no partner, maps to itself.
    """
    axes = _axes(ndim)
    return torch.roll(torch.flip(x, dims=axes), shifts=tuple(1 - (s % 2) for s in x.shape[-ndim:]), dims=axes)


def crop_center(x: Tensor, size: int, ndim: int) -> Tensor:
    """Crop the central ``size`` samples of the last ``ndim`` axes (origin stays at ``size // 2``)."""
    slices: list[slice] = []
    for s in x.shape[-ndim:]:
        start = s // 2 - size // 2
        slices.append(slice(start, start + size))
    return x[(Ellipsis, *slices)]


def pad_center(x: Tensor, size: int, ndim: int) -> Tensor:
    """Zero-pad the last ``ndim`` axes to ``size`` so that the origin stays at ``size // 2``."""
    pads: list[int] = []
    for s in reversed(x.shape[-ndim:]):
        before = size // 2 - s // 2
        pads.extend([before, size - s - before])
    return torch.nn.functional.pad(x, pads)
