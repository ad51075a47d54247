"""Particle tilt series: a validated star file with its images, preprocessed for the method."""
from __future__ import annotations

import os

import numpy as np
import torch

from .imaging import ImagingParams
from .lattice import soft_circular_window
from .stacks import ImageSource
from .star import TiltSeriesStar
from .transforms import euler_to_matrix

Tensor = torch.Tensor


class TiltSeriesData:
    """Tilt images of particles, grouped by ``_rlnGroupName``.

    Parameters
    ----------
    star_path : path-like or TiltSeriesStar
        Particle tilt series in any format of :mod:`.formats`, or the model already read.
    datadir : path-like, optional
        Second folder where image stacks are looked for.
    lazy : bool
        Read images from disk on each access instead of loading them all.
    invert : bool
        Multiply images by -1 (default). Warp and RELION export protein-light images, and the CTF of
        :mod:`.ctf` models protein-dark ones; pass False (``--uninvert-data``) for protein-dark data.
    window : bool
        Apply a soft circular real-space window (radii ``window_r`` as fractions of D/2).
    window_r : tuple of float
        Inner and outer radius of the window.
    source_software, tomograms, ctf_premultiplied, dose_weighted
        As for :class:`.star.TiltSeriesStar`.

    Attributes
    ----------
    star : TiltSeriesStar
    images : ImageSource
    box : int
    pixel_size : float
    imaging : ImagingParams
        Per-image CTF, dose and tilt, shape (N_images,) each.
    """

    def __init__(self, star_path: str | os.PathLike | TiltSeriesStar, datadir: str | os.PathLike | None = None,
                 lazy: bool = False, invert: bool = True, window: bool = True,
                 window_r: tuple[float, float] = (0.85, 0.99), source_software: str = "auto",
                 tomograms: str | os.PathLike | None = None, ctf_premultiplied: bool | None = None,
                 dose_weighted: bool | None = None):
        self.star = star_path if isinstance(star_path, TiltSeriesStar) else TiltSeriesStar(
            star_path, source_software=source_software, tomograms=tomograms, ctf_premultiplied=ctf_premultiplied,
            dose_weighted=dose_weighted)
        self.images = ImageSource(self.star.image_names, self.star.image_anchor, datadir=datadir, lazy=lazy,
                                  named_in=self.star.path)
        self.box = self.images.box
        self.pixel_size = self.star.pixel_size
        self.invert = invert
        self.window = soft_circular_window(self.box, *window_r) if window else None
        s = self.star
        self.imaging = ImagingParams(s.dfu, s.dfv, s.dfang, s.voltage, s.cs, s.w, s.phase_shift, s.dose, s.ctf_scalefactor,
                                     premultiplied=s.ctf_premultiplied, dose_weighted=s.dose_weighted)

    @property
    def n_images(self) -> int:
        """Number of tilt images."""
        return self.star.n_images

    @property
    def n_particles(self) -> int:
        """Number of particles."""
        return self.star.n_particles

    def rotations(self, rows: np.ndarray) -> Tensor:
        """RELION matrices of the given rows, float64, shape (B, 3, 3)."""
        e = torch.as_tensor(self.star.euler[rows], dtype=torch.float64)
        return euler_to_matrix(e[:, 0], e[:, 1], e[:, 2])

    def shifts(self, rows: np.ndarray) -> Tensor:
        """``_rlnOriginX/Y`` of the given rows in pixels, float64, shape (B, 2)."""
        return torch.as_tensor(self.star.shifts_px[rows], dtype=torch.float64)

    def real_images(self, rows: np.ndarray) -> Tensor:
        """Preprocessed real-space images of the given rows: inverted unless told not to, windowed.

        Returns
        -------
        Tensor, float32, shape (B, D, D)
        """
        return self.preprocess(torch.from_numpy(self.images.get(rows)))

    def preprocess(self, img: Tensor) -> Tensor:
        """Inversion and window of raw images (B, D, D), on the images' device."""
        if self.invert:
            img = -img
        if self.window is not None:
            img = img * self.window.to(img.device, non_blocking=True)
        return img
