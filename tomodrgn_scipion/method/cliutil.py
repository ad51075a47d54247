"""Argument groups and checks shared by the commands of :mod:`.cli`."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from .errors import InputError

PARTICLES_HELP = ("particle tilt series: a RELION 3.0 or 3.1 image-series star (Warp 1, M), or a RELION 5 / WarpTools "
                  "optimisation set (or its particles.star with --tomograms)")


def add_format_args(p: argparse._ActionsContainer) -> None:
    """How the particle files are read: ``--source-software``, ``--tomograms``, ``--image-ctf-premultiplied``,
    ``--image-dose-weighted``."""
    from .formats import DESCRIPTION

    kinds = "; ".join(f"{k}: {v}" for k, v in DESCRIPTION.items())
    p.add_argument("--source-software", default="auto",
                   help=f"format of the particle files (default: auto, detected from their blocks and columns; {kinds})")
    p.add_argument("--tomograms", type=Path,
                   help="tomograms.star of a RELION 5 / WarpTools particles.star given without its optimisation set")
    for flag, what in (("--image-ctf-premultiplied", "multiplied by their CTF"), ("--image-dose-weighted", "weighted by their dose")):
        p.add_argument(flag, nargs="?", const="yes", default="auto", choices=("auto", "yes", "no"),
                       help=f"images are already {what} by the exporter: yes (the flag alone) or no overrides what the "
                            f"files say (default: auto, from _rlnCtfDataAreCtfPremultiplied)")


def format_kwargs(a: argparse.Namespace) -> dict:
    """Keyword arguments of :class:`.star.TiltSeriesStar` (and :class:`.dataset.TiltSeriesData`) from
    :func:`add_format_args`' options."""
    tri = {"auto": None, "yes": True, "no": False}
    return {"source_software": a.source_software, "tomograms": a.tomograms,
            "ctf_premultiplied": tri[a.image_ctf_premultiplied], "dose_weighted": tri[a.image_dose_weighted]}


def add_data_args(p: argparse.ArgumentParser) -> None:
    add_format_args(p)
    p.add_argument("--datadir", type=Path, help="second folder to look for image stacks in (after the star file's folder)")
    p.add_argument("--uninvert-data", action="store_true",
                   help="do not invert image contrast (for protein-dark images; Warp/RELION export protein-light ones, which are inverted by default)")
    p.add_argument("--lazy", action="store_true", help="read images from disk as needed instead of loading them all")
    p.add_argument("--no-window", dest="window", action="store_false", help="do not apply the soft circular real-space window")
    p.add_argument("--window-r", type=float, nargs=2, default=(0.85, 0.99), metavar=("IN", "OUT"),
                   help="inner and outer radius of the window, fractions of half the box (default: 0.85 0.99)")


def load_particle_selection(path: Path | None, first: int | None, n_particles: int) -> np.ndarray:
    """Particle numbers from an index file (``.txt``: one integer per line, or ``.pkl``/``.npy``)."""
    sel = np.arange(n_particles)
    if path is not None:
        if not path.is_file():
            raise InputError(f"{path}: index file not found")
        try:
            if path.suffix == ".pkl":
                import pickle

                with open(path, "rb") as fh:
                    sel = np.asarray(pickle.load(fh), dtype=np.int64).reshape(-1)
            elif path.suffix == ".npy":
                sel = np.load(path).astype(np.int64).reshape(-1)
            else:
                sel = np.loadtxt(path, dtype=np.int64, ndmin=1)
        except Exception as exc:
            raise InputError(f"{path}: cannot read particle indices ({exc})") from None
        bad = (sel < 0) | (sel >= n_particles)
        if bad.any():
            raise InputError(f"{path}: particle index {sel[bad][0]} out of range 0..{n_particles - 1}")
    if first is not None:
        sel = sel[:first]
    if len(sel) == 0:
        raise InputError("no particles selected")
    return sel


def add_device_arg(p: argparse._ActionsContainer) -> None:
    """``--device`` (an argument parser or group)."""
    p.add_argument("--device", default="auto", help="auto (CUDA when present), auto:N (GPU N when CUDA is present), cpu, cuda or cuda:N (default: auto)")


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; a CUDA device that is absent is an input error."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("auto:"):  # a chosen GPU when CUDA is there, else the CPU (Scipion's "use GPU" default)
        gpu = name.split(":", 1)[1]
        if not gpu.isdigit():
            raise InputError(f"--device {name}: expected auto:N with N a GPU number")
        return f"cuda:{gpu}" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {name}: CUDA was requested but torch {torch.__version__} sees no CUDA device")
    try:
        torch.device(name)
    except RuntimeError:
        raise InputError(f"--device {name}: not a torch device (use auto, cpu, cuda or cuda:N)") from None
    return name
