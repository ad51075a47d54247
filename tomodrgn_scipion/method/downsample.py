"""``downsample``: particle tilt series Fourier-cropped to a smaller box, written in the input's own format.

Each image of box D (pixel size p) is transformed (centred FFT), its central D' x D' frequencies are kept
and transformed back, and the result is scaled by (D'/D)^2, so that every pixel keeps its value scale: the
mean pixel value (the zero frequency) is unchanged, and a band-limited image comes out as the same function
sampled on the coarser grid of pixel size p' = p D / D' (tomoDRGN's and cryoDRGN's ``downsample``, which
crop the Hartley transform, give the same images). Frequencies in 1/A are the same on both grids (k / (D p)
= k / (D' p')), so images multiplied by their CTF or weighted by their dose stay exactly so: cropping
commutes with both.

The images are read from memory-mapped stacks and written ``--batch-size`` at a time, never all at once.
Each input stack gives one output stack (float32, whatever the input's mode) holding the images the star
file uses, in the input's slice order, under the same relative path below the output stack folder. The
star file (or optimisation set and particles.star) is the input's, line for line, with only the values that
depend on the box changed (:data:`PIXEL_COLUMNS`, :data:`BOX_COLUMNS`, :data:`SHIFT_PX_COLUMNS`, image
names; see :func:`downsampled_values`).
"""
from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import fft
from .errors import InputError
from .formats.blocks import StarFile, with_values
from .formats.relion import numeric
from .formats.tomo import optimisation_set_paths
from .outputs import all_or_nothing, atomic_write, check_outputs, protect_inputs
from .progress import Progress
from .stacks import ImageSource, StackWriter
from .star import TiltSeriesStar

log = logging.getLogger(__name__)
Tensor = torch.Tensor

#: Smallest box written (pixels).
MIN_BOX = 8
#: Columns holding a size of the image pixel (A per pixel, or the binning of the tilt series' pixel that
#: gives it, RELION 5 / WarpTools ``_rlnTomoSubtomogramBinning``): multiplied by D / D'. RELION 3.0 derives
#: the pixel size as 10000 x ``_rlnDetectorPixelSize`` / ``_rlnMagnification``; only the former is scaled,
#: so that this ratio and Warp's own reading of ``_rlnDetectorPixelSize`` as A/px both scale by D / D'.
PIXEL_COLUMNS = ("rlnImagePixelSize", "rlnDetectorPixelSize", "rlnPixelSize", "rlnTomoSubtomogramBinning")
#: Columns holding the box itself: set to D'.
BOX_COLUMNS = ("rlnImageSize",)
#: Image-series columns in pixels of the images (RELION 3.0 origins and their priors): multiplied by D' / D.
#: Origins in A (``_rlnOriginXAngst``...) and coordinates in micrograph or tilt-series pixels stay.
SHIFT_PX_COLUMNS = ("rlnOriginX", "rlnOriginY", "rlnOriginXPrior", "rlnOriginYPrior")
#: WarpTools particle coordinates, in pixels of the particle images: multiplied by D' / D.
WARPTOOLS_PX_COLUMNS = ("rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ")
PARTICLE_SERIES = ("relion5", "warptools")


def fourier_crop(images: Tensor, box: int) -> Tensor:
    """Fourier-crop real images to a smaller box, keeping their real-space value scale.

    Parameters
    ----------
    images : Tensor, float, shape (..., D, D)
        Real images, origin at pixel ``D // 2``, pixel size p.
    box : int
        New box D' (even, at most D).

    Returns
    -------
    Tensor, same dtype, shape (..., D', D')
        The images on the grid of pixel size ``p D / D'``, origin at pixel ``D' // 2``: the centred spectrum
        cropped to its central D' x D' frequencies (the new Nyquist row and column, which have no partner
        on the small grid, keep the real part of their coefficient), transformed back and scaled by
        ``(D' / D)^2``, so that the mean pixel value is unchanged.
    """
    d = images.shape[-1]
    f = fft.crop_center(fft.fft2_center(images), box, 2)
    return (fft.ifft2_center(f).real * ((box / d) ** 2)).to(images.dtype)


