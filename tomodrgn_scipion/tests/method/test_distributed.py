"""Data-parallel training on the CPU (gloo): two ranks give the weights of one process with the same
batch and seed, every particle is seen once per epoch, z is gathered in particle order, and a run
of two ranks killed mid-way resumes on one rank to the end of an uninterrupted run."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tomodrgn_scipion.method.distributed import share
from tomodrgn_scipion.method.particles import ParticleTiltData
from tomodrgn_scipion.method.dataset import TiltSeriesData

SMALL = ["--zdim", "2", "--enc-layers-A", "1", "--enc-dim-A", "32", "--out-dim-A", "8", "--enc-layers-B", "1",
         "--enc-dim-B", "32", "--dec-layers", "2", "--dec-dim", "32", "--lr", "1e-3", "--seed", "3"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def command(star: Path, out: Path, *extra: str, device: str = "cpu") -> list[str]:
    return [sys.executable, "-m", "tomodrgn_scipion.method.cli", "train_vae", str(star), "-o", str(out), *SMALL,
            "--device", device, *extra]


def run(star: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    done = subprocess.run(command(star, out, *extra), env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done


def state(path: Path) -> dict:
    return torch.load(path, weights_only=True)["model"]


def assert_same_weights(a: Path, b: Path, atol: float) -> None:
    sa, sb = state(a), state(b)
    assert sa.keys() == sb.keys()
    worst = max(float((sa[k] - sb[k]).abs().max()) for k in sa)
    assert worst < atol, f"weights differ by up to {worst}"
    # not trivially equal: training moved them away from the initialisation
    assert any(not torch.equal(sa[k], sb[k]) for k in sa) or worst == 0


@pytest.fixture(scope="module")
def star(two_state) -> Path:
    return two_state / "particles.star"


def test_two_ranks_train_as_one_process(tmp_path, star):
    """Same global batch and seed: the averaged gradients of two ranks are those of the whole batch,
    so the weights agree to float rounding (summation order), and z comes back in particle order.
    64 particles in batches of 6: the last batch (4) and every share are uneven; -b 1 leaves one
    rank without a particle at every step."""
    for b in ("6", "1"):
        run(star, tmp_path / f"one{b}", "-b", b, "-n", "2")
        two = run(star, tmp_path / f"two{b}", "-b", b, "-n", "2", "--num-gpus", "2")
        assert_same_weights(tmp_path / f"one{b}" / "weights.pt", tmp_path / f"two{b}" / "weights.pt", 2e-5)
        z1, z2 = np.load(tmp_path / f"one{b}" / "z.npy"), np.load(tmp_path / f"two{b}" / "z.npy")
        assert z1.shape == z2.shape == (64, 2)
        np.testing.assert_allclose(z2, z1, atol=1e-4)
        log = (tmp_path / f"two{b}" / "run.log").read_text()
        assert log.splitlines()[0].split(" ", 2)[2].startswith("device cpu") and "2 ranks (gloo)" in log.splitlines()[0]
        assert "epoch 2/2" in log and "rank 1" not in two.stderr
    # a different seed is a different run: the comparison above can fail
    run(star, tmp_path / "other", "-b", "6", "-n", "2", "--seed", "4")
    with pytest.raises(AssertionError):
        assert_same_weights(tmp_path / "one6" / "weights.pt", tmp_path / "other" / "weights.pt", 2e-5)


def test_every_particle_once_per_epoch_over_the_ranks(star):
    data = ParticleTiltData(TiltSeriesData(star, lazy=True), ntilts=4)
    order = np.random.default_rng(0).permutation(data.n_particles)
    for world in (1, 2, 3):
        seen = []
        for rank in range(world):
            for b in data.batches(order, 5, rng=np.random.default_rng(1), rank=rank, world=world):
                assert b.group_size in (5, data.n_particles % 5)
                seen.append(b.particles)
        seen = np.concatenate(seen)
        assert np.array_equal(np.sort(seen), np.arange(data.n_particles)), world
    assert [share(7, r, 3) for r in range(3)] == [(0, 2), (2, 4), (4, 7)]


def test_two_ranks_killed_then_resumed_on_one(tmp_path, star):
    run(star, tmp_path / "straight", "-b", "4", "-n", "4")
    killed = tmp_path / "killed"
    proc = subprocess.Popen(command(star, killed, "-b", "4", "-n", "4", "--num-gpus", "2"), env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not (killed / "weights.2.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks, as a queue system's kill does
    proc.wait()
    assert not (killed / "weights.pt").exists(), "the run ended before it could be killed"
    done = run(star, killed, "-b", "4", "-n", "4", "--load", "latest")
    assert "resuming from" in (killed / "run.log").read_text(), done.stdout
    assert_same_weights(tmp_path / "straight" / "weights.pt", killed / "weights.pt", 2e-5)
    np.testing.assert_allclose(np.load(killed / "z.npy"), np.load(tmp_path / "straight" / "z.npy"), atol=1e-4)
    loss = np.genfromtxt(killed / "loss.csv", delimiter=",", names=True)
    assert list(loss["epoch"]) == [1, 2, 3, 4]


def test_failing_rank_stops_the_run_with_one_line(tmp_path, star):
    done = subprocess.run(command(star, tmp_path / "bad", "-b", "4", "-n", "1", "--num-gpus", "2", "--ntilts", "99"),
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "no particle has 99 tilt images" in done.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_two_ranks_on_one_gpu_train_as_one(tmp_path, star):
    """Two ranks sharing one GPU (gloo, as NCCL refuses a GPU twice) against one process on it; no AMP,
    so the comparison is at float32 rounding."""
    env = {**ENV, "CUDA_VISIBLE_DEVICES": "0"}
    one = subprocess.run(command(star, tmp_path / "one", "-b", "6", "-n", "2", "--no-amp", device="cuda"), env=env,
                         capture_output=True, text=True, timeout=600)
    two = subprocess.run(command(star, tmp_path / "two", "-b", "6", "-n", "2", "--no-amp", "--num-gpus", "2", device="cuda"),
                         env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0 and two.returncode == 0, one.stderr[-1500:] + two.stderr[-1500:]
    assert "2 ranks (gloo)" in (tmp_path / "two" / "run.log").read_text()
    assert_same_weights(tmp_path / "one" / "weights.pt", tmp_path / "two" / "weights.pt", 1e-4)
