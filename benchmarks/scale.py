"""Training at real size: images/s, peak host memory, peak device memory and time to the first step, printed.

Usage:
  python benchmarks/scale.py [--particles 20000] [--tilts 41] [--box 64] [--steps 200] [-b 1]
      [--lazy | --no-lazy] [--device auto] [--no-amp] [--num-gpus N] [--num-workers W]
      [--data DIR] [--base 1000] [-- extra train_vae flags]

The set is made once into ``--data`` (default: a temporary folder) and reused when it is there:
``simulate`` writes ``--base`` particles of the two-state phantom at the box asked for (RELION 3.0
layout, one stack per tomogram of 50 particles), and the stacks are then copied, byte for byte,
under new names until there are ``--particles`` particles (simulating 10^6 images would take hours
on a laptop; copies are real files, so reading them costs what reading real stacks costs). Then
``train_vae`` runs tomoDRGN's test-suite architecture for ``--steps`` optimiser steps (and encodes
every particle for z, as at the end of a run).

Host memory is sampled every 0.1 s from /proc for the training process and its ranks: ``peak
anonymous RSS`` is what the process holds itself, ``peak RSS`` also counts the pages of memory-mapped
stacks, which the kernel drops when memory is short.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARCH = ["--zdim", "8", "--enc-layers-A", "3", "--enc-dim-A", "256", "--out-dim-A", "128", "--enc-layers-B", "3",
        "--enc-dim-B", "256", "--dec-layers", "3", "--dec-dim", "256"]
PER_TOMOGRAM = 50


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "tomodrgn_scipion.method.cli", *args]


def make_set(folder: Path, particles: int, tilts: int, box: int, base: int) -> Path:
    """The benchmark's particle set in ``folder`` (made when absent); returns its star file."""
    star = folder / f"scale_{particles}x{tilts}_box{box}.star"
    if star.is_file():
        return star
    base = min(base, particles)
    base = max(PER_TOMOGRAM, base // PER_TOMOGRAM * PER_TOMOGRAM)
    src = folder / f"base_{base}x{tilts}_box{box}"
    step = 2 * 60.0 / (tilts - 1)
    if not (src / "particles.star").is_file():
        t = time.perf_counter()
        subprocess.run(cli("simulate", "-o", str(src), "-n", str(base), "--particles-per-tomogram", str(PER_TOMOGRAM),
                           "--phantom-box", str(box), "--tilt-max", "60", "--tilt-step", f"{step:.6f}", "--seed", "0"),
                       check=True, stdout=subprocess.DEVNULL)
        print(f"simulated {base} particles x {tilts} tilts at box {box} in {time.perf_counter() - t:.0f} s")
    t = time.perf_counter()
    lines = (src / "particles.star").read_text().splitlines(keepends=True)
    first_row = next(i for i, ln in enumerate(lines) if ln.strip() and not ln.lstrip().startswith(("_", "data_", "loop_", "#")))
    header, rows = lines[:first_row], [ln for ln in lines[first_row:] if ln.strip()]
    labels = [ln.split()[0] for ln in header if ln.lstrip().startswith("_")]
    col = {name: labels.index(name) for name in ("_rlnImageName", "_rlnGroupName", "_rlnMicrographName")}
    copies = -(-particles // base)
    stacks = sorted((src / "stacks").glob("*.mrcs"))
    per_copy = particles // copies
    tmp = star.with_name(star.name + ".tmp")
    with open(tmp, "w") as out:
        out.writelines(header)
        for c in range(copies):
            dst = folder / f"copy{c:03d}"
            dst.mkdir(exist_ok=True)
            for s in stacks:
                if not (dst / s.name).is_file():
                    shutil.copyfile(s, dst / f".{s.name}.tmp")
                    os.replace(dst / f".{s.name}.tmp", dst / s.name)
            keep = per_copy if c < copies - 1 else particles - per_copy * (copies - 1)
            n_rows = keep * tilts
            for ln in rows[:n_rows]:
                f = ln.split()
                num, path = f[col["_rlnImageName"]].split("@", 1)
                f[col["_rlnImageName"]] = f"{num}@{dst.name}/{Path(path).name}"
                f[col["_rlnGroupName"]] += f"_c{c}"
                f[col["_rlnMicrographName"]] = f"{dst.name}_{f[col['_rlnMicrographName']]}"
                out.write(" ".join(f) + "\n")
    os.replace(tmp, star)
    print(f"replicated to {particles} particles ({copies} copies of the stacks) in {time.perf_counter() - t:.0f} s")
    return star


def tree_memory(pid: int) -> tuple[int, int]:
    """(RSS, anonymous RSS) in bytes of a process and its descendants, from /proc."""
    rss = anon = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1]) * 1024
                    elif line.startswith("RssAnon:"):
                        anon += int(line.split()[1]) * 1024
            with open(f"/proc/{p}/task/{p}/children") as fh:
                todo += [int(c) for c in fh.read().split()]
        except OSError:
            continue
    return rss, anon


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--particles", type=int, default=20000)
    p.add_argument("--tilts", type=int, default=41)
    p.add_argument("--box", type=int, default=64)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("-b", "--batch-size", type=int, default=1)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--lazy", dest="mode", action="store_const", const="--lazy")
    mode.add_argument("--no-lazy", dest="mode", action="store_const", const="--no-lazy")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-amp", action="store_true")
    p.add_argument("--num-gpus", type=int, default=1)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--data", type=Path, help="folder for the set (kept; default: a temporary folder)")
    p.add_argument("--base", type=int, default=1000, help="particles simulated before copying (default: 1000)")
    p.add_argument("extra", nargs="*", help="more train_vae flags, after --")
    a = p.parse_args()
    folder = a.data or Path(tempfile.mkdtemp(prefix="tomodrgn_scale_"))
    folder.mkdir(parents=True, exist_ok=True)
    star = make_set(folder, a.particles, a.tilts, a.box, a.base)
    out = Path(tempfile.mkdtemp(prefix="train_", dir=folder))
    cmd = cli("train_vae", str(star), "-o", str(out), *ARCH, "-n", "1", "--checkpoint", "0", "-b", str(a.batch_size),
              "--max-steps", str(a.steps), "--num-workers", str(a.num_workers), "--device", a.device,
              "--num-gpus", str(a.num_gpus), *([a.mode] if a.mode else []), *(["--no-amp"] if a.no_amp else []), *a.extra)
    print("running:", " ".join(cmd[1:]))
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0, 0]

    def sample() -> None:
        while proc.poll() is None:
            rss, anon = tree_memory(proc.pid)
            peak[0], peak[1] = max(peak[0], rss), max(peak[1], anon)
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    log = []
    for line in proc.stdout:
        log.append(line)
        if re.search(r"images in memory|streaming images|first step|throughput|peak device|epoch 1/1|written", line):
            print("  " + line.rstrip())
    rc = proc.wait()
    sampler.join()
    wall = time.perf_counter() - t0
    text = "".join(log)
    if rc:
        print(text[-3000:])
        print(f"train_vae failed with status {rc}")
        return rc

    def grab(pattern: str) -> str:
        m = re.search(pattern, text)
        return m.group(1) if m else "n/a"

    device, rate = grab(r"device (\S+ \([^)]*\))"), grab(r"throughput (\d+ images/s over \d+ steps \(decoder [\d.]+ TFLOP/s\))")
    first, dev_mem = grab(r"first step after ([\d.]+) s"), grab(r"peak device memory (\d+) MiB")
    where = "streamed" if "streaming images" in text else "in memory"
    print(f"set: {a.particles} particles x {a.tilts} tilts, box {a.box}; batch {a.batch_size}, {a.steps} steps, "
          f"{where}, device {device}")
    print(f"images/s: {rate}")
    print(f"time to first step: {first} s")
    print(f"peak host RSS: {peak[0] / 2**20:.0f} MiB (peak anonymous RSS, without mapped stack pages: {peak[1] / 2**20:.0f} MiB)")
    print(f"peak device memory: {dev_mem} MiB")
    print(f"wall time: {wall:.0f} s (loading, {a.steps} steps, and z of every particle)")
    shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
