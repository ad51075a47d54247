"""Particle tilt series prepared for training and inference.

Each tilt image becomes its centred 2D Fourier transform, re-centred by its origin shift, on one
frequency of each ``{k, -k}`` pair inside the Nyquist circle (the image is real, so the other half
adds nothing), divided by one normalisation constant for the data set. A batch gathers, for a set of
particles, what the encoder sees (the ``ntilts`` lowest-dose tilts, phase-flipped by their CTF, each
scaled to unit RMS) and
what the decoder is compared with (every tilt image of those particles).
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import torch

from . import fft
from .dataset import TiltSeriesData
from .distributed import share
from .errors import InputError
from .imaging import ImagingParams
from .progress import Progress
from .projection import SliceGeometry
from .transforms import shift_at

log = logging.getLogger(__name__)
Tensor = torch.Tensor


@dataclass
class Batch:
    """Tensors of a batch of B particles with N tilt images in all (H half-plane frequencies each).

    Attributes
    ----------
    particles : numpy.ndarray of int, shape (B,)
        Positions of the particles in :attr:`ParticleTiltData.particles`.
    enc_input : Tensor, float32, shape (B, ntilts, 2H), or None
        Real and imaginary parts of the phase-flipped transforms of the encoder's tilts, each tilt
        scaled to unit root-mean-square.
    values : Tensor, complex64, shape (N, H)
        Normalised image transforms.
    ctf : Tensor, float32, shape (N, H)
    weight : Tensor, float32, shape (N, H)
        Loss weight: points per frequency (2, or 1 for k = 0) times any dose and tilt weights and
        the dose mask.
    rot : Tensor, float32, shape (N, 3, 3)
    image_particle : Tensor, int64, shape (N,)
        Position (0..B-1) of each image's particle in the batch.
    offset, group_size : int
        Under data parallelism a batch is one rank's share of a group of ``group_size`` particles that
        all ranks together take one optimiser step on; ``offset`` is the position of its first
        particle in that group (0 and B on one rank).
    group_images : int
        Tilt images of the whole group.
    """

    particles: np.ndarray
    enc_input: Tensor | None
    values: Tensor
    ctf: Tensor
    weight: Tensor
    rot: Tensor
    image_particle: Tensor
    offset: int = 0
    group_size: int = 0
    group_images: int = 0

    @property
    def n_images(self) -> int:
        return self.values.shape[0]


@dataclass
class _HostPart:
    """What a batch needs from the host, gathered off the training thread (see :meth:`ParticleTiltData.prepare`)."""

    particles: np.ndarray
    pos: np.ndarray
    counts: np.ndarray
    tilts: np.ndarray | None
    images: Tensor | None
    imaging: ImagingParams | None
    offset: int = 0
    group_size: int = 0
    group_images: int = 0


#: Fraction of the free memory of the training device that the preprocessed images may take for
#: ``--lazy`` auto to keep them in memory (the rest is for the network's activations and the system).
MEMORY_FRACTION = 0.5


def free_memory(device: torch.device) -> int:
    """Free memory of a device in bytes: CUDA's free memory, or the host's ``MemAvailable``."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def _gib(n: float) -> str:
    return f"{n / 2 ** 30:.1f} GiB"