def check_box(box: int, old_box: int | None = None) -> None:
    """Refuse a new box that is odd, below :data:`MIN_BOX`, or not smaller than the images' box ``old_box``.

    Raises
    ------
    InputError
        One line naming ``-D``.
    """
    if box % 2:
        raise InputError(f"-D {box}: the new box must be even")
    if box < MIN_BOX:
        raise InputError(f"-D {box}: the new box must be at least {MIN_BOX} pixels")
    if old_box is not None and box >= old_box:
        raise InputError(f"-D {box}: the new box must be smaller than the images' box of {old_box} pixels")


def default_stack_dir(out: Path) -> Path:
    """Where the stacks of ``-o OUT`` go by default: ``X_stacks/`` beside it, for ``X.star`` or
    ``X_optimisation_set.star``."""
    name = out.name[:-len(".star")] if out.name.endswith(".star") else out.name
    if name.endswith("_optimisation_set"):
        name = name[:-len("_optimisation_set")]
    return out.with_name(f"{name or 'downsampled'}_stacks")


@dataclass
class StackPlan:
    """One output stack.

    Attributes
    ----------
    source : Path
        The input stack.
    output : Path
        The output stack.
    rows : numpy.ndarray of int, shape (K,)
        An image row (of the star file) for each output slice, in output order (the input's slice order).
    """

    source: Path
    output: Path
    rows: np.ndarray


def plan_stacks(images: ImageSource, stack_dir: Path) -> tuple[list[StackPlan], np.ndarray, np.ndarray]:
    """One output stack per input stack, each holding the images the star file uses.

    The output stacks keep the input stacks' paths relative to the folder that holds them all
    (``Subtomograms/TS_01/1_stack2d.mrcs`` and ``Subtomograms/TS_02/1_stack2d.mrcs`` give
    ``TS_01/1_stack2d.mrcs`` and ``TS_02/1_stack2d.mrcs`` in ``stack_dir``), so they never clash.

    Parameters
    ----------
    images : ImageSource
    stack_dir : Path

    Returns
    -------
    plans : list of StackPlan
    stack_of_image : numpy.ndarray of int, shape (N_images,)
        The plan holding each image.
    slice_of_image : numpy.ndarray of int, shape (N_images,)
        Its slice there (0-based); images listed twice share one.
    """
    keys = [os.path.abspath(p) for p in images.paths]
    codes, uniques = pd.factorize(pd.Series(keys), sort=False)
    group = codes.astype(np.int64)[images.stack_of]
    common = os.path.commonpath([os.path.dirname(k) for k in uniques])
    plans: list[StackPlan] = []
    slice_of = np.zeros(len(images), dtype=np.int64)
    order = np.argsort(group, kind="stable")
    bounds = np.cumsum(np.bincount(group, minlength=len(uniques)))[:-1]
    for g, rows in enumerate(np.split(order, bounds)):
        _, first, inverse = np.unique(images.index[rows], return_index=True, return_inverse=True)
        slice_of[rows] = inverse
        plans.append(StackPlan(Path(uniques[g]), stack_dir / os.path.relpath(uniques[g], common), rows[first]))
    return plans, group, slice_of


def _number(v: float) -> str:
    """A computed value as star text: ten significant digits, a float kept a float (``12.0``, not ``12``)."""
    text = f"{v:.10g}"
    return text if any(c in text for c in ".en") else f"{text}.0"


