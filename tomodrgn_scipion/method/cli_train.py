"""Commands ``train_vae``, ``train_nn``, ``eval_vol`` and ``eval_images`` of ``tomodrgn-scipion``."""
from __future__ import annotations

import argparse
import datetime
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .cliutil import PARTICLES_HELP, add_data_args, add_device_arg, add_format_args, format_kwargs, load_particle_selection, resolve_device
from .errors import InputError
from .formats import DESCRIPTION

if TYPE_CHECKING:
    from .distributed import Context
    from .models import TomoModel
    from .particles import ParticleTiltData
    from .training import TrainSettings

log = logging.getLogger("tomodrgn_scipion")


def _add_selection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ind", type=Path, help="particle indices to use (.txt one per line or .npy; 0-based, order of first appearance)")
    p.add_argument("--first", type=int, help="use only the first N particles (after --ind)")


def _add_loss_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("tilt series")
    g.add_argument("--recon-tilt-weight", action="store_true", help="weight the reconstruction error of each image by cos(stage tilt)")
    g.add_argument("--recon-dose-weight", action="store_true", help="weight the reconstruction error per frequency by its dose attenuation")
    g.add_argument("--l-dose-mask", action="store_true", help="do not train on frequencies exposed beyond 2.51284 x the critical dose")


def _add_training_args(p: argparse.ArgumentParser, epochs: int, batch: int) -> None:
    g = p.add_argument_group("training")
    g.add_argument("-n", "--num-epochs", type=int, default=epochs, help=f"number of training epochs (default: {epochs})")
    g.add_argument("-b", "--batch-size", type=int, default=batch, help=f"particles per minibatch (default: {batch})")
    g.add_argument("--lr", type=float, default=2e-4,
                   help="learning rate of the AdamW optimiser; scale it with the batch size (default: 2e-4)")
    g.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant",
                   help="constant, or a half cosine from --lr down to --lr/100 over the run (default: constant)")
    g.add_argument("--wd", type=float, default=0.0, help="weight decay of the AdamW optimiser (default: 0)")
    g.add_argument("--seed", type=int, default=0, help="random seed: same seed, data and device give the same result (default: 0)")
    g.add_argument("--checkpoint", type=int, default=1, help="write weights.E.pt every N epochs, 0 for only the last (default: 1)")
    g.add_argument("--load", metavar="PATH|latest", help="resume from a checkpoint, or from the latest one in OUTDIR")
    g.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA (the CPU always computes in float32)")
    add_device_arg(g)
    g.add_argument("--num-workers", type=int, default=0,
                   help="background threads reading the next batches' images from disk while the current one trains "
                        "(for streamed data; default: 0)")
    g.add_argument("--no-lazy", dest="lazy", action="store_false",
                   help="keep every preprocessed image in memory on the training device, however large the set "
                        "(default: in memory when it takes at most half the free memory, else streamed as with --lazy)")
    g.add_argument("--num-gpus", type=int, default=1,
                   help="train on N GPUs of this machine with DistributedDataParallel, one process each (ranks use "
                        "cuda:0..N-1 of CUDA_VISIBLE_DEVICES; with --device cpu, N CPU processes); -b is the batch of "
                        "all GPUs together. Under torchrun leave it at 1: torchrun says how many (default: 1)")
    g.add_argument("--max-steps", type=int, default=0,
                   help="stop after this many optimiser steps and finish as after the last epoch (benchmarks; default: no limit)")
    p.set_defaults(lazy=None)


def _add_decoder_args(p: argparse.ArgumentParser, prefix: str) -> None:
    from .models import PE_TYPES

    g = p.add_argument_group("decoder network")
    names = ["--dec-layers"] if prefix == "dec" else ["--layers", "--dec-layers"]
    g.add_argument(*names, dest="dec_layers", type=int, default=3, help="hidden layers (default: 3)")
    names = ["--dec-dim"] if prefix == "dec" else ["--dim", "--dec-dim"]
    g.add_argument(*names, dest="dec_dim", type=int, default=256, help="nodes per hidden layer (default: 256)")
    g.add_argument("--pe-type", choices=PE_TYPES, default="geom_lowf", help="positional encoding of Fourier coordinates (default: geom_lowf)")
    g.add_argument("--pe-dim", type=int, help="features per axis of the positional encoding (default: box/2)")
    g.add_argument("--feat-sigma", type=float, default=0.5, help="scale of the random Gaussian features, --pe-type gaussian (default: 0.5)")


