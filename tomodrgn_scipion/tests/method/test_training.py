"""train_vae, train_nn, eval_vol and eval_images on small simulated sets: learning, outputs,
determinism, resume after a kill, and the errors users meet."""
import json
import re
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans

from tomodrgn_scipion.method.cli import main
from tomodrgn_scipion.method.fsc import masked_correlation
from tomodrgn_scipion.method.phantom import two_state_phantom
from tomodrgn_scipion.method.simulate import SimulationConfig, simulate
from tomodrgn_scipion.method.star import TiltSeriesStar, read_star, write_star

BOX = 16
SMALL_VAE = ["--enc-layers-A", "1", "--enc-dim-A", "64", "--out-dim-A", "16", "--enc-layers-B", "1", "--enc-dim-B", "64",
             "--dec-layers", "2", "--dec-dim", "64", "-b", "8", "--lr", "1e-3"]
SMALL_NN = ["--layers", "2", "--dim", "64", "-b", "8", "--lr", "1e-3"]


def agreement(z: np.ndarray, labels: np.ndarray) -> float:
    k = KMeans(2, n_init=10, random_state=0).fit_predict(z)
    return max((k == labels).mean(), (k != labels).mean())


def train(star: Path, out: Path, *extra: str, epochs: int = 2, zdim: int = 2) -> int:
    return main(["train_vae", str(star), "-o", str(out), "--zdim", str(zdim), "-n", str(epochs), *SMALL_VAE, *extra])


def weights_equal(a: Path, b: Path) -> bool:
    sa, sb = (torch.load(p, weights_only=True)["model"] for p in (a, b))
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_vae_learns_the_two_states(tmp_path, capsys, learnable):
    assert train(learnable / "particles.star", tmp_path / "vae", "-b", "4", epochs=12) == 0
    out = capsys.readouterr().out
    assert "trained 12 epochs on 400 particles" in out
    loss = np.genfromtxt(tmp_path / "vae" / "loss.csv", delimiter=",", names=True)
    assert len(loss) == 12 and loss["recon"][-1] < 0.9 * loss["recon"][0]
    assert all(np.isfinite(loss[c]).all() for c in loss.dtype.names)  # plain numbers (numpy 2 reprs are not)
    labels = np.loadtxt(learnable / "labels.txt")
    assert agreement(np.load(tmp_path / "vae" / "z.1.npy"), labels) < 0.75  # not separated before training
    assert agreement(np.load(tmp_path / "vae" / "z.npy"), labels) >= 0.95


def test_outputs_and_logs(tmp_path, capsys, two_state):
    star = two_state / "particles.star"
    out = tmp_path / "vae"
    assert train(star, out, "--checkpoint", "1") == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["command"] == "train_vae" and cfg["model"]["zdim"] == 2 and cfg["model"]["ntilts"] == 11
    assert cfg["data"]["invert"] is True and cfg["data"]["norm"] > 0 and cfg["data"]["pixel_size"] == pytest.approx(6.0)
    assert cfg["training"]["lr"] == pytest.approx(1e-3) and cfg["training"]["seed"] == 0
    for name in ("weights.pt", "weights.1.pt", "weights.2.pt", "z.1.npy", "z.2.npy", "z.npy", "z_logvar.npy", "run.log"):
        assert (out / name).is_file(), name
    z = np.load(out / "z.npy")
    assert z.dtype == np.float32 and z.shape == (64, 2)
    np.testing.assert_array_equal(z, np.load(out / "z.2.npy"))
    ids = (out / "particle_ids.txt").read_text().split()
    assert ids == TiltSeriesStar(star).particle_ids
    log = (out / "run.log").read_text()
    epoch_lines = [line for line in log.splitlines() if "epoch 2/2" in line and "images/s" in line]
    assert epoch_lines and "recon" in epoch_lines[0] and "KL" in epoch_lines[0] and "ETA" in epoch_lines[0]


def test_same_seed_same_result(tmp_path, two_state):
    star = two_state / "particles.star"
    for name in ("a", "b"):
        assert train(star, tmp_path / name, "--seed", "5") == 0
    assert weights_equal(tmp_path / "a" / "weights.pt", tmp_path / "b" / "weights.pt")
    np.testing.assert_array_equal(np.load(tmp_path / "a" / "z.npy"), np.load(tmp_path / "b" / "z.npy"))
    assert train(star, tmp_path / "c", "--seed", "6") == 0
    assert not weights_equal(tmp_path / "a" / "weights.pt", tmp_path / "c" / "weights.pt")