def downsampled_values(kind: str, file: StarFile, block: str, box: int, old_box: int, names: dict[int, str]) -> StarFile:
    """The particles' star file with the values that depend on the box changed for a box of ``box`` pixels.

    * ``_rlnImageName`` of each row: ``names`` (the new ``N@stack`` of an image, or a particle's new stack);
    * :data:`PIXEL_COLUMNS` times ``old_box / box``, :data:`BOX_COLUMNS` set to ``box``, on the rows written
      and on the ``data_optics`` rows they refer to;
    * :data:`SHIFT_PX_COLUMNS` of RELION 3 image rows and the :data:`WARPTOOLS_PX_COLUMNS` of WarpTools
      particle rows times ``box / old_box``.

    Every other block, row, column and character stays as it was.

    Parameters
    ----------
    kind : str
        The format (one of :data:`.formats.FORMATS`).
    file : StarFile
        The file that lists them (an :data:`.formats.series.Editor` receives it).
    block : str
        Its table of images (RELION 3) or particles.
    box, old_box : int
        New and old box, pixels.
    names : dict of int to str
        New ``_rlnImageName`` text by row of ``block``; rows not in it are not written.
    """
    table = file.get(block).table(file.path)
    n = len(table)
    rows = np.array(sorted(names), dtype=np.int64)
    where = f"{file.path}: block data_{block}"

    def scaled(df: pd.DataFrame, column: str, factor: float, at: np.ndarray, at_where: str) -> list[str | None]:
        out: list[str | None] = [None] * len(df)
        values = numeric(df, column, at_where)
        for r in at:
            out[r] = _number(values[r] * factor)
        return out

    def box_text(length: int, at: np.ndarray) -> list[str | None]:
        out: list[str | None] = [None] * length
        for r in at:
            out[r] = str(box)
        return out

    px_columns = SHIFT_PX_COLUMNS if kind not in PARTICLE_SERIES else WARPTOOLS_PX_COLUMNS if kind == "warptools" else ()
    values: dict[str, list[str | None]] = {"rlnImageName": [names.get(r) for r in range(n)]}
    for c in PIXEL_COLUMNS:
        if c in table:
            values[c] = scaled(table, c, old_box / box, rows, where)
    for c in px_columns:
        if c in table:
            values[c] = scaled(table, c, box / old_box, rows, where)
    for c in BOX_COLUMNS:
        if c in table:
            values[c] = box_text(n, rows)
    edited = with_values(file, block, values)

    optics = file.get("optics")
    if optics is None or not optics.is_loop or optics.name == block:
        return edited
    opt = optics.table(file.path)
    ow = f"{file.path}: block data_optics"
    if "rlnOpticsGroup" not in opt or not len(opt):
        return edited
    groups_opt = numeric(opt, "rlnOpticsGroup", ow)
    if "rlnOpticsGroup" in table:
        used = numeric(table, "rlnOpticsGroup", where)[rows]
    else:
        used = groups_opt[:1]  # the readers' default: the first optics group
    at = np.flatnonzero(np.isin(groups_opt, used))
    optics_values: dict[str, list[str | None]] = {}
    for c in PIXEL_COLUMNS:
        if c in opt:
            optics_values[c] = scaled(opt, c, old_box / box, at, ow)
    for c in BOX_COLUMNS:
        if c in opt:
            optics_values[c] = box_text(len(opt), at)
    return with_values(edited, "optics", optics_values) if optics_values else edited


def _image_number(name: str, number: int) -> str:
    """``N@`` in the width of the original name's number (Warp writes ``000001@``)."""
    head = name.split("@", 1)[0] if "@" in name else ""
    width = len(head) if head.startswith("0") and len(head) > 1 else 0
    return f"{number:0{width}d}"


@dataclass
class DownsampleResult:
    """What :func:`downsample` wrote.

    Attributes
    ----------
    star_files : list of Path
        The star files (an optimisation set first).
    stacks : list of Path
        The image stacks.
    n_particles, n_images : int
        Particles and tilt images (rows) written.
    n_slices : int
        Images in the stacks (an image listed twice is written once).
    old_box, box : int
        Pixels.
    old_pixel_size, pixel_size : float
        A per pixel.
    """

    star_files: list[Path]
    stacks: list[Path]
    n_particles: int
    n_images: int
    n_slices: int
    old_box: int
    box: int
    old_pixel_size: float
    pixel_size: float


