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


def read_index_file(path: Path, what: str = "particle indices") -> np.ndarray:
    """Whole numbers from a text file (one per line, ``#`` comments) or a ``.npy`` array, int64, shape (N,).

    Pickles (``.pkl``, tomoDRGN's format) are refused rather than unpickled: unpickling a file can run
    any code it holds. ``1.5`` is refused rather than read as 1.
    """
    if not path.is_file():
        raise InputError(f"{path}: index file not found")
    if path.suffix == ".pkl":
        raise InputError(f"{path}: pickle files are not read (unpickling can run code); write the {what} "
                         f"as text, one per line, or as .npy, e.g. python -c \"import pickle, numpy; "
                         f"numpy.savetxt('ind.txt', pickle.load(open('{path.name}', 'rb')), fmt='%d')\"")
    try:
        if path.suffix == ".npy":
            raw = np.load(path, allow_pickle=False)
        else:
            raw = np.loadtxt(path, dtype=np.float64, ndmin=1, comments="#")
    except Exception as exc:
        raise InputError(f"{path}: cannot read {what} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    raw = np.asarray(raw).reshape(-1)
    if raw.dtype.kind not in "iuf":
        raise InputError(f"{path}: {what} must be numbers, got an array of {raw.dtype}")
    bad = ~np.isfinite(raw.astype(np.float64)) | (raw != np.round(raw))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(f"{path}: row {i + 1}: {raw[i]!r} is not a whole number")
    return raw.astype(np.int64)


def load_particle_selection(path: Path | None, first: int | None, n_particles: int) -> np.ndarray:
    """Particle numbers from an index file (``.txt``: one integer per line, or ``.npy``), then the first N.

    Raises
    ------
    InputError
        For indices out of range, repeated, not whole numbers, a pickle, ``--first`` below 1 or an empty
        selection.
    """
    sel = np.arange(n_particles)
    if path is not None:
        sel = read_index_file(path)
        bad = (sel < 0) | (sel >= n_particles)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise InputError(f"{path}: row {i + 1}: particle index {sel[i]} out of range 0..{n_particles - 1}")
        _, first_at, counts = np.unique(sel, return_index=True, return_counts=True)
        if (counts > 1).any():
            dup = int(np.flatnonzero(counts > 1)[0])
            i = int(first_at[dup])
            again = int(np.flatnonzero(sel == sel[i])[1])
            raise InputError(f"{path}: row {again + 1}: particle index {sel[i]} repeats row {i + 1}")
    if first is not None:
        if first < 1:
            raise InputError(f"--first {first}: must be >= 1")
        sel = sel[:first]
    if len(sel) == 0:
        raise InputError(f"{path}: no particles selected (the index file is empty)" if path else "no particles selected")
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


#: Destinations of the options that name output files (an existing one is replaced, so it is no input).
#: ``--load`` is text (PATH or latest), so the checkpoint a resumed run continues, and may rewrite as its
#: final ``weights.pt``, is not protected either.
OUTPUT_DESTS = frozenset({"output", "out_z", "out_zlogvar", "outz", "outind"})


def _argument_paths(a: argparse.Namespace) -> list[Path]:
    out: list[Path] = []
    for dest, value in vars(a).items():
        if dest in OUTPUT_DESTS:
            continue
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(v, Path):
                out.append(v)
    return out


def protect_argument_files(a: argparse.Namespace) -> None:
    """Start a command: every existing file named on its command line is an input no output may replace
    (:func:`.outputs.protect_inputs`); files inside folders given as input are protected where they are read."""
    from .outputs import forget_inputs, protect_inputs

    forget_inputs()
    protect_inputs(*_argument_paths(a))


def check_finite_options(a: argparse.Namespace) -> None:
    """Every number given as an option must be finite (``nan`` and ``inf`` parse as floats), the window
    radii ordered, and ``--threads`` at least 1.

    Raises
    ------
    InputError
        Naming the option, e.g. ``--lowpass nan: not a finite number``.
    """
    for dest, value in vars(a).items():
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(v, float) and not np.isfinite(v):
                flag = f"-{dest}" if len(dest) == 1 else f"--{dest.replace('_', '-')}"
                raise InputError(f"{flag} {v}: not a finite number")
    if getattr(a, "window_r", None) is not None and getattr(a, "window", True):
        lo, hi = a.window_r
        if not 0 <= lo < hi <= 1:
            raise InputError(f"--window-r {lo:g} {hi:g}: expected 0 <= IN < OUT <= 1 (fractions of half the box)")
    if getattr(a, "threads", None) is not None and a.threads < 1:
        raise InputError(f"--threads {a.threads}: must be >= 1")
