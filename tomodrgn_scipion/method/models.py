"""Networks of the method: tilt-series encoder, coordinate-based Fourier decoder, and the VAE.

The decoder is a function of 3D Fourier coordinates ``k`` (cycles per pixel, ``|k| < 0.5``) and a
latent vector ``z``, returning the real and imaginary parts of the volume's transform at ``k``. The
volume is real, so its transform is Hermitian: the network is only ever evaluated on one half of
Fourier space (see :func:`upper_half`) and ``F(-k) = conj F(k)`` gives the rest. The encoder applies one MLP (A) to every
tilt image of a particle, pools the results across tilts and maps them with a second MLP (B) to the
mean and log-variance of ``q(z | tilt series)``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from . import fft
from .errors import InputError
from .lattice import freqs_1d

Tensor = torch.Tensor

PE_TYPES = ("geom_lowf", "geom_ft", "geom_full", "geom_nohighf", "linear_lowf", "gaussian", "none")
POOLING = ("concatenate", "max", "mean", "median", "set_attention")


class PositionalEncoding(nn.Module):
    """Sinusoidal features of 3D Fourier coordinates.

    Parameters
    ----------
    pe_type : str
        One of :data:`PE_TYPES`. ``geom_*`` use ``pe_dim`` angular rates in geometric progression per
        axis (``geom_lowf``: D/2 down to 1 radian per unit of k; ``geom_ft``: D*pi down to 2*pi;
        ``geom_full``: D*pi down to 1; ``geom_nohighf``: D/2 down to 2*pi), ``linear_lowf`` evenly
        spaced rates from 1 to D/2, ``gaussian`` ``3 * pe_dim`` random 3D directions with rates drawn
        from N(0, (feat_sigma * D/2)^2), ``none`` the raw coordinates.
    pe_dim : int
        Features per axis (rates per axis, or ``3 * pe_dim`` random directions for ``gaussian``).
    box : int
        Box size D.
    feat_sigma : float
        Scale of the Gaussian rates, relative to D/2.
    seed : int
        Seed of the Gaussian rates (they are buffers, so saved with the weights).

    Attributes
    ----------
    out_dim : int
        Number of features: ``6 * pe_dim`` (``3`` for ``none``).
    """

    def __init__(self, pe_type: str, pe_dim: int, box: int, feat_sigma: float = 0.5, seed: int = 0):
        super().__init__()
        if pe_type not in PE_TYPES:
            raise InputError(f"--pe-type {pe_type}: expected one of {', '.join(PE_TYPES)}")
        if pe_dim < 1:
            raise InputError(f"--pe-dim {pe_dim}: must be >= 1")
        self.pe_type = pe_type
        d2 = box / 2
        steps = torch.arange(pe_dim, dtype=torch.float64) / max(pe_dim - 1, 1)
        geometric = {
            "geom_lowf": (d2, 1.0), "geom_ft": (box * math.pi, 2 * math.pi),
            "geom_full": (box * math.pi, 1.0), "geom_nohighf": (d2, 2 * math.pi),
        }
        if pe_type in geometric or pe_type == "linear_lowf":
            if pe_type in geometric:
                hi, lo = geometric[pe_type]
                rates = hi * (lo / hi) ** steps
            else:
                rates = torch.linspace(1.0, d2, pe_dim, dtype=torch.float64)
            # one rate per (axis, feature): a block-diagonal (3, 3 * pe_dim) projection
            proj = torch.block_diag(rates[None], rates[None], rates[None])
        elif pe_type == "gaussian":
            g = torch.Generator().manual_seed(seed)
            proj = torch.randn(3, 3 * pe_dim, generator=g, dtype=torch.float64) * feat_sigma * d2
        else:
            proj = torch.zeros(3, 0, dtype=torch.float64)
        self.register_buffer("proj", proj.to(torch.float32))
        self.out_dim = 3 if pe_type == "none" else 2 * proj.shape[1]

    def forward(self, coords: Tensor) -> Tensor:
        """Features of ``coords`` (..., 3) in cycles per pixel; shape (..., out_dim)."""
        if self.pe_type == "none":
            return coords
        # phases reach tens of radians: keep them in float32 even under mixed precision
        with torch.autocast(coords.device.type, enabled=False):
            x = coords.float() @ self.proj.float()
            return torch.cat([torch.sin(x), torch.cos(x)], -1)


class ResidLinear(nn.Module):
    """``x + W x + b``: a residual linear layer (square)."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.linear(x)


def resid_mlp(in_dim: int, n_layers: int, hidden: int, out_dim: int) -> nn.Sequential:
    """MLP: in -> hidden, ``n_layers`` residual hidden layers, -> out, with ReLU between."""
    layers: list[nn.Module] = [ResidLinear(hidden) if in_dim == hidden else nn.Linear(in_dim, hidden), nn.ReLU()]
    for _ in range(n_layers):
        layers += [ResidLinear(hidden), nn.ReLU()]
    layers.append(nn.Linear(hidden, out_dim))
    return nn.Sequential(*layers)