def planned_star_files(star: TiltSeriesStar, out: Path) -> list[Path]:
    """The star files :meth:`.star.TiltSeriesStar.write_subset` writes for ``out``: an optimisation set and
    its particles.star when the input was an optimisation set, else ``out``."""
    given_optset = star.source in PARTICLE_SERIES and Path(star.path).resolve() != Path(star.image_anchor).resolve()
    return list(optimisation_set_paths(out)) if given_optset else [out]


def downsample(star: TiltSeriesStar, images: ImageSource, box: int, out: str | os.PathLike,
               stack_dir: str | os.PathLike | None = None, batch_size: int = 1000, device: str = "cpu") -> DownsampleResult:
    """Fourier-crop every image of ``star`` to ``box`` and write the set in its own format.

    Parameters
    ----------
    star : TiltSeriesStar
        The particles, in any format of :mod:`.formats`.
    images : ImageSource
        Their images; read as needed (give it ``lazy=True``: the images are never all in memory here).
    box : int
        New box D' in pixels: even, at least :data:`MIN_BOX`, smaller than the images' box D.
    out : path-like
        The output star file: an image-series star, or for an optimisation set the new optimisation set
        (``X_optimisation_set.star``, with ``X_particles.star`` beside it and the same tomograms.star).
    stack_dir : path-like, optional
        Folder of the output stacks (default :func:`default_stack_dir`).
    batch_size : int
        Images cropped at once.
    device : str
        Torch device of the FFTs.

    Returns
    -------
    DownsampleResult

    Raises
    ------
    InputError
        For a bad box or batch size, an output that would replace an input, or a particle-series stack
        shared by several particles; before anything is written.
    """
    out = Path(out)
    stack_dir = Path(stack_dir) if stack_dir is not None else default_stack_dir(out)
    if batch_size < 1:
        raise InputError(f"--batch-size {batch_size}: must be >= 1")
    check_box(box, images.box)
    protect_inputs(star.path, star.image_anchor)
    old_box, old_pixel = images.box, star.pixel_size
    pixel = old_pixel * old_box / box
    plans, stack_of, slice_of = plan_stacks(images, stack_dir)
    stars = planned_star_files(star, out)
    check_outputs(stars + [p.output for p in plans])
    clash = {os.path.abspath(p) for p in stars} & {os.path.abspath(p.output) for p in plans}
    if clash:
        raise InputError(f"{clash.pop()}: both a star file and a stack of the output; choose another --stack-dir")

    row_of = star.row_of_image
    refs = [os.path.abspath(p.output) for p in plans]
    names: dict[int, str] = {}
    if star.source in PARTICLE_SERIES:
        pairs = np.unique(np.stack([stack_of, star.particle_index], 1), axis=0)
        shared = np.flatnonzero(np.bincount(pairs[:, 0], minlength=len(plans)) > 1)
        if len(shared):
            owners = pairs[pairs[:, 0] == shared[0], 1]
            raise InputError(f"{plans[shared[0]].source}: the stack of several particles ({star.particle_ids[owners[0]]}, "
                             f"{star.particle_ids[owners[1]]}); a particle series has one stack per particle")
        for i in range(star.n_images):
            names[int(row_of[i])] = refs[stack_of[i]]
    else:
        for i, name in enumerate(star.image_names):
            ref = refs[stack_of[i]]
            names[int(row_of[i])] = f"{_image_number(name, int(slice_of[i]) + 1)}@{ref}" if "@" in name else ref

    n_slices = sum(len(p.rows) for p in plans)
    log.info("%s (%s): %d particles, %d tilt images in %d stacks: box %d -> %d px, %g -> %g A/px", star.path, star.source,
             star.n_particles, star.n_images, len(plans), old_box, box, old_pixel, pixel)
    progress = Progress(n_slices, "downsampled", "images", log)
    with all_or_nothing():
        for plan in plans:
            _write_stack(plan, images, box, pixel, batch_size, device, progress)
        images.close()

        def edit(file: StarFile, block: str) -> StarFile:
            return downsampled_values(star.source, file, block, box, old_box, names)

        written = star.write_subset(np.arange(star.n_particles), out, edit=edit)
    return DownsampleResult(written, [p.output for p in plans], star.n_particles, star.n_images, n_slices, old_box, box,
                            old_pixel, pixel)