def _command(star: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tomodrgn_scipion.method.cli", "train_vae", str(star), "-o", str(out), "--zdim", "2",
            "-n", "4", *SMALL_VAE, "-b", "4", *extra]


def test_killed_run_resumes_to_the_same_end(tmp_path, learnable):
    star = learnable / "particles.star"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_command(star, tmp_path / "straight"), check=True, env=env, capture_output=True)
    proc = subprocess.Popen(_command(star, tmp_path / "killed"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (tmp_path / "killed" / "weights.2.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "weights.pt").exists(), "the run ended before it could be killed"
    done = subprocess.run(_command(star, tmp_path / "killed", "--load", "latest"), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "resuming from" in (tmp_path / "killed" / "run.log").read_text()
    assert weights_equal(tmp_path / "straight" / "weights.pt", tmp_path / "killed" / "weights.pt")
    np.testing.assert_array_equal(np.load(tmp_path / "straight" / "z.npy"), np.load(tmp_path / "killed" / "z.npy"))
    loss = np.genfromtxt(tmp_path / "killed" / "loss.csv", delimiter=",", names=True)
    assert list(loss["epoch"]) == [1, 2, 3, 4]


def test_lazy_and_workers_give_the_same_z(tmp_path, two_state):
    """Streamed batches (read by worker threads, transformed on the training thread) hold the same numbers
    as the transforms kept in memory, so a streamed run follows the in-memory run step for step."""
    star = two_state / "particles.star"
    common = ("-b", "4", "--tilt-sampling", "random", "--recon-dose-weight")
    assert train(star, tmp_path / "mem", "--no-lazy", *common, epochs=3) == 0
    assert train(star, tmp_path / "lazy", "--lazy", "--num-workers", "2", *common, epochs=3) == 0
    z_mem, z_lazy = np.load(tmp_path / "mem" / "z.npy"), np.load(tmp_path / "lazy" / "z.npy")
    np.testing.assert_allclose(z_lazy, z_mem, atol=1e-5)
    assert np.abs(z_mem).max() > 1e-3  # z moved: the comparison is not between two zeros
    assert ", in memory" in (tmp_path / "mem" / "run.log").read_text()
    assert ", streamed from disk" in (tmp_path / "lazy" / "run.log").read_text()
    loss_mem = np.genfromtxt(tmp_path / "mem" / "loss.csv", delimiter=",", names=True)["recon"]
    loss_lazy = np.genfromtxt(tmp_path / "lazy" / "loss.csv", delimiter=",", names=True)["recon"]
    np.testing.assert_allclose(loss_lazy, loss_mem, rtol=1e-5)


def test_memory_or_streaming_is_chosen_and_said(tmp_path, two_state, monkeypatch, caplog):
    from tomodrgn_scipion.method import particles
    from tomodrgn_scipion.method.dataset import TiltSeriesData

    data = TiltSeriesData(two_state / "particles.star", lazy=True)
    with caplog.at_level("INFO", logger="tomodrgn_scipion"):
        fits = particles.ParticleTiltData(data)
        assert not fits.lazy and fits._values is not None
        monkeypatch.setattr(particles, "free_memory", lambda device: 2 * fits.n_images * fits.bytes_per_image - 1)
        streamed = particles.ParticleTiltData(data)
        assert streamed.lazy and streamed._values is None
    said = [r.getMessage() for r in caplog.records if "tilt images take" in r.getMessage()]
    assert "images in memory" in said[0] and "within 50%" in said[0]
    assert said[1].startswith("streaming images from disk") and "more than 50%" in said[1] and "--no-lazy" in said[1]
    # a bytes-per-image figure that is the real size of what is kept in memory
    kept = fits._values.element_size() * fits._values[0].numel() + fits._ctf.element_size() * fits._ctf[0].numel()
    assert fits.bytes_per_image == kept


def test_particles_with_too_few_tilts_are_dropped(tmp_path, capsys, two_state):
    df = read_star(two_state / "particles.star")
    groups = df["rlnGroupName"].unique()
    drop = df.index[(df["rlnGroupName"] == groups[3])][-1:]  # particle 3 loses one tilt
    star = two_state / "fewer.star"
    write_star(df.drop(drop), star)
    assert train(star, tmp_path / "v", "--ntilts", "11", epochs=1) == 0
    out = tmp_path / "v"
    ids = (out / "particle_ids.txt").read_text().split()
    assert len(ids) == 63 and groups[3] not in ids
    assert np.load(out / "z.npy").shape == (63, 2)
    assert "1 particles with fewer than 11 tilt images were dropped" in (out / "run.log").read_text()


def test_eval_images_reproduces_training_z(tmp_path, capsys, two_state):
    star = two_state / "particles.star"
    out = tmp_path / "v"
    assert train(star, out) == 0
    assert main(["eval_images", str(star), "-w", str(out / "weights.pt"), "-c", str(out / "config.json"),
                 "--out-z", str(tmp_path / "z.npy"), "--out-zlogvar", str(tmp_path / "lv.npy")]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "z.npy"), np.load(out / "z.npy"), atol=1e-6)
    np.testing.assert_allclose(np.load(tmp_path / "lv.npy"), np.load(out / "z_logvar.npy"), atol=1e-6)
    assert (tmp_path / "z_particle_ids.txt").read_text() == (out / "particle_ids.txt").read_text()


def test_eval_vol(tmp_path, capsys, two_state):
    out = tmp_path / "v"
    assert train(two_state / "particles.star", out) == 0
    zfile = tmp_path / "z.txt"
    np.savetxt(zfile, np.array([[0.0, 0.0], [1.0, -1.0], [-1.0, 0.5]]))
    base = ["eval_vol", "-w", str(out / "weights.pt"), "-c", str(out / "config.json"), "--zfile", str(zfile)]
    assert main(base + ["-o", str(tmp_path / "vols")]) == 0
    vols = sorted((tmp_path / "vols").glob("vol_*.mrc"))
    assert [v.name for v in vols] == ["vol_000.mrc", "vol_001.mrc", "vol_002.mrc"]
    with mrcfile.open(vols[1]) as m:
        plain = m.data.copy()
        assert m.voxel_size.x == pytest.approx(6.0) and plain.shape == (BOX,) * 3
    assert main(base + ["-o", str(tmp_path / "fi"), "--flip", "--invert"]) == 0
    with mrcfile.open(tmp_path / "fi" / "vol_001.mrc") as m:
        np.testing.assert_allclose(m.data, -plain[::-1], atol=1e-6)
    assert main(base + ["-o", str(tmp_path / "ds"), "--downsample", "8", "--lowpass", "30"]) == 0
    with mrcfile.open(tmp_path / "ds" / "vol_000.mrc") as m:
        assert m.data.shape == (8, 8, 8) and m.voxel_size.x == pytest.approx(12.0)


def test_train_nn_and_eval_vol_of_it(tmp_path, capsys):
    vols = two_state_phantom(BOX)
    simulate([vols[1]], tmp_path / "one", SimulationConfig(n_particles=40, particles_per_tomogram=20, tilt_max=45.0,
                                                           tilt_step=9.0, snr=10.0, seed=4))
    out = tmp_path / "nn"
    assert main(["train_nn", str(tmp_path / "one" / "particles.star"), "-o", str(out), "-n", "12", *SMALL_NN,
                 "--checkpoint", "6"]) == 0
    with mrcfile.open(out / "reconstruct.mrc") as m:
        vol = m.data.copy()
        assert m.voxel_size.x == pytest.approx(6.0)
    assert (out / "reconstruct.6.mrc").is_file()
    assert masked_correlation(vol, vols[1]) > 0.8
    assert masked_correlation(vol, vols[1]) > masked_correlation(vol, vols[1][::-1].copy()) + 0.1
    assert main(["eval_vol", "-w", str(out / "weights.pt"), "-c", str(out / "config.json"), "-o", str(tmp_path / "e")]) == 0
    with mrcfile.open(tmp_path / "e" / "vol_000.mrc") as m:
        np.testing.assert_allclose(m.data, vol, atol=1e-5)


def test_train_nn_phase_plate_is_not_inverted(tmp_path, capsys):
    """Upstream's train_nn gives a sign-inverted map on phase-plate data; ours follows the truth."""
    vols = two_state_phantom(BOX)
    simulate([vols[0]], tmp_path / "pp", SimulationConfig(n_particles=40, particles_per_tomogram=20, tilt_max=45.0,
                                                          tilt_step=9.0, snr=10.0, phase_shift=90.0, seed=2))
    assert main(["train_nn", str(tmp_path / "pp" / "particles.star"), "-o", str(tmp_path / "nn"), "-n", "12", *SMALL_NN]) == 0
    with mrcfile.open(tmp_path / "nn" / "reconstruct.mrc") as m:
        assert masked_correlation(m.data, vols[0]) > 0.8


# ---------------------------------------------------------------------------------------------- errors
def _error(capsys, argv: list[str], code: int = 2) -> str:
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_error_zdim(tmp_path, capsys, two_state):
    err = _error(capsys, ["train_vae", str(two_state / "particles.star"), "-o", str(tmp_path / "v"), "--zdim", "0"])
    assert "--zdim 0" in err and "train_nn" in err


def test_error_too_many_tilts(tmp_path, capsys, two_state):
    err = _error(capsys, ["train_vae", str(two_state / "particles.star"), "-o", str(tmp_path / "v"), "--zdim", "2", "--ntilts", "12"])
    assert "no particle has 12 tilt images" in err and "the most is 11" in err


def test_error_checkpoint_of_another_architecture(tmp_path, capsys, two_state):
    star = two_state / "particles.star"
    assert train(star, tmp_path / "v", epochs=1) == 0
    err = _error(capsys, ["train_vae", str(star), "-o", str(tmp_path / "v"), "--zdim", "2", "-n", "2", *SMALL_VAE,
                          "--dec-dim", "32", "--load", "latest"])
    assert "weights.1.pt" in err and "different architecture" in err and "dec-dim 64 vs 32" in err
    err = _error(capsys, ["eval_vol", "-w", str(tmp_path / "nothing.pt"), "-c", str(tmp_path / "v" / "config.json"),
                          "-o", str(tmp_path / "e"), "-z", "0", "0"])
    assert "nothing.pt" in err and "not found" in err


def test_error_bad_zfile(tmp_path, capsys, two_state):
    out = tmp_path / "v"
    assert train(two_state / "particles.star", out, epochs=1) == 0
    zfile = tmp_path / "z.txt"
    zfile.write_text("0 0 0\n")
    err = _error(capsys, ["eval_vol", "-w", str(out / "weights.pt"), "-c", str(out / "config.json"), "--zfile", str(zfile),
                          "-o", str(tmp_path / "e")])
    assert "z.txt" in err and "rows of 2 values" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present")
def test_error_cuda_absent(tmp_path, capsys, two_state):
    err = _error(capsys, ["train_vae", str(two_state / "particles.star"), "-o", str(tmp_path / "v"), "--zdim", "2", "--device", "cuda"])
    assert "CUDA" in err


def test_error_nan_loss_keeps_last_checkpoint(tmp_path, capsys, two_state):
    star = two_state / "particles.star"
    out = tmp_path / "v"
    assert train(star, out, epochs=1) == 0
    err = _error(capsys, ["train_vae", str(star), "-o", str(out), "--zdim", "2", "-n", "3", *SMALL_VAE[:-2], "--lr", "1e30",
                          "--load", "latest"], code=3)
    assert "loss became" in err and "at epoch 2" in err and "weights.1.pt" in err
    assert (out / "weights.1.pt").is_file() and not (out / "weights.2.pt").exists()


def test_beta_schedules():
    from tomodrgn_scipion.method.training import beta_schedule

    assert beta_schedule(None, 4)(10.0) == 0.25
    assert beta_schedule("0.3", 2)(0.0) == 0.3
    lin = beta_schedule("linear:0:1:10", 2)
    assert [lin(e) for e in (0, 5, 10, 20)] == [0.0, 0.5, 1.0, 1.0]
    cyc = beta_schedule("cyclic:2:4", 2)
    assert [cyc(e) for e in (0, 1, 2, 3, 4, 5)] == [0.0, 1.0, 2.0, 2.0, 0.0, 1.0]
    for bad in ("fast", "-1", "linear:0:1", "cyclic:1:0"):
        with pytest.raises(Exception, match="--beta"):
            beta_schedule(bad, 2)


def test_cosine_learning_rate():
    from tomodrgn_scipion.method.training import TrainSettings, learning_rate

    s = TrainSettings(num_epochs=10, lr=1e-3, lr_schedule="cosine")
    assert learning_rate(s, 0) == pytest.approx(1e-3) and learning_rate(s, 10) == pytest.approx(1e-5)
    assert learning_rate(s, 5) == pytest.approx(1e-3 * (0.01 + 0.99 * 0.5))
    assert learning_rate(TrainSettings(lr=2e-4), 7.5) == 2e-4


def test_random_tilt_sampling_is_seeded(tmp_path, two_state):
    star = two_state / "particles.star"
    for name in ("a", "b"):
        assert train(star, tmp_path / name, "--tilt-sampling", "random", "--lr-schedule", "cosine", epochs=1) == 0
    assert weights_equal(tmp_path / "a" / "weights.pt", tmp_path / "b" / "weights.pt")
    assert train(star, tmp_path / "c", "--lr-schedule", "cosine", epochs=1) == 0  # lowest-dose tilts train differently
    assert not weights_equal(tmp_path / "a" / "weights.pt", tmp_path / "c" / "weights.pt")


def test_dose_and_tilt_weights_and_dose_mask(tmp_path, two_state):
    """The loss weights change what is fitted; the dose mask removes frequencies from the count."""
    from tomodrgn_scipion.method.dataset import TiltSeriesData
    from tomodrgn_scipion.method.models import ModelConfig
    from tomodrgn_scipion.method.particles import ParticleTiltData
    from tomodrgn_scipion.method.training import reconstruction_loss

    df = read_star(two_state / "particles.star")
    df["rlnCtfBfactor"] = [repr(4 * float(b)) for b in df["rlnCtfBfactor"]]  # up to 132 e/A^2: beyond the optimum at Nyquist
    star = two_state / "high_dose.star"
    write_star(df, star)
    data = TiltSeriesData(star)
    torch.manual_seed(0)
    plain = ParticleTiltData(data)
    model = ModelConfig(box=BOX, zdim=2, dec_layers=1, dec_dim=16, enc_in_dim=plain.enc_in_dim, ntilts=plain.ntilts).build()
    z = torch.zeros(4, 2)
    losses, points = {}, {}
    for name, flags in {"plain": (False, False, False), "weights": (True, True, False), "mask": (False, False, True)}.items():
        d = ParticleTiltData(data, norm=plain.norm, dose_weight=flags[0], tilt_weight=flags[1], dose_mask=flags[2])
        b = d.batch(np.arange(4))
        with torch.no_grad():
            loss, pts = reconstruction_loss(model, d, b, z)
        losses[name], points[name] = float(loss), float(pts)
    assert losses["weights"] < losses["plain"]  # every weight is <= 1
    assert points["weights"] == points["plain"] and points["mask"] < points["plain"]
    # and the command line trains with all of them
    assert train(star, tmp_path / "v", "--recon-dose-weight", "--recon-tilt-weight", "--l-dose-mask", epochs=1) == 0
    cfg = __import__("json").loads((tmp_path / "v" / "config.json").read_text())
    assert cfg["training"]["l_dose_mask"] and cfg["training"]["recon_dose_weight"]


def test_max_steps_stops_and_finishes(tmp_path, two_state):
    out = tmp_path / "v"
    assert train(two_state / "particles.star", out, "-b", "4", "--max-steps", "3", "--num-workers", "1", epochs=5) == 0
    log = (out / "run.log").read_text()
    assert "stopped after 3 steps (--max-steps), 12 of 64 particles of epoch 1" in log
    assert len(np.genfromtxt(out / "loss.csv", delimiter=",", names=True, ndmin=1)) == 1
    assert np.load(out / "z.npy").shape == (64, 2) and (out / "weights.pt").is_file()
    rate = re.search(r"throughput (\d+) images/s over 3 steps \(decoder ([\d.]+) TFLOP/s\)", log)
    assert rate and int(rate.group(1)) > 0