def add_train_vae(p: argparse.ArgumentParser) -> None:
    """Arguments of ``train_vae``."""
    from .models import POOLING

    p.add_argument("particles", type=Path, help=PARTICLES_HELP)
    p.add_argument("-o", "--outdir", type=Path, required=True, help="output folder")
    p.add_argument("--zdim", type=int, required=True, help="dimension of the latent variable")
    add_data_args(p)
    _add_selection_args(p)
    _add_loss_args(p)
    p.add_argument("--ntilts", type=int, help="tilts per particle given to the encoder, lowest dose first; particles with fewer are dropped (default: the smallest count in the data)")
    p.add_argument("--tilt-sampling", choices=("lowest-dose", "random"), default="lowest-dose",
                   help="tilts the encoder sees during training: the --ntilts lowest-dose ones, lowest first (default), or a "
                        "random choice of --ntilts in random order each epoch, as tomoDRGN does; inference always uses the lowest-dose ones")
    _add_training_args(p, epochs=20, batch=1)
    p.add_argument("--beta", help="KL weight: a number, linear:START:END:EPOCHS or cyclic:MAX:PERIOD (default: 1/zdim)")
    g = p.add_argument_group("encoder network")
    g.add_argument("--enc-layers-A", dest="enc_layers_A", type=int, default=3, help="hidden layers of the per-tilt encoder (default: 3)")
    g.add_argument("--enc-dim-A", dest="enc_dim_A", type=int, default=256, help="nodes per hidden layer of the per-tilt encoder (default: 256)")
    g.add_argument("--out-dim-A", dest="out_dim_A", type=int, default=128, help="output size of the per-tilt encoder (default: 128)")
    g.add_argument("--enc-layers-B", dest="enc_layers_B", type=int, default=3, help="hidden layers of the pooled encoder (default: 3)")
    g.add_argument("--enc-dim-B", dest="enc_dim_B", type=int, default=256, help="nodes per hidden layer of the pooled encoder (default: 256)")
    g.add_argument("--pooling-function", choices=POOLING, default="concatenate",
                   help="how per-tilt encodings are pooled (default: concatenate)")
    _add_decoder_args(p, "dec")


def add_train_nn(p: argparse.ArgumentParser) -> None:
    """Arguments of ``train_nn``."""
    p.add_argument("particles", type=Path, help=PARTICLES_HELP)
    p.add_argument("-o", "--outdir", type=Path, required=True, help="output folder")
    add_data_args(p)
    _add_selection_args(p)
    _add_loss_args(p)
    _add_training_args(p, epochs=20, batch=1)
    _add_decoder_args(p, "nn")


def _prepare(a: argparse.Namespace, zdim: int, ctx: "Context",
             norm: float | None = None) -> tuple["TrainSettings", "ParticleTiltData", dict]:
    """Data and settings shared by ``train_vae`` and ``train_nn``."""
    from .dataset import TiltSeriesData
    from .particles import ParticleTiltData
    from .training import TrainSettings

    settings = TrainSettings(
        num_epochs=a.num_epochs, batch_size=a.batch_size, lr=a.lr, wd=a.wd, beta=getattr(a, "beta", None), seed=a.seed,
        recon_dose_weight=a.recon_dose_weight, recon_tilt_weight=a.recon_tilt_weight, l_dose_mask=a.l_dose_mask,
        checkpoint=a.checkpoint, amp=not a.no_amp, num_workers=a.num_workers,
        tilt_sampling=getattr(a, "tilt_sampling", "lowest-dose"), lr_schedule=a.lr_schedule, max_steps=a.max_steps,
    )
    settings.check()
    if a.num_workers < 0:
        raise InputError(f"--num-workers {a.num_workers}: must be >= 0")
    device = str(ctx.device)
    # the stacks stay memory-mapped: ParticleTiltData keeps the preprocessed transforms in memory, or
    # streams, and raw images are never held twice
    data = TiltSeriesData(a.particles, datadir=a.datadir, lazy=True, invert=not a.uninvert_data,
                          window=a.window, window_r=tuple(a.window_r), **format_kwargs(a))
    log.info("%s: %s%s", a.particles, DESCRIPTION[data.star.source],
             ", CTF-premultiplied" if data.star.ctf_premultiplied.any() else "")
    sel = load_particle_selection(a.ind, a.first, data.n_particles)
    ntilts = getattr(a, "ntilts", None) if zdim > 0 else 0
    if ntilts is not None and zdim > 0 and ntilts < 1:
        raise InputError(f"--ntilts {ntilts}: must be >= 1")
    pdata = ParticleTiltData(data, sel, ntilts=ntilts, norm=norm, dose_weight=a.recon_dose_weight,
                             tilt_weight=a.recon_tilt_weight, dose_mask=a.l_dose_mask, device=device, seed=a.seed,
                             in_memory=None if a.lazy is None else not a.lazy)
    data_cfg = {
        "particles": str(Path(a.particles).resolve()), "datadir": str(Path(a.datadir).resolve()) if a.datadir else None,
        "source_software": data.star.source, "tomograms": str(Path(a.tomograms).resolve()) if a.tomograms else None,
        "ctf_premultiplied": format_kwargs(a)["ctf_premultiplied"], "dose_weighted": format_kwargs(a)["dose_weighted"],
        "invert": not a.uninvert_data, "window": a.window, "window_r": list(a.window_r), "norm": pdata.norm,
        "box": data.box, "pixel_size": data.pixel_size, "ntilts": pdata.ntilts,
        "ind": str(Path(a.ind).resolve()) if a.ind else None, "first": a.first,
        "n_particles": pdata.n_particles, "n_images": pdata.n_images, "n_dropped": pdata.n_dropped,
    }
    return settings, pdata, data_cfg