def _write_stack(plan: StackPlan, images: ImageSource, box: int, pixel: float, batch_size: int, device: str,
                 progress: Progress) -> None:
    # The stack writer renames into the temporary of atomic_write, whose own rename waits for the end of the
    # command (all_or_nothing): a run that stops half-way leaves no stack under its final name.
    with atomic_write(plan.output) as tmp:
        writer = StackWriter(tmp, len(plan.rows), box, pixel)
        try:
            for start in range(0, len(plan.rows), batch_size):
                rows = plan.rows[start:start + batch_size]
                small = fourier_crop(torch.from_numpy(images.get(rows)).to(device), box)
                writer.write(start, small.cpu().numpy())
                progress.update(len(rows))
        except BaseException:
            writer.abort()
            raise
        writer.close()


# ---------------------------------------------------------------------------------------------- command
def add_downsample(p: argparse.ArgumentParser) -> None:
    """Arguments of ``downsample``."""
    from .cliutil import PARTICLES_HELP, add_device_arg, add_format_args

    p.description = (
        "Fourier-crop particle tilt series to a smaller box (e.g. 128 -> 64 to train faster) and write them in the "
        "input's own format: new float32 stacks, one per input stack, and a star file (optimisation set) naming them, "
        "with the pixel size, box, pixel shifts and image names changed and every other block, column and text kept. "
        "Pixel values keep their scale (the mean pixel value is unchanged); CTF-premultiplied images stay "
        "premultiplied.")
    p.add_argument("particles", type=Path, help=PARTICLES_HELP)
    p.add_argument("-D", "--downsample", type=int, required=True, metavar="BOX",
                   help=f"new box size in pixels: even, >= {MIN_BOX}, smaller than the images' box")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="output star file, in the input's format: for an optimisation set the new optimisation set "
                        "(X_optimisation_set.star; its X_particles.star is written beside it and names the same tomograms.star)")
    p.add_argument("--stack-dir", type=Path,
                   help="folder of the new stacks (default: X_stacks beside the output X.star or X_optimisation_set.star); "
                        "the star names them by absolute path")
    p.add_argument("-b", "--batch-size", type=int, default=1000, help="images cropped at once (default: 1000)")
    p.add_argument("--datadir", type=Path, help="second folder to look for image stacks in (after the star file's folder)")
    add_format_args(p.add_argument_group("format"))
    add_device_arg(p)


def run_downsample(a: argparse.Namespace) -> None:
    """Run ``downsample``."""
    from .cliutil import format_kwargs, resolve_device

    check_box(a.downsample)
    if a.output.suffix != ".star":
        raise InputError(f"{a.output}: the output must be a .star file")
    device = resolve_device(a.device)
    star = TiltSeriesStar(a.particles, **format_kwargs(a))
    images = ImageSource(star.image_names, star.image_anchor, datadir=a.datadir, lazy=True, named_in=star.path)
    r = downsample(star, images, a.downsample, a.output, a.stack_dir, a.batch_size, device)
    print(f"downsampled {r.n_images} tilt images of {r.n_particles} particles ({star.source}): box {r.old_box} -> {r.box} px, "
          f"{r.old_pixel_size:g} -> {r.pixel_size:g} A/px")
    for path in r.star_files:
        print(f"star: {path}")
    print(f"stacks: {len(r.stacks)} in {a.stack_dir or default_stack_dir(a.output)}")
