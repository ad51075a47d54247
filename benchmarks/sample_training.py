"""train_vae on the shared tomoDRGN sample, scored against its ground truth; figures printed.

Usage: python benchmarks/sample_training.py [--sample ../shared/data/tomodrgn-sample-10076] [-n 40]
       [--outdir DIR (kept; default a temporary folder)] [extra train_vae flags after --]

Trains tomoDRGN's test-suite architecture (zdim 2, encoder A 3x256 -> 128, B 3x256, decoder 3x256,
concatenate pooling, --uninvert-data, seed 0), then prints for every checkpoint the agreement of
k-means (k = 2) on z with particle_labels.txt, the seconds per epoch, and the correlation of the
volumes eval_vol renders at the two class means of z with the two ground-truth volumes.
"""
from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
from sklearn.cluster import KMeans

from tomodrgn_scipion.method.cli import main as cli_main
from tomodrgn_scipion.method.fsc import masked_correlation
from tomodrgn_scipion.method.stacks import read_volume

REPO = Path(__file__).resolve().parents[1]
ARCH = ["--zdim", "2", "--enc-layers-A", "3", "--enc-dim-A", "256", "--out-dim-A", "128", "--enc-layers-B", "3",
        "--enc-dim-B", "256", "--dec-layers", "3", "--dec-dim", "256", "--pooling-function", "concatenate",
        "--uninvert-data", "--seed", "0"]


def agreement(z: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of particles on which k-means (k = 2) agrees with the labels (best of the two matchings)."""
    k = KMeans(2, n_init=10, random_state=0).fit_predict(z)
    return float(max((k == labels).mean(), (k != labels).mean()))


def sample_args(p: argparse.ArgumentParser) -> None:
    """The options of the benchmarks that train on the shared sample."""
    p.add_argument("--sample", type=Path, default=REPO.parent / "shared" / "data" / "tomodrgn-sample-10076")
    p.add_argument("-n", "--num-epochs", type=int, default=40)
    p.add_argument("--outdir", type=Path)
    p.add_argument("extra", nargs="*", help="more train_vae flags (after --)")


def sample_star(sample: Path) -> Path:
    """The sample's star file; exits with a message when it is not there."""
    star = sample / "10076_both_32_sim.star"
    if not star.is_file():
        sys.exit(f"{star}: sample not found")
    return star


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sample_args(p)
    a = p.parse_args()
    star = sample_star(a.sample)
    labels = np.loadtxt(a.sample / "particle_labels.txt")
    truth = [read_volume(a.sample / f"10076_class{c}_32.mrc")[0] for c in "DE"]
    with tempfile.TemporaryDirectory() as tmp:
        out = a.outdir or Path(tmp) / "vae"
        if cli_main(["train_vae", str(star), "-o", str(out), "-n", str(a.num_epochs), *ARCH, *a.extra]) != 0:
            sys.exit("train_vae failed")
        rows = [line.split(",") for line in (out / "loss.csv").read_text().splitlines()[1:]]
        secs = [float(r[5]) for r in rows]
        print(f"seconds per epoch: mean {np.mean(secs[1:] or secs):.2f} (first {secs[0]:.2f}); "
              f"images/s {np.mean([float(r[6]) for r in rows[1:] or rows]):.0f}")
        epochs = sorted(int(m.group(1)) for f in out.glob("z.*.npy") if (m := re.match(r"z\.(\d+)\.npy$", f.name)))
        for e in epochs:
            print(f"epoch {e}: k-means agreement {agreement(np.load(out / f'z.{e}.npy'), labels):.4f}")
        z = np.load(out / "z.npy")
        print(f"final: k-means agreement {agreement(z, labels):.4f}")
        means = np.stack([z[labels == c].mean(0) for c in (0, 1)])
        np.savetxt(Path(tmp) / "means.txt", means)
        if cli_main(["eval_vol", "-w", str(out / "weights.pt"), "-c", str(out / "config.json"), "--zfile",
                     str(Path(tmp) / "means.txt"), "-o", str(Path(tmp) / "vols")]) != 0:
            sys.exit("eval_vol failed")
        for i, name in enumerate("DE"):
            vol = read_volume(Path(tmp) / "vols" / f"vol_{i:03d}.mrc")[0]
            cd, ce = (masked_correlation(vol, t) for t in truth)
            print(f"volume at the class-{name} mean of z: correlation with D {cd:.3f}, with E {ce:.3f}")


if __name__ == "__main__":
    main()
