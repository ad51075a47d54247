"""CUDA against CPU: the same training, back-projection and rendering on both devices agree to float
tolerance, mixed precision trains to a finite loss, and inference on CUDA is deterministic. Skipped on
machines without CUDA (CI); run on a GPU machine by benchmarks/cuda_check.sh."""
from pathlib import Path

import numpy as np
import pytest
import torch

from tomodrgn_scipion.method.cli import main
from tomodrgn_scipion.method.stacks import read_volume

from .test_training import SMALL_VAE

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _train(star: Path, out: Path, device: str, *extra: str) -> None:
    argv = ["train_vae", str(star), "-o", str(out), "--zdim", "2", "-n", "2", *SMALL_VAE, "--device", device, *extra]
    assert main(argv) == 0


def test_training_on_cuda_matches_cpu(tmp_path, two_state):
    star = two_state / "particles.star"
    _train(star, tmp_path / "cpu", "cpu")
    _train(star, tmp_path / "cuda", "cuda", "--no-amp")
    z_cpu, z_cuda = np.load(tmp_path / "cpu" / "z.npy"), np.load(tmp_path / "cuda" / "z.npy")
    # Two epochs of Adam amplify float rounding differences only slightly.
    assert np.corrcoef(z_cpu.ravel(), z_cuda.ravel())[0, 1] > 0.99
    loss_cpu = np.genfromtxt(tmp_path / "cpu" / "loss.csv", delimiter=",", names=True)["total"]
    loss_cuda = np.genfromtxt(tmp_path / "cuda" / "loss.csv", delimiter=",", names=True)["total"]
    np.testing.assert_allclose(loss_cuda, loss_cpu, rtol=1e-3)


def test_mixed_precision_trains(tmp_path, two_state):
    _train(two_state / "particles.star", tmp_path / "amp", "cuda")
    loss = np.genfromtxt(tmp_path / "amp" / "loss.csv", delimiter=",", names=True)
    assert np.all(np.isfinite(loss["total"])) and loss["recon"][-1] < loss["recon"][0]


def test_backproject_on_cuda_matches_cpu(tmp_path, two_state):
    star = str(two_state / "particles.star")
    for dev in ("cpu", "cuda"):
        assert main(["backproject", star, "-o", str(tmp_path / dev / "map.mrc"), "--device", dev]) == 0
    a, b = (read_volume(tmp_path / dev / "map.mrc")[0] for dev in ("cpu", "cuda"))
    assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max()


def test_inference_on_cuda_is_deterministic(tmp_path, two_state):
    star = two_state / "particles.star"
    _train(star, tmp_path / "vae", "cuda")
    zs, vols = [], []
    for i in range(2):
        assert main(["eval_images", str(star), "-w", str(tmp_path / "vae" / "weights.pt"), "-c",
                     str(tmp_path / "vae" / "config.json"), "--out-z", str(tmp_path / f"z{i}.npy"),
                     "--device", "cuda"]) == 0
        zs.append(np.load(tmp_path / f"z{i}.npy"))
        assert main(["eval_vol", "-w", str(tmp_path / "vae" / "weights.pt"), "-c", str(tmp_path / "vae" / "config.json"),
                     "-z", "0", "0", "-o", str(tmp_path / f"v{i}"), "--device", "cuda"]) == 0
        vols.append(read_volume(next((tmp_path / f"v{i}").glob("*.mrc")))[0])
    assert np.array_equal(zs[0], zs[1]) and np.array_equal(vols[0], vols[1])