def _extra(a: argparse.Namespace) -> dict:
    from .. import __version__

    return {"command": a.command, "argv": ["tomodrgn-scipion"] + list(getattr(a, "argv", sys.argv[1:])),
            "version": __version__, "created": datetime.datetime.now().isoformat(timespec="seconds")}


def _resume_norm(a: argparse.Namespace) -> float | None:
    """The normalisation of the checkpoint to resume from (the data must be scaled as before)."""
    from .training import latest_checkpoint, load_checkpoint

    if not a.load:
        return None
    path = latest_checkpoint(a.outdir) if a.load == "latest" else Path(a.load)
    return float(load_checkpoint(path)["norm"])


def _distributed(a: argparse.Namespace, run) -> None:
    """Run a training command: as ``--num-gpus`` ranks started here, as one rank of a torchrun
    launch, or as one process."""
    from .distributed import in_launched_rank, launch, setup, shutdown

    if a.num_gpus < 1:
        raise InputError(f"--num-gpus {a.num_gpus}: must be >= 1")
    if a.num_gpus > 1 and not in_launched_rank():
        device = resolve_device(a.device)
        if device.startswith("cuda"):
            import torch

            if torch.cuda.device_count() < a.num_gpus:
                log.info("--num-gpus %d: torch sees %d GPU(s); ranks share them (gloo)", a.num_gpus, torch.cuda.device_count())
        log.info("starting %d ranks on %s", a.num_gpus, "the CPU" if device == "cpu" else "the GPUs")
        rc = launch(a.argv, a.num_gpus)
        if rc:
            raise SystemExit(rc)
        return
    ctx = setup(resolve_device(a.device))
    run(a, ctx)
    # after a failure the process just ends: the launcher (or torchrun) stops the other ranks, which may
    # be waiting in a collective that a shutdown here would not match
    shutdown(ctx)


def run_train_vae(a: argparse.Namespace) -> None:
    """Run ``train_vae``."""
    _distributed(a, _train_vae)


def run_train_nn(a: argparse.Namespace) -> None:
    """Run ``train_nn``."""
    _distributed(a, _train_nn)


def _train_vae(a: argparse.Namespace, ctx: "Context") -> None:
    from .models import ModelConfig
    from .training import train

    if a.zdim <= 0:
        raise InputError(f"--zdim {a.zdim}: must be > 0 (use train_nn for a homogeneous reconstruction)")
    settings, pdata, data_cfg = _prepare(a, a.zdim, ctx, _resume_norm(a))
    model_cfg = ModelConfig(
        box=pdata.data.box, zdim=a.zdim, dec_layers=a.dec_layers, dec_dim=a.dec_dim, pe_type=a.pe_type, pe_dim=a.pe_dim,
        feat_sigma=a.feat_sigma, enc_in_dim=pdata.enc_in_dim, ntilts=pdata.ntilts, enc_layers_A=a.enc_layers_A,
        enc_dim_A=a.enc_dim_A, out_dim_A=a.out_dim_A, enc_layers_B=a.enc_layers_B, enc_dim_B=a.enc_dim_B,
        pooling_function=a.pooling_function, pe_seed=a.seed,
    )
    history = train(model_cfg, settings, pdata, a.outdir, data_cfg, _extra(a), a.load, ctx)
    if not ctx.main:
        return
    print(f"trained {len(history)} epochs on {pdata.n_particles} particles; final reconstruction loss {history[-1].recon:.6f}")
    print(f"latent means: {a.outdir / 'z.npy'} ({pdata.n_particles} x {a.zdim}); weights: {a.outdir / 'weights.pt'}; config: {a.outdir / 'config.json'}")