class ParticleTiltData:
    """Training view of a :class:`TiltSeriesData`.

    Parameters
    ----------
    data : TiltSeriesData
    particles : numpy.ndarray of int, optional
        Particle numbers to use (default: all).
    ntilts : int, optional
        Tilts per particle the encoder sees (lowest dose first); particles with fewer are dropped.
        Default: the smallest count among the particles. ``0`` means no encoder (homogeneous model).
    norm : float, optional
        Normalisation constant (default: estimated from the data, see :meth:`estimate_norm`).
    dose_weight, tilt_weight, dose_mask : bool
        Loss weights: ``--recon-dose-weight``, ``--recon-tilt-weight``, ``--l-dose-mask``.
    device : str
        Where batches are delivered.
    seed : int
        Seed of the images sampled for the normalisation.
    in_memory : bool or None
        Keep every image's preprocessed transform, CTF and weights on ``device`` (True), or compute
        them from the memory-mapped stacks for each batch (False, ``--lazy``). None (default) chooses:
        in memory when they take at most :data:`MEMORY_FRACTION` of the device's free memory, and one
        log line says which and why.

    Attributes
    ----------
    particles : numpy.ndarray of int, shape (P,)
        Particle numbers kept, in star order of first appearance.
    particle_ids : list of str
        Their ``_rlnGroupName``.
    n_dropped : int
        Particles dropped for having fewer than ``ntilts`` tilts.
    """

    def __init__(self, data: TiltSeriesData, particles: np.ndarray | None = None, ntilts: int | None = None,
                 norm: float | None = None, dose_weight: bool = False, tilt_weight: bool = False,
                 dose_mask: bool = False, device: str = "cpu", seed: int = 0, in_memory: bool | None = None):
        self.data = data
        self.device = torch.device(device)
        star = data.star
        sel = np.arange(data.n_particles) if particles is None else np.asarray(particles, dtype=np.int64)
        counts = np.array([len(star.rows_of_particle[p]) for p in sel])
        if ntilts is None:
            ntilts = int(counts.min())
        if ntilts < 0:
            raise InputError(f"--ntilts {ntilts}: must be >= 1")
        keep = counts >= ntilts
        self.n_dropped = int((~keep).sum())
        if not keep.any():
            raise InputError(f"{star.path}: no particle has {ntilts} tilt images (the most is {counts.max()}); lower --ntilts")
        if self.n_dropped:
            log.info("dropping %d of %d particles with fewer than %d tilt images (--ntilts)", self.n_dropped, len(sel), ntilts)
        self.particles = sel[keep]
        self.ntilts = ntilts
        self.particle_ids = [star.particle_ids[p] for p in self.particles]
        # each particle's rows by increasing dose (stable: file order breaks ties)
        rows = [star.rows_of_particle[p][np.argsort(star.dose[star.rows_of_particle[p]], kind="stable")]
                for p in self.particles]
        self.rows = np.concatenate(rows)
        self.start = np.concatenate([[0], np.cumsum([len(r) for r in rows])])

        self.geometry = g = SliceGeometry(data.box, pad=1, device=self.device)
        self.half_coords = g.coords[g.half].to(torch.float32)
        self._half_xy = g.coords[g.half][:, :2]
        self.freqs_a = g.freqs2d[g.half] / data.pixel_size
        self.points = 2.0 * g.half_weight
        self.flags = (dose_weight, tilt_weight, dose_mask)
        self.lazy = not self._choose_in_memory(in_memory)
        self.norm = float(norm) if norm is not None else self.estimate_norm(seed)
        self.rot = data.rotations(self.rows).to(self.device, torch.float32)
        self._values = self._ctf = self._weight = None
        if not self.lazy:
            self._values, self._ctf, self._weight = self._load_all()

    @property
    def bytes_per_image(self) -> int:
        """Device memory of one image held in memory: its transform (complex64), CTF and any weights
        (float32) on the half-plane frequencies."""
        return len(self.half_coords) * (8 + 4 + (4 if any(self.flags) else 0))

    def _choose_in_memory(self, wanted: bool | None) -> bool:
        need = self.n_images * self.bytes_per_image
        if wanted is not None:
            log.info("%s (%s): %d tilt images, %s preprocessed", "images in memory" if wanted else "streaming images from disk",
                     "--no-lazy" if wanted else "--lazy", self.n_images, _gib(need))
            return wanted
        free = free_memory(self.device)
        fits = need <= MEMORY_FRACTION * free
        log.info("%s: the %d tilt images take %s preprocessed, %s %.0f%% of the %s free on %s%s",
                 "images in memory" if fits else "streaming images from disk (as --lazy)", self.n_images, _gib(need),
                 "within" if fits else "more than", 100 * MEMORY_FRACTION, _gib(free), self.device,
                 "" if fits else "; --no-lazy forces memory")
        return fits

    @property
    def n_particles(self) -> int:
        return len(self.particles)

    @property
    def n_images(self) -> int:
        return len(self.rows)

    @property
    def enc_in_dim(self) -> int:
        """Encoder input size per tilt: real and imaginary part of each half-plane frequency."""
        return 2 * len(self.half_coords)

    def transforms(self, rows: np.ndarray) -> Tensor:
        """Shifted half-plane transforms of star rows, not normalised; complex64, shape (n, H)."""
        return self._transform_images(self._host_images(rows), rows)

    def _host_images(self, rows: np.ndarray) -> Tensor:
        """Raw images of star rows on the host, float32 (n, D, D); in pinned memory when batches go to
        a GPU, so that the copy overlaps the computation."""
        img = torch.from_numpy(self.data.images.get(rows))
        return img.pin_memory() if self.device.type == "cuda" else img

    def _transform_images(self, img: Tensor, rows: np.ndarray) -> Tensor:
        """:meth:`transforms` of images already read: inversion, window, FFT and shift on the device."""
        g = self.geometry
        img = self.data.preprocess(img.to(self.device, non_blocking=True))
        # shifted on the half-plane frequencies only: 40 % of the grid's points
        f = g.from_grid(fft.fft2_center(img))[:, g.half]
        f = shift_at(f, self.data.shifts(rows).to(self.device, non_blocking=True), self._half_xy)
        return f.to(torch.complex64)

    def estimate_norm(self, seed: int, n_sample: int = 1000) -> float:
        """Root-mean-square transform value of up to ``n_sample`` random images (each ``{k, -k}``
        pair counted twice, as in the full plane)."""
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(self.rows, size=min(n_sample, len(self.rows)), replace=False))
        f = self.transforms(rows)
        w = self.points.to(f.device)
        ms = float(((f.abs() ** 2) * w).sum() / (w.sum() * len(rows)))
        if not np.isfinite(ms) or ms <= 0:
            raise InputError(f"{self.data.star.path}: images are empty or not finite; cannot normalise")
        return ms ** 0.5

    def _ctf_weight(self, rows: np.ndarray) -> tuple[Tensor, Tensor | None]:
        """CTF and, when any loss weight is asked for, dose/tilt attenuation of star rows, float32 (n, H)."""
        return self._transfer(self.data.imaging.subset(rows))

    def _transfer(self, imaging: ImagingParams) -> tuple[Tensor, Tensor | None]:
        """:meth:`_ctf_weight` from the images' parameters, computed where they are (on the device
        when they are tensors there)."""
        # what the images hold of the slice: the CTF, or -CTF^2 for premultiplied images, whose
        # sign is then also all the encoder's phase flip does
        ctf = imaging.data_transfer(self.freqs_a).to(torch.float32)
        att = imaging.attenuation(self.freqs_a, *self.flags).to(torch.float32) if any(self.flags) else None
        return ctf, att

    def _load_all(self, chunk: int = 2048) -> tuple[Tensor, Tensor, Tensor | None]:
        """Transforms, CTFs and attenuations of every image, computed once."""
        h = len(self.half_coords)
        out = torch.empty(self.n_images, h, dtype=torch.complex64, device=self.device)
        ctf = torch.empty(self.n_images, h, dtype=torch.float32, device=self.device)
        att = torch.empty(self.n_images, h, dtype=torch.float32, device=self.device) if any(self.flags) else None
        prog = Progress(self.n_images, "loaded", "images", log)
        for s in range(0, self.n_images, chunk):
            rows = self.rows[s:s + chunk]
            out[s:s + len(rows)] = self.transforms(rows) / self.norm
            c, a = self._ctf_weight(rows)
            ctf[s:s + len(rows)] = c
            if att is not None:
                att[s:s + len(rows)] = a
            prog.update(len(rows))
        if not torch.isfinite(torch.view_as_real(out)).all():
            bad = int(torch.nonzero(~torch.isfinite(torch.view_as_real(out)).all(-1).all(-1))[0])
            raise InputError(f"{self.data.star.path}: row {self.rows[bad] + 1}: image {self.data.star.image_names[self.rows[bad]]} has non-finite pixels")
        return out, ctf, att

    def batch(self, particles: np.ndarray, encoder_only: bool = False, tilts: np.ndarray | None = None) -> Batch:
        """The tensors of the particles at the given positions (0..P-1).

        Parameters
        ----------
        particles : numpy.ndarray of int, shape (B,)
        encoder_only : bool
            Hold only the ``ntilts`` tilts the encoder sees.
        tilts : numpy.ndarray of int, shape (B, ntilts), optional
            Which of each particle's tilts (0 = lowest dose) the encoder sees, in this order
            (default: the ``ntilts`` lowest-dose ones, lowest first).
        """
        return self.finish(self.prepare(particles, encoder_only, tilts))

    def prepare(self, particles: np.ndarray, encoder_only: bool = False, tilts: np.ndarray | None = None) -> _HostPart:
        """The host part of :meth:`batch`: image positions and, when streaming, the raw images read
        from disk. Safe to run in background threads; :meth:`finish` does the device part."""
        particles = np.asarray(particles, dtype=np.int64)
        if encoder_only:
            counts = np.full(len(particles), self.ntilts)
            pos = (self.start[particles][:, None] + np.arange(self.ntilts)[None, :]).reshape(-1)
        else:
            counts = self.start[particles + 1] - self.start[particles]
            pos = np.concatenate([np.arange(self.start[p], self.start[p + 1]) for p in particles] or [np.zeros(0, np.int64)])
        images = imaging = None
        if self._values is None:
            rows = self.rows[pos]
            images = self._host_images(rows)
            # a few numbers per image, staged in pinned memory here: the training thread computes the CTF
            # from them on the device after a copy that does not wait for it
            imaging = self.data.imaging.subset(rows)
            if self.device.type == "cuda":
                imaging = imaging.to("cpu", pin=True)
        return _HostPart(particles, pos.astype(np.int64), counts, tilts, images, imaging, 0, len(particles),
                         int(counts.sum()))

    def finish(self, h: _HostPart) -> Batch:
        """The device part of :meth:`batch` (run on the training thread)."""
        pos, counts = h.pos, h.counts
        dev = self.device
        image_particle = torch.from_numpy(np.repeat(np.arange(len(h.particles)), counts)).to(dev, non_blocking=True)
        index = torch.from_numpy(pos).to(dev, non_blocking=True)
        if self._values is not None:
            values, ctf = self._values[index], self._ctf[index]
            att = None if self._weight is None else self._weight[index]
        else:
            values = self._transform_images(h.images, self.rows[pos]) / self.norm
            ctf, att = self._transfer(h.imaging.to(dev) if dev.type == "cuda" else h.imaging)
        weight = self.points[None, :].expand(len(pos), -1)
        if att is not None:
            weight = weight * att
        enc = None
        if self.ntilts > 0:
            # the encoder's tilts are the first ntilts of each particle (rows are sorted by dose)
            offsets = np.cumsum(counts) - counts
            chosen = np.arange(self.ntilts)[None, :] if h.tilts is None else h.tilts
            first = torch.from_numpy((offsets[:, None] + chosen).reshape(-1).astype(np.int64)).to(dev, non_blocking=True)
            flipped = values[first] * torch.sign(ctf[first])
            enc = torch.view_as_real(flipped).permute(0, 2, 1).reshape(len(h.particles), self.ntilts, self.enc_in_dim)
            # each tilt scaled to unit RMS: particle-to-particle differences in image power (ice,
            # noise level) would otherwise be the easiest thing for z to encode
            enc = enc / enc.square().mean(-1, keepdim=True).sqrt().clamp_min(1e-12)
        return Batch(h.particles, enc, values, ctf, weight.contiguous(), self.rot[index], image_particle,
                     h.offset, h.group_size, h.group_images)

    def random_tilts(self, particles: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A random choice of ``ntilts`` of each particle's tilts in random order, shape (B, ntilts)."""
        counts = self.start[particles + 1] - self.start[particles]
        return np.stack([rng.permutation(c)[:self.ntilts] for c in counts])

    def batches(self, order: np.ndarray, batch_size: int, num_workers: int = 0,
                rng: np.random.Generator | None = None, rank: int = 0, world: int = 1,
                encoder_only: bool = False) -> Iterator[Batch]:
        """Batches of particles in the given order.

        With ``rng`` the encoder sees a random choice of tilts in random order (see
        :meth:`random_tilts`); with ``num_workers > 0`` background threads read the next batches'
        images while the current one is used (reading memory maps releases the GIL, so threads
        suffice). With ``world > 1`` each group of ``batch_size`` particles is split into ``world``
        contiguous shares and this rank gets share ``rank`` (possibly empty): all ranks together see
        every particle once, and the random choices do not depend on the number of ranks.
        ``encoder_only`` batches hold only the tilts the encoder sees (see :meth:`batch`).
        """
        groups = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
        # drawn here, in order, for whole groups, so that the result depends neither on the worker
        # threads nor on the number of ranks
        choices = [self.random_tilts(g, rng) if rng is not None and self.ntilts > 0 else None for g in groups]

        def make(item: tuple[np.ndarray, np.ndarray | None]) -> _HostPart:
            g, c = item
            lo, hi = share(len(g), rank, world)
            h = self.prepare(g[lo:hi], encoder_only, tilts=None if c is None else c[lo:hi])
            h.offset, h.group_size = lo, len(g)
            h.group_images = int((self.start[g + 1] - self.start[g]).sum())
            return h

        if num_workers <= 0:
            yield from (self.finish(make(item)) for item in zip(groups, choices))
            return
        with ThreadPoolExecutor(num_workers) as pool:
            yield from (self.finish(h) for h in _prefetch(pool, zip(groups, choices), make, 2 * num_workers))


def _prefetch(pool: ThreadPoolExecutor, items: Iterable, fn, depth: int) -> Iterator:
    """``fn(item)`` for each item, computed up to ``depth`` items ahead in ``pool``."""
    pending = []
    it = iter(items)
    for item in it:
        pending.append(pool.submit(fn, item))
        if len(pending) >= depth:
            yield pending.pop(0).result()
    for p in pending:
        yield p.result()
