"""cryoDRGN-ET (``cryodrgn train_vae --encode-mode tilt``) and our train_vae side by side: images/s of both.

Usage:
  python benchmarks/cryodrgn_et.py [STAR] [--particles 200 --box 32 --snr 0.1] [--epochs 3] [-b 8]
      [--ntilts N] [--lr 2e-4] [--device auto] [--no-amp] [--lazy] [--num-workers W] [--no-dose-weight]
      [--zdim 2 --enc-layers-A 3 --enc-dim-A 256 --out-dim-A 128 --enc-layers-B 3 --enc-dim-B 256
       --dec-layers 3 --dec-dim 256] [--cryodrgn EXE | --cryodrgn-python PY] [--outdir DIR] [--timeout 900]

STAR is any particle file our train_vae reads; without it a set is simulated (``simulate``, RELION 3.0
layout as Warp writes it). cryoDRGN-ET reads a RELION 3.0/3.1 image-series star in which
``_rlnGroupName`` names the particle of each tilt image and ``_rlnCtfScalefactor`` orders its tilts,
and it encodes the *first* ``--ntilts`` rows of each particle in file order. So the star it gets is
written here, by our own reader, from the same file: one RELION 3.0 table, each particle's images
lowest dose first (the tilts our encoder takes), absolute stack paths, the particles with fewer than
``--ntilts`` images left out (as our train_vae drops them). Its poses and CTF go through its own
``parse_pose_star`` and ``parse_ctf_star``.

Both train the same particles for the same epochs with the same batch (particles per step), learning
rate, seed, tilts and architecture: tomoDRGN's test-suite one by default, mapped onto cryoDRGN-ET's
flags as printed. The figures are the mean over the epochs after the first (which includes warm-up);
"images" are the tilt images decoded per second. ``--cryodrgn EXE`` runs the ``cryodrgn`` program;
``--cryodrgn-python PY`` runs the three commands module by module in that interpreter (each
``cryodrgn.commands.<name>`` module's ``add_args`` and ``main``, as the program does), which needs
only the packages those modules import (the offline wheel set of docs/benchmarks.md). Without either,
the ``cryodrgn`` on PATH, else this interpreter if cryodrgn imports in it, else a skip line.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from tomodrgn_scipion.method.errors import InputError  # noqa: E402
from tomodrgn_scipion.method.stacks import ImageSource  # noqa: E402
from tomodrgn_scipion.method.star import StarWriter, TiltSeriesStar  # noqa: E402
from train_throughput import ARCH  # noqa: E402  (tomoDRGN's test-suite architecture)

#: Our flag -> cryoDRGN-ET's flag of the same layer (both are residual MLPs with ReLU).
CRYODRGN_FLAG = {"zdim": "--zdim", "enc-layers-A": "--enc-layers", "enc-dim-A": "--enc-dim",
                 "out-dim-A": "--t-emb-dim", "enc-layers-B": "--tlayers", "enc-dim-B": "--tdim",
                 "dec-layers": "--dec-layers", "dec-dim": "--dec-dim"}

# Runs a command in a child interpreter and prints the peak device memory at its end. "ours" is our
# train_vae; "cryodrgn" builds one cryodrgn.commands module's parser and calls its main, as the
# cryodrgn program does for the command it is given.
LAUNCHER = """
import sys
mode, argv = sys.argv[1], sys.argv[2:]
if mode == "ours":
    from tomodrgn_scipion.method.cli import main
    rc = main(argv)
else:
    import argparse, importlib
    module = importlib.import_module("cryodrgn.commands." + argv[0])
    parser = argparse.ArgumentParser(prog="cryodrgn " + argv[0])
    module.add_args(parser)
    rc = module.main(parser.parse_args(argv[1:]))
import torch
if torch.cuda.is_available() and torch.cuda.is_initialized():
    print(f"peak device memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB", flush=True)
