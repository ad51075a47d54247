"""The ``tomodrgn-scipion`` command line: ``tomodrgn-scipion <command> [options]``.

Command and flag names follow tomoDRGN's where they mean the same thing. Bad input ends the
command with one line on stderr naming the file, row or column at fault, and exit status 2; a
training run that cannot go on (non-finite loss) ends with one line and exit status 3.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
from pathlib import Path
from typing import Callable, Sequence


from . import cli_analysis, cli_train, convergence, downsample, mapback, volume_analysis
from .cliutil import PARTICLES_HELP, add_data_args, add_device_arg, format_kwargs, load_particle_selection, resolve_device
from .errors import InputError, MethodError, TrainingError
from .cliutil import check_finite_options, protect_argument_files
from .outputs import all_or_nothing

log = logging.getLogger("tomodrgn_scipion")


# ----------------------------------------------------------------------------------------------- simulate
def add_simulate(p: argparse.ArgumentParser) -> None:
    """Arguments of ``simulate``."""
    from .simulate import SimulationConfig

    c = SimulationConfig()
    p.add_argument("-o", "--outdir", type=Path, required=True,
                   help="output folder (particles.star, particles_volumes.star for mapback, stacks/, ground truth)")
    p.add_argument("--volumes", type=Path, nargs="+", help="ground-truth volumes (.mrc); default: the built-in two-state phantom")
    p.add_argument("--phantom-box", type=int, default=32, help="box of the built-in phantom, pixels (default: 32)")
    p.add_argument("--pixel-size", type=float, help=f"A per pixel (default: the volume header's; {c.pixel_size} for the phantom)")
    p.add_argument("-n", "--n-particles", type=int, default=c.n_particles, help=f"number of particles (default: {c.n_particles})")
    p.add_argument("--particles-per-tomogram", type=int, default=c.particles_per_tomogram)
    p.add_argument("--tilt-max", type=float, default=c.tilt_max, help="largest stage tilt, degrees")
    p.add_argument("--tilt-step", type=float, default=c.tilt_step, help="tilt increment, degrees")
    p.add_argument("--tilt-scheme", choices=("dose-symmetric", "sequential", "bidirectional"), default=c.tilt_scheme)
    p.add_argument("--dose-per-tilt", type=float, default=c.dose_per_tilt, help="e/A^2 per tilt image")
    p.add_argument("--voltage", type=float, default=c.voltage, help="kV")
    p.add_argument("--cs", type=float, default=c.cs, help="spherical aberration, mm")
    p.add_argument("--amplitude-contrast", type=float, default=c.amplitude_contrast)
    p.add_argument("--phase-shift", type=float, default=c.phase_shift, help="phase-plate shift, degrees")
    p.add_argument("--defocus-min", type=float, default=c.defocus_min, help="A, per tomogram")
    p.add_argument("--defocus-max", type=float, default=c.defocus_max, help="A, per tomogram")
    p.add_argument("--astigmatism", type=float, default=c.astigmatism, help="largest |dfU - dfV|, A")
    p.add_argument("--shift-std", type=float, default=c.shift_std, help="std of the origin shifts, pixels")
    p.add_argument("--snr", type=float, default=c.snr, help="signal variance / noise variance; 0 for no noise")
    p.add_argument("--contrast", choices=("light", "dark"), default=c.contrast,
                   help="protein-light, as Warp/RELION export (default), or protein-dark, as recorded")
    p.add_argument("--uninvert-data", action="store_true",
                   help="write protein-dark images (same as --contrast dark): data to be read with --uninvert-data")
    p.add_argument("--datadir", type=Path,
                   help="write the image stacks here instead of OUTDIR/stacks (the star then names them by file name: read with --datadir)")
    p.add_argument("--continuous", action="store_true", help="mix two volumes with a random coefficient per particle")
    p.add_argument("--pad", type=int, default=c.pad, help="Fourier oversampling of the projector")
    p.add_argument("--chunk-images", type=int, default=c.chunk_images, help="images held in memory at once")
    p.add_argument("--seed", type=int, default=c.seed)
    p.add_argument("--layout", choices=("relion3", "relion31", "relion5", "warptools"), default=c.layout,
                   help="files to write: relion3 (Warp 1/M image series, default), relion31 (with data_optics), relion5 "
                        "(optimisation set, 2D stacks per particle, tilt-series stars), warptools (ts_export_particles --2d)")
    p.add_argument("--premultiply", action="store_true",
                   help="multiply the images by their CTF, as RELION 5 and WarpTools export them (_rlnCtfDataAreCtfPremultiplied 1)")
    p.add_argument("--tilt-axis", type=float, default=c.tilt_axis,
                   help="in-plane angle of the tilt axis, degrees (RELION 5 _rlnTomoZRot; default 0: the image Y axis)")
    p.add_argument("--tilt-series-geometry", action="store_true",
                   help="one 3D origin per particle and one astigmatism per tilt, as particle-series files describe them "
                        "(always so with --layout relion5/warptools): the same images in every layout")


def run_simulate(a: argparse.Namespace) -> None:
    """Run ``simulate``."""
    from .phantom import two_state_phantom
    from .simulate import SimulationConfig, simulate
    from .stacks import read_volume

    if a.volumes:
        loaded = [read_volume(v) for v in a.volumes]
        vols = [v for v, _ in loaded]
        shapes = {v.shape for v in vols}
        if len(shapes) > 1:
            raise InputError(f"{a.volumes[1]}: volumes differ in size ({', '.join(str(s) for s in shapes)})")
        if vols[0].shape[0] % 2:
            raise InputError(f"{a.volumes[0]}: box of {vols[0].shape[0]} pixels is odd; boxes must be even")
        pixel = a.pixel_size or loaded[0][1]
    else:
        if a.phantom_box < 8 or a.phantom_box % 2:
            raise InputError(f"--phantom-box must be an even number >= 8, got {a.phantom_box}")
        vols = list(two_state_phantom(a.phantom_box))
        pixel = a.pixel_size or SimulationConfig.pixel_size
    if a.continuous and len(vols) != 2:
        raise InputError(f"--continuous mixes exactly two volumes, got {len(vols)}")
    for name, value in (("--n-particles", a.n_particles), ("--particles-per-tomogram", a.particles_per_tomogram),
                        ("--pad", a.pad), ("--chunk-images", a.chunk_images)):
        if value < 1:
            raise InputError(f"{name} must be >= 1, got {value}")
    if a.snr < 0 or a.tilt_step <= 0 or a.tilt_max < 0 or pixel <= 0:
        raise InputError("--snr, --tilt-max must be >= 0 and --tilt-step, --pixel-size > 0")
    cfg = SimulationConfig(
        n_particles=a.n_particles, particles_per_tomogram=a.particles_per_tomogram, pixel_size=pixel,
        tilt_max=a.tilt_max, tilt_step=a.tilt_step, tilt_scheme=a.tilt_scheme, dose_per_tilt=a.dose_per_tilt,
        voltage=a.voltage, cs=a.cs, amplitude_contrast=a.amplitude_contrast, phase_shift=a.phase_shift,
        defocus_min=a.defocus_min, defocus_max=a.defocus_max, astigmatism=a.astigmatism, shift_std=a.shift_std,
        snr=a.snr, contrast="dark" if a.uninvert_data else a.contrast, continuous=a.continuous, pad=a.pad,
        chunk_images=a.chunk_images, seed=a.seed, stack_dir=str(a.datadir) if a.datadir else None,
        layout=a.layout, premultiply=a.premultiply, tilt_axis=a.tilt_axis, tilt_series_geometry=a.tilt_series_geometry,
    )
    info = simulate(vols, a.outdir, cfg)
    kind = "continuous (mixing.txt)" if a.continuous else f"{len(vols)} discrete states (labels.txt)"
    print(f"simulated {info['n_particles']} particles, {info['n_images']} tilt images, box {info['box']} px at {pixel:g} A/px, {kind}")
    print(f"star file ({a.layout}{', CTF-premultiplied' if a.premultiply else ''}): {info['star']}")
    print(f"volume-series star (particle coordinates and orientations in the tomograms, for mapback): {info['volume_star']}")
    print(f"ground truth: {Path(a.outdir) / 'ground_truth.csv'}, volumes: {', '.join(str(v) for v in info['volumes'])}")


# -------------------------------------------------------------------------------------------- backproject
def add_backproject(p: argparse.ArgumentParser) -> None:
    """Arguments of ``backproject``."""
    p.add_argument("particles", type=Path, help=PARTICLES_HELP)
    p.add_argument("-o", "--output", type=Path, required=True, help="output map (.mrc); half maps, filtered map and FSC go beside it")
    add_data_args(p)
    p.add_argument("--ind", type=Path, help="particle indices to use (.txt one per line or .npy; 0-based, order of first appearance)")
    p.add_argument("--first", type=int, help="use only the first N particles (after --ind)")
    p.add_argument("--recon-tilt-weight", action="store_true", help="weight images by cos(stage tilt)")
    p.add_argument("--recon-dose-weight", action="store_true", help="weight frequencies by their dose attenuation")
    p.add_argument("--l-dose-mask", action="store_true", help="drop frequencies exposed beyond 2.51284 x the critical dose")
    p.add_argument("--pad", type=int, default=2, help="Fourier oversampling (default: 2)")
    p.add_argument("-b", "--batch-size", type=int, default=256, help="images back-projected at once (default: 256)")
    add_device_arg(p)


#: What ``backproject -o MAP.mrc`` writes beside ``MAP.mrc``.
BACKPROJECT_SUFFIXES = ("_half1.mrc", "_half2.mrc", "_filtered.mrc", "_fsc.csv", "_fsc.png")


def run_backproject(a: argparse.Namespace) -> None:
    """Run ``backproject``."""
    from .backproject import backproject
    from .dataset import TiltSeriesData
    from .outputs import check_outputs, plot_fsc, write_fsc_csv
    from .stacks import write_mrc

    out = a.output if a.output.suffix == ".mrc" else a.output.with_suffix(".mrc")
    if a.pad < 1 or a.batch_size < 1:
        raise InputError("--pad and --batch-size must be >= 1")
    a.device = resolve_device(a.device)
    data = TiltSeriesData(a.particles, datadir=a.datadir, lazy=a.lazy, invert=not a.uninvert_data,
                          window=a.window, window_r=tuple(a.window_r), **format_kwargs(a))
    sel = load_particle_selection(a.ind, a.first, data.n_particles)
    check_outputs([out] + [Path(f"{out.with_suffix('')}{s}") for s in BACKPROJECT_SUFFIXES])
    if len(sel) < 2:
        raise InputError("at least two particles are needed for half maps and FSC")
    log.info("%s (%s): %d particles, %d tilt images, box %d px, %g A/px%s", a.particles, data.star.source,
             data.n_particles, data.n_images, data.box, data.pixel_size,
             ", CTF-premultiplied" if data.star.ctf_premultiplied.any() else "")
    r = backproject(data, sel, pad=a.pad, dose_weight=a.recon_dose_weight, tilt_weight=a.recon_tilt_weight,
                    dose_mask=a.l_dose_mask, batch_images=a.batch_size, device=a.device)
    stem = out.with_suffix("")
    paths = {
        "map": out, "half1": Path(f"{stem}_half1.mrc"), "half2": Path(f"{stem}_half2.mrc"),
        "filtered": Path(f"{stem}_filtered.mrc"), "fsc_csv": Path(f"{stem}_fsc.csv"), "fsc_png": Path(f"{stem}_fsc.png"),
    }
    write_mrc(paths["map"], r.full, r.pixel_size)
    write_mrc(paths["half1"], r.half1, r.pixel_size)
    write_mrc(paths["half2"], r.half2, r.pixel_size)
    write_mrc(paths["filtered"], r.filtered, r.pixel_size)
    write_fsc_csv(paths["fsc_csv"], r.fsc, data.box, r.pixel_size)
    plot_fsc(paths["fsc_png"], r.fsc, data.box, r.pixel_size, r.freq_0143, title=str(a.particles.name))
    print(f"back-projected {r.n_images} tilt images of {r.n_particles} particles")
    print(f"FSC = 0.143 at {r.resolution_0143:.1f} A (Nyquist {2 * r.pixel_size:.1f} A)")
    for k, v in paths.items():
        print(f"{k}: {v}")


COMMANDS: dict[str, tuple[Callable, Callable, str]] = {
    "simulate": (add_simulate, run_simulate, "simulate Warp-style particle tilt series with known ground truth"),
    "backproject": (add_backproject, run_backproject, "homogeneous reconstruction by Fourier back-projection, with half maps and FSC"),
    "train_vae": (cli_train.add_train_vae, cli_train.run_train_vae, "learn heterogeneity: train the VAE (encoder, latent z, decoder)"),
    "train_nn": (cli_train.add_train_nn, cli_train.run_train_nn, "homogeneous reconstruction with the decoder alone (reconstruct.mrc)"),
    "eval_vol": (cli_train.add_eval_vol, cli_train.run_eval_vol, "generate volumes from a trained model at latent points"),
    "eval_images": (cli_train.add_eval_images, cli_train.run_eval_images, "embed particles with a trained encoder (z per particle)"),
    "analyze": (cli_analysis.add_analyze, cli_analysis.run_analyze,
                "explore a trained latent space: PCA, UMAP, k-means, volumes, traversals, metadata controls"),
    "pc_traversal": (cli_analysis.add_pc_traversal, cli_analysis.run_pc_traversal,
                     "latent points along principal components (z files for eval_vol)"),
    "graph_traversal": (cli_analysis.add_graph_traversal, cli_analysis.run_graph_traversal,
                        "latent points along the shortest path between particles in a neighbour graph"),
    "convergence_vae": (convergence.add_convergence_vae, convergence.run_convergence_vae,
                        "judge whether train_vae has converged, from its checkpoints"),
    "filter": (cli_analysis.add_filter, cli_analysis.run_filter,
               "keep or drop whole particles (by index or cluster label), written in the input's own format"),
    "mapback": (mapback.add_mapback, mapback.run_mapback,
                "ChimeraX scripts placing particles, coloured by cluster, in their tomograms"),
    "analyze_volumes": (volume_analysis.add_analyze_volumes, volume_analysis.run_analyze_volumes,
                        "PCA and k-means over a set of generated volumes"),
    "downsample": (downsample.add_downsample, downsample.run_downsample,
                   "Fourier-crop particle tilt series to a smaller box, written in the input's own format"),
}


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command."""
    parser = argparse.ArgumentParser(prog="tomodrgn-scipion", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    for name, (add, _, help_) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_, description=help_)
        add(sp)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``tomodrgn-scipion``; returns the exit status."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parser.parse_args(argv)
    a.argv = argv
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    t0 = time.time()
    try:
        check_finite_options(a)
        protect_argument_files(a)
        if a.threads:
            import torch

            torch.set_num_threads(a.threads)
        # training writes checkpoints as it goes (a killed run resumes from them); every other command's
        # outputs appear together when it ends well
        with contextlib.nullcontext() if a.command in ("train_vae", "train_nn") else all_or_nothing():
            COMMANDS[a.command][1](a)
    except MethodError as exc:
        print(f"tomodrgn-scipion {a.command}: error: {exc}", file=sys.stderr)
        return 3 if isinstance(exc, TrainingError) else 2
    except OSError as exc:  # an OS error no writer turned into a line of its own
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"tomodrgn-scipion {a.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tomodrgn-scipion {a.command}: interrupted", file=sys.stderr)
        return 130
    log.debug("%s finished in %.1f s", a.command, time.time() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
