"""Training throughput of train_vae: seconds per epoch, images per second and peak memory, printed.

Usage:
  python benchmarks/train_throughput.py STAR [--uninvert-data] [--epochs 3] [--device auto]
      [--zdim 2 --enc-layers-A 3 --enc-dim-A 256 --out-dim-A 128 --enc-layers-B 3 --enc-dim-B 256
       --dec-layers 3 --dec-dim 256 -b 8] [--upstream-seconds S]

The defaults are tomoDRGN's test-suite architecture. When a ``tomodrgn`` command is on PATH it is
run on the same file and architecture for the same number of epochs and timed side by side; else
``--upstream-seconds`` (seconds per epoch measured elsewhere) gives the ratio. The first epoch is
reported apart (it includes warm-up); the figures are the mean of the others.
"""
from __future__ import annotations

import argparse
import re
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from tomodrgn_scipion.method.cli import main as cli_main

ARCH = {"zdim": 2, "enc-layers-A": 3, "enc-dim-A": 256, "out-dim-A": 128, "enc-layers-B": 3, "enc-dim-B": 256,
        "dec-layers": 3, "dec-dim": 256}


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def arch_flags(a: argparse.Namespace) -> list[str]:
    out = []
    for k in ARCH:
        out += [f"--{k}", str(getattr(a, k.replace("-", "_")))]
    return out


def time_upstream(a: argparse.Namespace, tmp: str) -> float | None:
    """Mean seconds per epoch (after the first) of upstream tomoDRGN on the same input, if installed."""
    exe = shutil.which("tomodrgn")
    if exe is None:
        return None
    cmd = [exe, "train_vae", str(a.star), "-o", f"{tmp}/upstream", "-n", str(a.epochs), "-b", str(a.batch_size),
           "--seed", "0", *arch_flags(a)] + (["--uninvert-data"] if a.uninvert_data else [])
    t = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    total = time.perf_counter() - t
    if done.returncode != 0:
        print(f"upstream tomodrgn failed: {done.stderr.strip().splitlines()[-1:]}")
        return None
    # upstream logs "Finished in H:MM:SS.ffffff" per epoch
    times = [int(h) * 3600 + int(m) * 60 + float(s) for h, m, s in re.findall(r"Finished in (\d+):(\d+):([\d.]+)", done.stdout)]
    return sum(times[1:]) / max(len(times) - 1, 1) if len(times) > 1 else total / a.epochs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("star", type=Path)
    p.add_argument("--uninvert-data", action="store_true")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("-b", "--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-amp", action="store_true")
    p.add_argument("--upstream-seconds", type=float, help="upstream seconds per epoch measured elsewhere")
    for k, v in ARCH.items():
        p.add_argument(f"--{k}", type=int, default=v)
    a = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CUDA available: {torch.cuda.is_available()}")
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["train_vae", str(a.star), "-o", f"{tmp}/ours", "-n", str(a.epochs), "-b", str(a.batch_size), "--seed", "0",
                "--device", a.device, "--checkpoint", "0", *arch_flags(a)]
        argv += (["--uninvert-data"] if a.uninvert_data else []) + (["--no-amp"] if a.no_amp else [])
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        if cli_main(argv) != 0:
            raise SystemExit("train_vae failed")
        rows = [line.split(",") for line in Path(f"{tmp}/ours/loss.csv").read_text().splitlines()[1:]]
        secs = [float(r[5]) for r in rows]
        ips = [float(r[6]) for r in rows]
        steady = secs[1:] or secs
        ours = sum(steady) / len(steady)
        print(f"tomodrgn-scipion: first epoch {secs[0]:.2f} s; then {ours:.2f} s/epoch = {sum(ips[1:] or ips) / len(steady):.0f} images/s")
        print(f"peak host memory {peak_rss_mib():.0f} MiB" + (
            f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB" if torch.cuda.is_available() else ""))
        upstream = time_upstream(a, tmp)
        source = "measured now"
        if upstream is None and a.upstream_seconds:
            upstream, source = a.upstream_seconds, "given"
        if upstream:
            print(f"upstream tomoDRGN ({source}): {upstream:.2f} s/epoch; ratio ours/upstream = {ours / upstream:.2f}")
        else:
            print("upstream tomoDRGN: not on PATH (give --upstream-seconds for a ratio)")


if __name__ == "__main__":
    main()
