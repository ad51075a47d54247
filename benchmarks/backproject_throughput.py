"""Throughput of simulate and backproject: images per second and peak memory, printed (not asserted).

Usage: python benchmarks/backproject_throughput.py [--box 64] [--particles 100] [--star STAR --uninvert-data]
With --star, times backproject on that file instead of simulated data.
"""
from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import torch

from tomodrgn_scipion.method.backproject import backproject
from tomodrgn_scipion.method.dataset import TiltSeriesData
from tomodrgn_scipion.method.phantom import two_state_phantom
from tomodrgn_scipion.method.simulate import SimulationConfig, simulate


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--box", type=int, default=64)
    p.add_argument("--particles", type=int, default=100)
    p.add_argument("--star", type=Path)
    p.add_argument("--uninvert-data", action="store_true")
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {a.device}")
    with tempfile.TemporaryDirectory() as tmp:
        star = a.star
        if star is None:
            cfg = SimulationConfig(n_particles=a.particles, particles_per_tomogram=50, pixel_size=192.0 / a.box)
            t = time.perf_counter()
            info = simulate(list(two_state_phantom(a.box)), tmp, cfg)
            dt = time.perf_counter() - t
            print(f"simulate: {info['n_images']} images of {a.box}^2 in {dt:.1f} s = {info['n_images'] / dt:.0f} images/s")
            star = info["star"]
        t = time.perf_counter()
        data = TiltSeriesData(star, invert=not a.uninvert_data)
        load = time.perf_counter() - t
        t = time.perf_counter()
        r = backproject(data, device=a.device)
        dt = time.perf_counter() - t
        print(f"backproject: {r.n_images} images of {data.box}^2 in {dt:.1f} s = {r.n_images / dt:.0f} images/s "
              f"(+{load:.1f} s loading); FSC 0.143 at {r.resolution_0143:.1f} A")
    print(f"peak memory {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