sys.exit(rc or 0)
"""


@dataclass
class CryoStar:
    """The star written for cryoDRGN-ET and what its commands need to be told about it."""

    path: Path
    box: int
    pixel_size: float
    n_particles: int
    ntilts: int
    dose_per_tilt: float
    angle_per_tilt: float
    premultiplied: bool


@dataclass
class Run:
    """One child process: exit status, wall seconds, peak resident memory (MiB), its log."""

    rc: int
    wall_s: float
    rss_mib: float
    log: Path
    timed_out: bool = False


@dataclass
class Figures:
    """Training figures of one program: seconds of the first epoch and mean seconds of the others,
    particles and tilt images decoded per epoch, wall seconds and peak host RSS (MiB) of the command,
    peak device memory (MiB, CUDA only) and parameter count when known."""

    name: str
    first_epoch_s: float
    epoch_s: float
    n_particles: int
    n_images: int
    wall_s: float
    rss_mib: float
    device_mib: float | None
    parameters: int | None

    @property
    def images_per_particle(self) -> float:
        return self.n_images / self.n_particles

    @property
    def images_per_s(self) -> float:
        return self.n_images / self.epoch_s

    @property
    def particles_per_s(self) -> float:
        return self.n_particles / self.epoch_s


def write_cryodrgn_star(star_path: Path, out: Path, ntilts: int | None, datadir: Path | None,
                        source_software: str = "auto") -> CryoStar:
    """Write the particles of ``star_path`` as the RELION 3.0 image-series star cryoDRGN-ET reads.

    Parameters
    ----------
    star_path : Path
        Any particle file our readers take.
    out : Path
        The star to write (atomically).
    ntilts : int or None
        Tilts per particle cryoDRGN-ET encodes; ``None``: the smallest count in the data.
    datadir : Path or None
        Second folder for the image stacks (``--datadir``).
    source_software : str
        Format of ``star_path`` (``auto``: detected).

    Returns
    -------
    CryoStar
        ``dose_per_tilt`` (e/A^2) and ``angle_per_tilt`` (degrees) are what cryoDRGN-ET's
        dose-symmetric model (cumulative dose = dose_per_tilt x rank, stage tilt = angle_per_tilt x
        ceil(rank / 2), rank 0 the highest cos(tilt)) needs to match the median particle.
    """
    star = TiltSeriesStar(star_path, source_software=source_software)
    counts = np.array([len(r) for r in star.rows_of_particle])
    ntilts = int(counts.min()) if ntilts is None else ntilts
    if ntilts < 1 or ntilts > counts.max():
        raise InputError(f"{star_path}: --ntilts {ntilts}: particles have {counts.min()} to {counts.max()} tilt images")
    keep = np.flatnonzero(counts >= ntilts)
    images = ImageSource(star.image_names, star.image_anchor, datadir=datadir, lazy=True, named_in=star.path)
    images.close()
    rows = np.concatenate([star.rows_of_particle[p][np.argsort(star.dose[star.rows_of_particle[p]], kind="stable")]
                           for p in keep])
    names = [f"{images.index[r] + 1}@{images.paths[images.stack_of[r]].resolve()}" for r in rows]
    tomograms = star.tomogram_of_particle()
    table = pd.DataFrame({
        "rlnImageName": names,
        "rlnMicrographName": [tomograms[p] for p in star.particle_index[rows]],
        "rlnGroupName": [star.particle_ids[p] for p in star.particle_index[rows]],
        "rlnAngleRot": star.euler[rows, 0], "rlnAngleTilt": star.euler[rows, 1], "rlnAnglePsi": star.euler[rows, 2],
        "rlnOriginX": star.shifts_px[rows, 0], "rlnOriginY": star.shifts_px[rows, 1],
        "rlnDefocusU": star.dfu[rows], "rlnDefocusV": star.dfv[rows], "rlnDefocusAngle": star.dfang[rows],
        "rlnVoltage": star.voltage[rows], "rlnSphericalAberration": star.cs[rows],
        "rlnAmplitudeContrast": star.w[rows], "rlnPhaseShift": star.phase_shift[rows],
        # RELION's dose B-factor, -4 e/A^2 per unit of cumulative dose (Warp's convention)
        "rlnCtfBfactor": -4.0 * star.dose[rows], "rlnCtfScalefactor": star.ctf_scalefactor[rows],
        "rlnDetectorPixelSize": star.pixel_size, "rlnMagnification": 10000.0,
    })
    writer = StarWriter(out, list(table.columns))
    try:
        writer.append(table)
    except BaseException:
        writer.abort()
        raise
    writer.close()
    dose_steps, angle_steps = [], []
    for p in keep:
        r = star.rows_of_particle[p]
        if len(r) > 1:
            dose_steps.append((star.dose[r].max() - star.dose[r].min()) / (len(r) - 1))
            angle_steps.append(star.stage_tilt_deg[r].max() / np.ceil((len(r) - 1) / 2))
    return CryoStar(out, images.box, star.pixel_size, len(keep), ntilts,
                    float(np.median(dose_steps)) if dose_steps else 0.0,
                    float(np.median(angle_steps)) if angle_steps else 0.0,
                    bool(star.ctf_premultiplied.any()))


def run_measured(cmd: list[str], log: Path, timeout: float, env: dict | None = None, cwd: Path | None = None) -> Run:
    """Run ``cmd`` with its output in ``log``; wall time and peak resident memory of the child.

    The child gets its own process group, killed whole when ``timeout`` seconds pass.
    """
    t0 = time.monotonic()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)
        timed_out = False
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - t0 > timeout:
                timed_out = True
                os.killpg(proc.pid, signal.SIGKILL)
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
    # ru_maxrss is in KiB on Linux
    return Run(proc.returncode, time.monotonic() - t0, usage.ru_maxrss / 1024, log, timed_out)


def failed(what: str, run: Run) -> str:
    """One line saying how a child failed, with the last line of its log."""
    if run.timed_out:
        return f"{what}: stopped after {run.wall_s:.0f} s (--timeout); log {run.log}"
    last = [line for line in run.log.read_text(errors="replace").splitlines() if line.strip()][-1:]
    return f"{what}: exit status {run.rc}: {last[0] if last else '(no output)'}; log {run.log}"


def peak_device(log_text: str) -> float | None:
    m = re.findall(r"peak device memory (\d+) MiB", log_text)
    return float(m[-1]) if m else None


def arch_values(a: argparse.Namespace) -> dict[str, int]:
    return {k: getattr(a, k.replace("-", "_")) for k in ARCH}


def run_ours(a: argparse.Namespace, star: Path, cs: CryoStar, work: Path) -> Figures | str:
    """Our train_vae on ``star``; its figures, or a line saying why there are none."""
    out = work / "ours"
    argv = ["train_vae", str(star), "-o", str(out), "-n", str(a.epochs), "-b", str(a.batch_size), "--lr", str(a.lr),
            "--seed", "0", "--checkpoint", "0", "--device", a.device, "--ntilts", str(cs.ntilts)]
    for k, v in arch_values(a).items():
        argv += [f"--{k}", str(v)]
    argv += ["--pooling-function", "concatenate", "--pe-type", "geom_lowf"]
    if not a.no_dose_weight:
        argv += ["--recon-dose-weight", "--recon-tilt-weight", "--l-dose-mask"]
    argv += (["--no-amp"] if a.no_amp else []) + (["--lazy"] if a.lazy else []) + (
        ["--uninvert-data"] if a.uninvert_data else []) + (["--datadir", str(a.datadir)] if a.datadir else [])
    if a.num_workers is not None:
        argv += ["--num-workers", str(a.num_workers)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    run = run_measured([sys.executable, "-c", LAUNCHER, "ours", *argv], work / "ours.log", a.timeout, env, REPO)
    if run.rc != 0:
        return failed("tomodrgn-scipion train_vae", run)
    csv = pd.read_csv(out / "loss.csv")
    secs = csv["seconds"].to_numpy(float)
    text = (out / "run.log").read_text(errors="replace")
    m = re.search(r"train_vae: (\d+) particles, (\d+) tilt images, box \d+, (\d+) parameters", text)
    if m is None:
        return f"tomodrgn-scipion train_vae: no particle count in {out / 'run.log'}"
    n_particles, n_images = int(m[1]), int(m[2])
    # the decoder is fitted to every tilt image of a particle, not only the ntilts encoded
    return Figures("tomodrgn-scipion", secs[0], float(np.mean(secs[1:] if len(secs) > 1 else secs)),
                   n_particles, n_images, run.wall_s, run.rss_mib,
                   peak_device(run.log.read_text(errors="replace")) or peak_device(text), int(m[3]))


def cryodrgn_command(a: argparse.Namespace) -> tuple[list[str], str] | str:
    """How to start a cryodrgn command (the argv prefix, and how it was found), or why it cannot be."""
    if a.cryodrgn:
        exe = shutil.which(a.cryodrgn) or (a.cryodrgn if Path(a.cryodrgn).is_file() else None)
        return ([exe], f"program {exe}") if exe else f"--cryodrgn {a.cryodrgn}: no such program"
    if a.cryodrgn_python:
        return [a.cryodrgn_python, "-c", LAUNCHER, "cryodrgn"], f"modules in {a.cryodrgn_python}"
    exe = shutil.which("cryodrgn")
    if exe:
        return [exe], f"program {exe} (on PATH)"
    probe = subprocess.run([sys.executable, "-c", "import cryodrgn.commands.train_vae"], capture_output=True)
    if probe.returncode == 0:
        return [sys.executable, "-c", LAUNCHER, "cryodrgn"], f"modules in {sys.executable}"
    return "no cryodrgn program on PATH and cryodrgn does not import here (give --cryodrgn EXE or --cryodrgn-python PY)"


def run_cryodrgn(a: argparse.Namespace, prefix: list[str], cs: CryoStar, work: Path) -> Figures | str:
    """parse_pose_star, parse_ctf_star and train_vae --encode-mode tilt; the figures, or why none."""
    env = dict(os.environ)
    if a.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    elif re.fullmatch(r"(cuda|auto):\d+", a.device):
        env["CUDA_VISIBLE_DEVICES"] = a.device.split(":")[1]
    size = ["-D", str(cs.box), "--Apix", repr(cs.pixel_size)]
    for cmd in (["parse_pose_star", str(cs.path), "-o", str(work / "pose.pkl"), *size],
                ["parse_ctf_star", str(cs.path), "-o", str(work / "ctf.pkl"), *size]):
        run = run_measured(prefix + cmd, work / f"cryodrgn_{cmd[0]}.log", a.timeout, env, work)
        if run.rc != 0:
            return failed(f"cryodrgn {cmd[0]}", run)
    out = work / "cryodrgn"
    v = arch_values(a)
    argv = ["train_vae", str(cs.path), "--poses", str(work / "pose.pkl"), "--ctf", str(work / "ctf.pkl"),
            "-o", str(out), "--encode-mode", "tilt", "--ntilts", str(cs.ntilts), "-n", str(a.epochs),
            "-b", str(a.batch_size), "--lr", str(a.lr), "--seed", "0", "--checkpoint", str(a.epochs + 1),
            "--no-analysis", "--pe-type", "geom_lowf"]
    for k, flag in CRYODRGN_FLAG.items():
        argv += [flag, str(v[k])]
    if not a.no_dose_weight:
        argv += ["--dose-per-tilt", repr(cs.dose_per_tilt), "--angle-per-tilt", repr(cs.angle_per_tilt)]
    # cryoDRGN's mixed precision is CUDA autocast; on the CPU both programs compute in float32
    argv += (["--no-amp"] if a.no_amp or a.device == "cpu" else []) + (["--lazy"] if a.lazy else []) + (
        ["--uninvert-data"] if a.uninvert_data else [])
    if a.num_workers is not None:
        argv += ["--num-workers", str(a.num_workers)]
    run = run_measured(prefix + argv, work / "cryodrgn_train_vae.log", a.timeout, env, work)
    if run.rc != 0:
        return failed("cryodrgn train_vae", run)
    text = run.log.read_text(errors="replace")
    secs = [int(h) * 3600 + int(mi) * 60 + float(s)
            for h, mi, s in re.findall(r"=====> Epoch: \d+ .*?Finished in (\d+):(\d+):([\d.]+)", text)]
    loaded = re.search(r"Loaded \d+ tilts for (\d+) particles", text)
    version = re.search(r"cryoDRGN (\S+)", text)
    params = re.search(r"(\d+) parameters in model", text)
    if not secs or loaded is None:
        return f"cryodrgn train_vae: no epoch times or particle count in {run.log}"
    # cryoDRGN-ET decodes only the ntilts images it encodes
    n_particles = int(loaded[1])
    return Figures(f"cryoDRGN-ET {version[1]}" if version else "cryoDRGN-ET", secs[0],
                   float(np.mean(secs[1:] if len(secs) > 1 else secs)), n_particles, n_particles * cs.ntilts,
                   run.wall_s, run.rss_mib, peak_device(text), int(params[1]) if params else None)


def report(f: Figures) -> str:
    mem = f"; peak device memory {f.device_mib:.0f} MiB" if f.device_mib is not None else ""
    return (f"{f.name}: first epoch {f.first_epoch_s:.2f} s; then {f.epoch_s:.2f} s/epoch = "
            f"{f.images_per_s:.0f} images/s ({f.particles_per_s:.1f} particles/s, {f.images_per_particle:.3g} images "
            f"decoded per particle); wall {f.wall_s:.1f} s; peak host RSS {f.rss_mib:.0f} MiB{mem}")


def differences(a: argparse.Namespace, cs: CryoStar, ours: Figures | None, cryo: Figures | None) -> list[str]:
    """What is the same and what differs between the two runs, one line each."""
    v = arch_values(a)
    lines = [
        "architecture (ours -> cryoDRGN-ET flags): " + ", ".join(
            f"--{k} {v[k]} -> {CRYODRGN_FLAG[k]} {v[k]}" for k in ARCH) + ", --pe-type geom_lowf both "
        "(cryoDRGN's default is gaussian), positional-encoding size box/2 both",
        "same: residual ReLU MLPs, concatenation of the per-tilt encodings, decoder evaluated on one half of "
        "Fourier space, MSE loss, KL weight 1/zdim, batch = particles per step, the same tilts "
        "(lowest dose first), learning rate, seed",
        "encoder input: ours the real and imaginary part of each half-plane frequency; cryoDRGN-ET the "
        "Hartley-transformed image inside a circle of radius box/2 (the small difference in parameters below)",
        "preprocessing: ours Fourier-transforms and centres every image once, at load; cryoDRGN-ET "
        "windows, transforms, normalises and shifts each batch's images at every step",
        "AMP: ours bfloat16 autocast where the GPU has it (no loss scaling); cryoDRGN-ET float16 autocast "
        "with a GradScaler" if not (a.no_amp or a.device == "cpu") else "AMP: off in both",
        "optimiser: ours AdamW, cryoDRGN-ET Adam (the same with weight decay 0)",
    ]
    if not a.no_dose_weight:
        lines.append(f"exposure: cryoDRGN-ET multiplies each decoded slice by its dose filter x cos(tilt) "
                     f"(--dose-per-tilt {cs.dose_per_tilt:g} --angle-per-tilt {cs.angle_per_tilt:g}, a dose-symmetric "
                     f"order assumed); ours weights the squared error by the dose and tilt of each image in the star "
                     f"(--recon-dose-weight --recon-tilt-weight --l-dose-mask)")
    if ours and cryo and ours.n_images != cryo.n_images:
        lines.append(f"decoded images per particle differ: ours {ours.images_per_particle:.3g} (all tilts), "
                     f"cryoDRGN-ET {cryo.images_per_particle:.3g} (--ntilts): compare particles/s")
    if ours and cryo and ours.parameters and cryo.parameters:
        lines.append(f"parameters: ours {ours.parameters}, cryoDRGN-ET {cryo.parameters}")
    if cs.premultiplied:
        lines.append("the images are CTF-premultiplied; cryoDRGN-ET has no switch for that and multiplies them "
                     "again: its timing holds, its fit does not")
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("star", nargs="?", type=Path, help="particle file (default: simulate a set)")
    p.add_argument("--particles", type=int, default=200, help="particles to simulate (default: 200)")
    p.add_argument("--box", type=int, default=32, help="box of the simulated set, pixels (default: 32)")
    p.add_argument("--snr", type=float, default=0.1)
    p.add_argument("--datadir", type=Path)
    p.add_argument("--uninvert-data", action="store_true")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("-b", "--batch-size", type=int, default=8)
    p.add_argument("--ntilts", type=int, help="tilts encoded per particle (default: the smallest count)")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--device", default="auto", help="ours: auto, cpu, cuda, cuda:N; cryoDRGN-ET gets the same GPU "
                   "through CUDA_VISIBLE_DEVICES, or none for cpu")
    p.add_argument("--no-amp", action="store_true")
    p.add_argument("--lazy", action="store_true")
    p.add_argument("--num-workers", type=int)
    p.add_argument("--no-dose-weight", action="store_true", help="no exposure model in either program")
    for k, v in ARCH.items():
        p.add_argument(f"--{k}", type=int, default=v)
    p.add_argument("--cryodrgn", help="the cryodrgn program (default: on PATH)")
    p.add_argument("--cryodrgn-python", help="an interpreter in which cryodrgn imports: run its command modules")
    p.add_argument("--outdir", type=Path, help="keep data, logs and outputs here (default: a temporary folder)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per child command (default: 900)")
    a = p.parse_args()
    if a.epochs < 2:
        p.error("--epochs must be >= 2 (the first is reported apart)")

    work = a.outdir or Path(tempfile.mkdtemp(prefix="cryodrgn_et_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        star = a.star
        if star is None:
            sim = run_measured([sys.executable, "-m", "tomodrgn_scipion.method.cli", "simulate",
                                "-o", str(work / "sim"),
                                "-n", str(a.particles), "--phantom-box", str(a.box), "--snr", str(a.snr),
                                "--particles-per-tomogram", "50", "--seed", "0"], work / "simulate.log", a.timeout,
                               cwd=REPO)
            if sim.rc != 0:
                print(failed("simulate", sim))
                return 1
            star = work / "sim" / "particles.star"
        cs = write_cryodrgn_star(star, work / "cryodrgn_particles.star", a.ntilts, a.datadir)
        print(f"data: {star} ({cs.n_particles} particles with >= {cs.ntilts} tilts, box {cs.box}, "
              f"{cs.pixel_size:g} A/px); for cryoDRGN-ET: {cs.path}")
        print(f"settings: {a.epochs} epochs, batch {a.batch_size}, lr {a.lr:g}, {cs.ntilts} tilts encoded, "
              f"device {a.device}, AMP {'off' if a.no_amp or a.device == 'cpu' else 'on where CUDA runs'}"
              f"{', lazy' if a.lazy else ''}")
        ours = run_ours(a, star, cs, work)
        print(ours if isinstance(ours, str) else report(ours))
        found = cryodrgn_command(a)
        cryo: Figures | str | None = None
        if isinstance(found, str):
            print(f"cryoDRGN-ET: skipped: {found}")
        else:
            prefix, how = found
            print(f"cryoDRGN-ET: {how}")
            cryo = run_cryodrgn(a, prefix, cs, work)
            print(cryo if isinstance(cryo, str) else report(cryo))
        good_ours = ours if isinstance(ours, Figures) else None
        good_cryo = cryo if isinstance(cryo, Figures) else None
        for line in differences(a, cs, good_ours, good_cryo):
            print(f"  {line}")
        if good_ours and good_cryo:
            print(f"images/s: tomodrgn-scipion {good_ours.images_per_s:.0f}, cryoDRGN-ET {good_cryo.images_per_s:.0f}, "
                  f"ratio ours/cryoDRGN-ET {good_ours.images_per_s / good_cryo.images_per_s:.2f}; particles/s ratio "
                  f"{good_ours.particles_per_s / good_cryo.particles_per_s:.2f}")
        elif good_ours:
            print(f"images/s: tomodrgn-scipion {good_ours.images_per_s:.0f}, cryoDRGN-ET n/a")
        return 0 if good_ours and (cryo is None or good_cryo) else 1
    except InputError as e:
        print(f"error: {e}")
        return 2
    finally:
        if a.outdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