def _train_nn(a: argparse.Namespace, ctx: "Context") -> None:
    from .models import ModelConfig
    from .training import train

    settings, pdata, data_cfg = _prepare(a, 0, ctx, _resume_norm(a))
    model_cfg = ModelConfig(box=pdata.data.box, zdim=0, dec_layers=a.dec_layers, dec_dim=a.dec_dim, pe_type=a.pe_type,
                            pe_dim=a.pe_dim, feat_sigma=a.feat_sigma, pe_seed=a.seed)
    history = train(model_cfg, settings, pdata, a.outdir, data_cfg, _extra(a), a.load, ctx)
    if not ctx.main:
        return
    print(f"trained {len(history)} epochs on {pdata.n_particles} particles; final reconstruction loss {history[-1].recon:.6f}")
    print(f"volume: {a.outdir / 'reconstruct.mrc'}; weights: {a.outdir / 'weights.pt'}; config: {a.outdir / 'config.json'}")


# ---------------------------------------------------------------------------------------- inference
def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-w", "--weights", type=Path, required=True, help="weights.pt (or weights.E.pt) of train_vae or train_nn")
    p.add_argument("-c", "--config", type=Path, required=True, help="config.json of the same run")
    add_device_arg(p)


def _load_model(a: argparse.Namespace) -> tuple["TomoModel", dict, dict]:
    from .training import check_same_architecture, load_checkpoint, model_from_checkpoint, read_config
    from .models import ModelConfig

    device = resolve_device(a.device)
    cfg = read_config(a.config)
    ckpt = load_checkpoint(a.weights, device)
    check_same_architecture(a.weights, ckpt["model_config"], ModelConfig.from_dict(cfg["model"]))
    return model_from_checkpoint(ckpt, device, a.weights), cfg, ckpt


def add_eval_vol(p: argparse.ArgumentParser) -> None:
    """Arguments of ``eval_vol``."""
    _add_model_args(p)
    z = p.add_mutually_exclusive_group()
    z.add_argument("--zfile", type=Path, help="latent points, one per row (.txt or .npy)")
    z.add_argument("-z", type=float, nargs="+", help="one latent point on the command line")
    p.add_argument("-o", "--outdir", type=Path, required=True, help="output folder for vol_000.mrc, vol_001.mrc, ...")
    p.add_argument("--prefix", default="vol_", help="file name prefix (default: vol_)")
    p.add_argument("--downsample", type=int, help="render at this (even) box instead of the training box")
    p.add_argument("--lowpass", type=float, help="low-pass filter the volumes at this resolution, A")
    p.add_argument("--flip", action="store_true", help="flip the handedness (mirror along z)")
    p.add_argument("--invert", action="store_true", help="invert the contrast")


def read_z(path: Path, zdim: int | None = None) -> np.ndarray:
    """Latent points from ``.npy`` or text, one per row, float32, shape (n, zdim).

    With ``zdim`` None any width is accepted (a single column is one dimension).
    """
    if not path.is_file():
        raise InputError(f"{path}: z file not found")
    try:
        z = np.load(path) if path.suffix == ".npy" else np.loadtxt(path, ndmin=2)
    except Exception as exc:
        raise InputError(f"{path}: cannot read latent points ({exc})") from None
    z = np.asarray(z, dtype=np.float32)
    if z.ndim == 1 and zdim in (1, None):
        z = z[:, None]
    elif z.ndim == 1:
        z = z[None, :]
    if z.ndim != 2 or (zdim is not None and z.shape[1] != zdim):
        raise InputError(f"{path}: expected rows of {zdim or 'one or more'} values"
                         f"{' (zdim of the model)' if zdim else ''}, got shape {z.shape}")
    if not np.isfinite(z).all():
        raise InputError(f"{path}: row {int(np.flatnonzero(~np.isfinite(z).all(1))[0]) + 1}: not a finite number")
    return z


def check_prefix(prefix: str, outdir: Path) -> None:
    """A file-name prefix must name files directly in ``outdir`` (no folder part, no ``..``).

    Raises
    ------
    InputError
        For a prefix with ``/``, a path separator or a leading ``.``.
    """
    if not prefix or os.sep in prefix or "/" in prefix or (os.altsep and os.altsep in prefix) or prefix.startswith("."):
        raise InputError(f"--prefix {prefix!r}: must be a plain file-name prefix (no folder, no leading '.'); "
                         f"the files go into -o {outdir}")


