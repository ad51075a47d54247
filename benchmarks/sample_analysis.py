"""analyze on the shared tomoDRGN sample, scored against its ground truth; figures printed.

Usage: python benchmarks/sample_analysis.py [--sample ../shared/data/tomodrgn-sample-10076] [-n 40]
       [--outdir DIR (a train_vae folder: reused when it has weights.pt, else trained and kept)]
       [--zdim 2] [extra train_vae flags after --]

Trains as benchmarks/sample_training.py does (tomoDRGN's test-suite architecture, seed 0) unless
OUTDIR already holds a finished run, then times ``tomodrgn-scipion analyze OUTDIR --ksample 2`` as a
separate process (imports, UMAP when zdim > 2 and volume generation included) and prints the agreement
of kmeans2/labels.txt with particle_labels.txt and the correlation of each cluster-centre volume with
the two ground-truth volumes.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tomodrgn_scipion.method.cli import main as cli_main
from tomodrgn_scipion.method.fsc import masked_correlation
from tomodrgn_scipion.method.stacks import read_volume

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sample_training import ARCH, sample_args, sample_star  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sample_args(p)
    p.add_argument("--zdim", type=int, default=2)
    a = p.parse_args()
    star = sample_star(a.sample)
    truth = [read_volume(a.sample / f"10076_class{c}_32.mrc")[0] for c in "DE"]
    labels_true = np.loadtxt(a.sample / "particle_labels.txt").astype(int)
    with tempfile.TemporaryDirectory() as tmp:
        out = a.outdir or Path(tmp) / "vae"
        if not (out / "weights.pt").is_file():
            arch = [x for x in ARCH]
            arch[arch.index("--zdim") + 1] = str(a.zdim)
            if cli_main(["train_vae", str(star), "-o", str(out), "-n", str(a.num_epochs), *arch, *a.extra]) != 0:
                sys.exit("train_vae failed")
        ana = Path(tmp) / "analyze"
        t0 = time.time()
        subprocess.run([sys.executable, "-m", "tomodrgn_scipion.method.cli", "analyze", str(out), "--ksample", "2",
                        "-o", str(ana)], check=True, stdout=subprocess.DEVNULL)
        seconds = time.time() - t0
        labels = np.loadtxt(ana / "kmeans2" / "labels.txt").astype(int)
        agree = max((labels == labels_true).mean(), (labels != labels_true).mean())
        print(f"analyze --ksample 2: {seconds:.1f} s wall (zdim {a.zdim}"
              f"{', UMAP included' if (ana / 'umap.npy').is_file() else ''}); "
              f"{len(list(ana.rglob('vol_*.mrc')))} volumes, {len(list(ana.rglob('*.png')))} plots")
        print(f"k-means (kmeans2/labels.txt) agreement with particle_labels.txt: {agree:.4f}")
        for i in range(2):
            vol = read_volume(ana / "kmeans2" / f"vol_{i:03d}.mrc")[0]
            members = labels_true[labels == i]
            cd, ce = (masked_correlation(vol, t) for t in truth)
            print(f"centre volume {i} (cluster of {len(members)} particles, {np.mean(members == 0) * 100:.0f} % class D): "
                  f"correlation with D {cd:.3f}, with E {ce:.3f}")


if __name__ == "__main__":
    main()