@dataclass
class ModelConfig:
    """Architecture of a model (everything needed to rebuild it before loading weights).

    ``zdim = 0`` gives a homogeneous model (decoder only, ``train_nn``).
    """

    box: int
    zdim: int
    dec_layers: int = 3
    dec_dim: int = 256
    pe_type: str = "geom_lowf"
    pe_dim: int | None = None
    feat_sigma: float = 0.5
    enc_in_dim: int = 0
    ntilts: int = 0
    enc_layers_A: int = 3
    enc_dim_A: int = 256
    out_dim_A: int = 128
    enc_layers_B: int = 3
    enc_dim_B: int = 256
    pooling_function: str = "concatenate"
    pe_seed: int = 0

    def __post_init__(self):
        if self.pe_dim is None:
            self.pe_dim = self.box // 2
        if self.zdim < 0:
            raise InputError(f"--zdim {self.zdim}: must be > 0")
        for name in ("dec_layers", "enc_layers_A", "enc_layers_B"):
            if getattr(self, name) < 0:
                raise InputError(f"--{name.replace('_', '-')} must be >= 0")
        for name in ("dec_dim", "enc_dim_A", "out_dim_A", "enc_dim_B"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be >= 1")
        if self.pooling_function not in POOLING:
            raise InputError(f"--pooling-function {self.pooling_function}: expected one of {', '.join(POOLING)}")

    def to_dict(self) -> dict:
        """JSON-ready dictionary."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """Inverse of :meth:`to_dict` (unknown keys are an error)."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise InputError(f"model configuration has unknown keys: {', '.join(sorted(unknown))}")
        return cls(**d)

    def decoder_flops_per_point(self) -> float:
        """Floating-point operations of one decoder evaluation (one Fourier point), forward only: the
        multiply-adds of the MLP's layers (the latent part of the first layer is computed once per
        image and left out)."""
        pe_out = 3 if self.pe_type == "none" else 6 * self.pe_dim
        return 2.0 * (pe_out * self.dec_dim + self.dec_layers * self.dec_dim ** 2 + 2 * self.dec_dim)

    def build(self) -> "TomoModel":
        """A freshly initialised model (seed torch first for reproducible weights)."""
        return TomoModel(self)


class FourierDecoder(nn.Module):
    """``(k, z) -> (Re F(k), Im F(k))`` for a real volume, evaluated on one half space only.

    Parameters
    ----------
    cfg : ModelConfig
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.pe = PositionalEncoding(cfg.pe_type, cfg.pe_dim, cfg.box, cfg.feat_sigma, cfg.pe_seed)
        self.zdim = cfg.zdim
        self.mlp = resid_mlp(self.pe.out_dim + cfg.zdim, cfg.dec_layers, cfg.dec_dim, 2)

    def forward(self, coords: Tensor, z: Tensor | None = None) -> Tensor:
        """Transform of the volume(s) at ``coords``.

        Parameters
        ----------
        coords : Tensor, shape (N, P, 3)
            Fourier coordinates in cycles per pixel, anywhere in the ball ``|k| < 0.5``: P points for
            each of N slices (or volumes).
        z : Tensor, shape (N, zdim), optional
            The latent vector of each slice (omit for ``zdim = 0``).

        Returns
        -------
        Tensor, shape (N, P, 2)
            Real and imaginary part of ``F(k)``.
        """
        flip = upper_half(coords)
        sign = 1.0 - 2.0 * flip.to(coords.dtype)
        x = self.pe(coords * sign[..., None])
        first, rest = self.mlp[0], self.mlp[1:]
        pe_dim = self.pe.out_dim
        w = first.linear.weight if isinstance(first, ResidLinear) else first.weight
        b = first.linear.bias if isinstance(first, ResidLinear) else first.bias
        # [pe, z] @ W^T in two parts: the z part once per slice, broadcast over its points (a gather
        # per point would cost more than the layer itself in the backward pass)
        h = x @ w[:, :pe_dim].T
        zb = b if self.zdim == 0 else (z @ w[:, pe_dim:].T + b)[:, None, :]
        h = h + zb
        if isinstance(first, ResidLinear):
            h = h + (torch.cat([x, z[:, None, :].expand(-1, x.shape[1], -1)], -1) if self.zdim else x)
        out = rest(h)
        # conjugate on the mirrored half; k = 0 is its own mirror, so its value is real
        imag_sign = sign * (coords != 0).any(-1).to(coords.dtype)
        return torch.stack([out[..., 0], out[..., 1] * imag_sign.to(out.dtype)], -1)


def upper_half(coords: Tensor) -> Tensor:
    """True for the half of Fourier space the decoder is not evaluated on, shape ``coords.shape[:-1]``.

    ``k_z > 0``, or ``k_z = 0`` and ``k_y > 0``, or ``k_z = k_y = 0`` and ``k_x > 0``: exactly one of
    every ``{k, -k}`` pair, so decoded volumes are exactly Hermitian (real in real space).
    """
    kx, ky, kz = coords[..., 0], coords[..., 1], coords[..., 2]
    return (kz > 0) | ((kz == 0) & ((ky > 0) | ((ky == 0) & (kx > 0))))


class TiltSeriesEncoder(nn.Module):
    """Per-tilt MLP (A), pooling across tilts, MLP (B) to ``(mu, logvar)`` of z.

    Parameters
    ----------
    cfg : ModelConfig
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.enc_in_dim < 1 or cfg.ntilts < 1:
            raise InputError("encoder needs enc_in_dim and ntilts >= 1")
        self.cfg = cfg
        self.mlp_a = resid_mlp(cfg.enc_in_dim, cfg.enc_layers_A, cfg.enc_dim_A, cfg.out_dim_A)
        pooled = cfg.out_dim_A * (cfg.ntilts if cfg.pooling_function == "concatenate" else 1)
        if cfg.pooling_function == "set_attention":
            heads = 4 if cfg.out_dim_A % 4 == 0 else 1
            self.seed_query = nn.Parameter(torch.randn(1, 1, cfg.out_dim_A) / math.sqrt(cfg.out_dim_A))
            self.attention = nn.MultiheadAttention(cfg.out_dim_A, heads, batch_first=True)
        self.mlp_b = resid_mlp(pooled, cfg.enc_layers_B, cfg.enc_dim_B, 2 * cfg.zdim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Encode tilt series.

        Parameters
        ----------
        x : Tensor, shape (B, ntilts, enc_in_dim)
            Encoder input of each tilt, lowest dose first.

        Returns
        -------
        mu, logvar : Tensor, shape (B, zdim)
        """
        b, t, _ = x.shape
        # explicit sizes: a data-parallel rank may hold no particle of a batch (b = 0)
        h = self.mlp_a(x.reshape(b * t, x.shape[-1]))
        h = h.reshape(b, t, h.shape[-1])
        pool = self.cfg.pooling_function
        if pool == "concatenate":
            h = h.reshape(b, t * h.shape[-1])
        elif pool == "max":
            h = h.max(1).values
        elif pool == "mean":
            h = h.mean(1)
        elif pool == "median":
            h = h.median(1).values
        else:
            h = self.attention(self.seed_query.expand(b, -1, -1), h, h, need_weights=False)[0][:, 0]
        out = self.mlp_b(h)
        zdim = self.cfg.zdim
        return out[:, :zdim], out[:, zdim:]


class TomoModel(nn.Module):
    """Decoder, and for ``zdim > 0`` the encoder: the model of ``train_vae`` and ``train_nn``.

    Parameters
    ----------
    cfg : ModelConfig
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.decoder = FourierDecoder(cfg)
        self.encoder = TiltSeriesEncoder(cfg) if cfg.zdim > 0 else None

    @staticmethod
    def reparameterize(mu: Tensor, logvar: Tensor, eps: Tensor) -> Tensor:
        """``mu + exp(logvar / 2) * eps`` with the given standard normal ``eps``."""
        return mu + torch.exp(0.5 * logvar) * eps


def volume_coords(box: int, out_box: int | None = None, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """Fourier coordinates of a volume grid and the mask of the ball inside Nyquist.

    Parameters
    ----------
    box : int
        Box D of the training images.
    out_box : int, optional
        Box of the rendered volume (<= D; smaller crops Fourier space, i.e. downsamples).

    Returns
    -------
    coords : Tensor, float32, shape (M, 3)
        ``(kx, ky, kz)`` in cycles per training pixel of the grid points with ``|k| < 0.5``.
    mask : Tensor, bool, shape (out_box**3,)
        Which points of the ``[z, y, x]`` grid they are.
    """
    n = out_box or box
    k = freqs_1d(n, device, torch.float64) * n / box
    kz, ky, kx = torch.meshgrid(k, k, k, indexing="ij")
    c = torch.stack([kx.reshape(-1), ky.reshape(-1), kz.reshape(-1)], 1)
    mask = c.norm(dim=1) < 0.5
    return c[mask].to(torch.float32), mask


@torch.no_grad()
def render_volume(decoder: FourierDecoder, z: Tensor | None, box: int, out_box: int | None = None,
                  chunk: int = 1 << 16) -> Tensor:
    """Real-space volume of the decoder at one latent vector.

    Parameters
    ----------
    decoder : FourierDecoder
    z : Tensor, shape (zdim,), or None for a homogeneous model
    box : int
        Training box D.
    out_box : int, optional
        Output box (even, <= D); the pixel size grows by D / out_box.
    chunk : int
        Coordinates evaluated at once.

    Returns
    -------
    Tensor, float32, shape (out_box, out_box, out_box)
        Density indexed ``[z, y, x]``, on the same scale as a volume reconstructed at box D.
    """
    n = out_box or box
    p = next(decoder.parameters())
    coords, mask = volume_coords(box, n, p.device)
    zz = None if z is None else z.reshape(1, -1).to(p)
    vals = [decoder(coords[None, s:s + chunk], zz)[0].to(torch.float64) for s in range(0, len(coords), chunk)]
    v = torch.cat(vals)
    ft = torch.zeros(n ** 3, dtype=torch.complex128, device=p.device)
    ft[mask] = torch.complex(v[:, 0], v[:, 1])
    vol = fft.ifft3_center(ft.reshape(n, n, n)).real * (n / box) ** 3
    return vol.to(torch.float32)