def run_eval_vol(a: argparse.Namespace) -> None:
    """Run ``eval_vol``."""
    from .generate import VolumeOptions, write_volumes
    from .outputs import check_outputs

    model, cfg, _ = _load_model(a)
    zdim, box = model.cfg.zdim, model.cfg.box
    if zdim == 0:
        if a.zfile is not None or a.z is not None:
            raise InputError(f"{a.weights}: a homogeneous (train_nn) model takes no latent points")
        zs = [None]
    elif a.zfile is not None:
        zs = list(read_z(a.zfile, zdim))
    elif a.z is not None:
        if len(a.z) != zdim:
            raise InputError(f"-z: the model has zdim {zdim}, got {len(a.z)} values")
        zs = [np.asarray(a.z, dtype=np.float32)]
    else:
        raise InputError(f"{a.weights}: a model with zdim {zdim} needs --zfile or -z")
    if not np.isfinite(np.concatenate([np.ravel(z) for z in zs if z is not None] or [np.zeros(1)])).all():
        raise InputError("-z: not finite numbers")
    opts = VolumeOptions(downsample=a.downsample, lowpass=a.lowpass, flip=a.flip, invert=a.invert)
    out_box = opts.out_box(box)
    check_prefix(a.prefix, a.outdir)
    check_outputs(a.outdir / f"{a.prefix}{i:03d}.mrc" for i in range(len(zs)))
    pixel = float(cfg["data"]["pixel_size"]) * box / out_box
    paths = write_volumes(model.decoder, zs, box, float(cfg["data"]["pixel_size"]), a.outdir, a.prefix, opts)
    print(f"wrote {len(paths)} volume(s) of {out_box}^3 at {pixel:g} A/px to {a.outdir}")


def add_eval_images(p: argparse.ArgumentParser) -> None:
    """Arguments of ``eval_images``."""
    p.add_argument("particles", type=Path, help=PARTICLES_HELP)
    _add_model_args(p)
    p.add_argument("--out-z", type=Path, required=True, help="output latent means (.npy, particles x zdim)")
    p.add_argument("--out-zlogvar", type=Path, help="output latent log-variances (.npy)")
    add_format_args(p)
    p.add_argument("--datadir", type=Path, help="second folder to look for image stacks in")
    p.add_argument("--lazy", action="store_true", help="stream images from disk (default: in memory when they fit in half the free memory)")
    _add_selection_args(p)
    p.add_argument("-b", "--batch-size", type=int, default=64, help="particles encoded at once (default: 64)")


def run_eval_images(a: argparse.Namespace) -> None:
    """Run ``eval_images``: embed particles with a trained encoder."""
    from .dataset import TiltSeriesData
    from .outputs import check_outputs, write_text
    from .particles import ParticleTiltData
    from .training import infer_z, save_npy

    model, cfg, ckpt = _load_model(a)
    if model.cfg.zdim == 0:
        raise InputError(f"{a.weights}: a homogeneous (train_nn) model has no encoder")
    if a.batch_size < 1:
        raise InputError("-b/--batch-size must be >= 1")
    d = cfg["data"]
    fmt = format_kwargs(a)
    # what the run was trained with, unless told otherwise
    for key in ("ctf_premultiplied", "dose_weighted"):
        fmt[key] = d.get(key) if fmt[key] is None else fmt[key]
    data = TiltSeriesData(a.particles, datadir=a.datadir, lazy=True, invert=d["invert"], window=d["window"],
                          window_r=tuple(d["window_r"]), **fmt)
    if data.box != model.cfg.box:
        raise InputError(f"{a.particles}: images are {data.box} px, the model was trained on {model.cfg.box} px")
    sel = load_particle_selection(a.ind, a.first, data.n_particles)
    pdata = ParticleTiltData(data, sel, ntilts=model.cfg.ntilts, norm=float(ckpt["norm"]), device=str(next(model.parameters()).device),
                             in_memory=False if a.lazy else None)
    ids = a.out_z.with_name(a.out_z.stem + "_particle_ids.txt")
    outs = [a.out_z, ids] + ([a.out_zlogvar] if a.out_zlogvar else [])
    if len({str(p.resolve()) for p in outs}) < len(outs):
        raise InputError(f"--out-z {a.out_z} and --out-zlogvar {a.out_zlogvar}: the same file; give two names")
    check_outputs(outs)
    mu, logvar = infer_z(model, pdata, a.batch_size)
    save_npy(mu, a.out_z)
    if a.out_zlogvar:
        save_npy(logvar, a.out_zlogvar)
    write_text(ids, "\n".join(pdata.particle_ids) + "\n")
    print(f"embedded {pdata.n_particles} particles ({pdata.n_dropped} dropped with fewer than {pdata.ntilts} tilts): {a.out_z}, ids: {ids}")
