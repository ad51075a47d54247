"""convergence_vae on tiny real training runs: a frozen run has converged, a fast-learning one has not;
the outputs, the plot, determinism, the rule itself and the errors users meet."""
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from tomodrgn_scipion.method.cli import main
from tomodrgn_scipion.method.convergence import (PANELS, Thresholds, assess, default_interval, examined_epochs,
                                                 plot_convergence, verdict)

from .test_training import SMALL_NN, SMALL_VAE

FROZEN_EPOCHS = 4
NYQUIST = 12.0  # A: pixel 6 A of the simulated sets


def _train_vae(star: Path, out: Path, epochs: int, lr: str, *extra: str) -> Path:
    # SMALL_VAE ends with its own --lr; the later one wins in argparse
    assert main(["train_vae", str(star), "-o", str(out), "--zdim", "2", "-n", str(epochs), *SMALL_VAE, "--lr", lr,
                 *extra]) == 0
    return out


@pytest.fixture(scope="module")
def frozen(tmp_path_factory, two_state) -> Path:
    """A run whose weights never change: train_vae refuses --lr 0, and 1e-30 is below float32 resolution of
    every weight, so checkpoints (and hence z and the volumes) are bit-identical across epochs."""
    return _train_vae(two_state / "particles.star", tmp_path_factory.mktemp("frozen") / "vae", FROZEN_EPOCHS, "1e-30")


@pytest.fixture(scope="module")
def moving(tmp_path_factory, learnable) -> Path:
    """Three epochs at a high learning rate: the model is still changing fast."""
    return _train_vae(learnable / "particles.star", tmp_path_factory.mktemp("moving") / "vae", 3, "1e-2")


def _run(capsys, *argv: str) -> list[str]:
    assert main(["convergence_vae", *argv]) == 0
    return capsys.readouterr().out.strip().splitlines()


def _table(path: Path) -> np.ndarray:
    return np.genfromtxt(path, delimiter=",", names=True)


def test_frozen_run_has_converged_since_the_first_epoch(capsys, frozen):
    out = _run(capsys, str(frozen))
    assert out[-1].startswith("converged since epoch 1 ")
    conv = frozen / f"convergence.{FROZEN_EPOCHS}"
    t = _table(conv / "convergence.csv")
    assert list(t["epoch"]) == list(range(1, FROZEN_EPOCHS + 1))
    assert np.isnan(t["z_shift"][0]) and np.isnan(t["vol_corr"][0])
    np.testing.assert_array_equal(t["z_shift"][1:], 0.0)
    np.testing.assert_allclose(t["vol_corr"][1:], 1.0, atol=1e-12)
    np.testing.assert_allclose(t["fsc05_resolution_A"][1:], NYQUIST)
    assert (t["loss_change"][1:] <= 0.01).all() and list(t["stable"]) == [0, 1, 1, 1]
    text = (conv / "convergence.txt").read_text().splitlines()
    assert text[0] == out[-1]
    assert any("volume correlation >= 0.98" in line and "z shift <= 0.1" in line and "loss change <= 0.01" in line
               for line in text[1:])


def test_fast_learning_run_has_not_converged(capsys, moving):
    out = _run(capsys, str(moving), "-o", str(moving.parent / "conv"))
    assert out[-1].startswith("not yet converged: epoch 3 vs 2: ")
    assert "z shift" in out[-1]  # the latent space still moves a lot after 3 epochs
    t = _table(moving.parent / "conv" / "convergence.csv")
    assert list(t["stable"]) == [0, 0, 0] and t["z_shift"][-1] > 0.1
    assert (moving.parent / "conv" / "convergence.txt").read_text().splitlines()[0] == out[-1]


def test_outputs_plot_and_epoch_selection(tmp_path, capsys, frozen):
    out = _run(capsys, str(frozen), "--epoch", "3", "--n-vols", "3", "-o", str(tmp_path / "c"))
    assert out[-1].startswith("converged since epoch 1 ")
    c = tmp_path / "c"
    for name in ("convergence.csv", "convergence_volumes.csv", "convergence.png", "anchors.txt", "convergence.txt"):
        assert (c / name).is_file(), name
    assert list(_table(c / "convergence.csv")["epoch"]) == [1, 2, 3]
    per_anchor = _table(c / "convergence_volumes.csv")
    assert len(per_anchor) == 2 * 3 and set(per_anchor["epoch"]) == {2, 3}
    rows = np.loadtxt(c / "anchors.txt", usecols=0, dtype=np.int64, ndmin=1)
    assert len(rows) == 3 and len(set(rows)) == 3
    z3 = np.load(frozen / "z.3.npy")
    np.testing.assert_allclose(np.loadtxt(c / "anchors.txt", usecols=(2, 3), ndmin=2), z3[rows], rtol=1e-5, atol=1e-6)
    vols = sorted((c / "vols.3").glob("vol_*.mrc"))
    assert [v.name for v in vols] == ["vol_000.mrc", "vol_001.mrc", "vol_002.mrc"]
    with mrcfile.open(vols[0]) as m:
        assert m.data.shape == (16, 16, 16) and m.voxel_size.x == pytest.approx(6.0)

    # the figure: five titled panels, one point per comparison on each metric line, all epochs on the loss
    from tomodrgn_scipion.method.analysis import TrainingRun

    r = assess(TrainingRun.open(frozen), [1, 2, 3, 4], n_vols=2)
    fig = plot_convergence(r)
    axes = fig.get_axes()
    assert [ax.get_title() for ax in axes] == list(PANELS)
    loss_ax, metric_axes = axes[0], axes[1:]
    assert [len(line.get_xdata()) for line in loss_ax.get_lines()[:2]] == [4, 4]
    for ax in metric_axes:
        data = [ln for ln in ax.get_lines() if ln.get_linestyle() == "-"]
        assert data and all(list(ln.get_xdata()) == [2, 3, 4] for ln in data), ax.get_title()
        assert "epoch" in ax.get_xlabel() and ax.get_ylabel()
    for ax, value in zip(metric_axes[:3], (0.01, 0.1, 0.98)):
        assert any(ln.get_linestyle() == "--" and list(ln.get_ydata()) == [value, value] for ln in ax.get_lines())
    assert "(Å)" in axes[4].get_ylabel()
    assert any(ln.get_linestyle() == ":" and list(ln.get_xdata()) == [1, 1] for ln in axes[2].get_lines())


def test_same_inputs_same_outputs(tmp_path, capsys, frozen):
    for name in ("a", "b"):
        _run(capsys, str(frozen), "-o", str(tmp_path / name), "--epoch-interval", "1", "--random-seed", "3")
    for name in ("convergence.csv", "convergence_volumes.csv", "anchors.txt"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    with mrcfile.open(tmp_path / "a" / f"vols.{FROZEN_EPOCHS}" / "vol_001.mrc") as a, \
            mrcfile.open(tmp_path / "b" / f"vols.{FROZEN_EPOCHS}" / "vol_001.mrc") as b:
        np.testing.assert_array_equal(a.data, b.data)  # the header holds a creation time


def test_interval_leaving_two_epochs_cannot_converge_yet(tmp_path, capsys, frozen):
    out = _run(capsys, str(frozen), "--epoch-interval", "2", "-o", str(tmp_path / "c"))
    assert out[-1].startswith("not yet converged: epoch 4 vs 2 is stable, but 2 consecutive stable comparisons")
    assert list(_table(tmp_path / "c" / "convergence.csv")["epoch"]) == [2, 4]


def test_epoch_choice_and_rule():
    assert default_interval(20) == 1 and default_interval(21) == 2 and default_interval(100) == 6
    for n in (2, 19, 20, 21, 39, 40, 100, 250):
        got = examined_epochs(list(range(1, n + 1)), default_interval(n))
        assert got[-1] == n and 2 <= len(got) <= 20
    assert examined_epochs([5, 10, 15, 20, 25], 2) == [5, 15, 25]

    t = Thresholds()
    ep = np.array([1, 2, 3, 4, 5])
    good, bad = (1.0, 0.0, 0.0), (0.5, 0.0, 0.0)

    def rule(*steps):
        c, s, lc = (np.array([np.nan] + [x[i] for x in steps]) for i in range(3))
        return verdict(ep[:len(steps) + 1], c, s, lc, t)

    assert rule(bad, good, good, good)[0] == 2
    assert rule(good, good, good, good)[0] == 1
    since, stable, line = rule(good, good, bad, good)
    assert since is None and list(stable) == [False, True, True, False, True]
    assert line.startswith("not yet converged: only the last comparison (epoch 5 vs 4) is stable; epoch 4 vs 3: "
                           "volume correlation 0.5000 < 0.98")
    since, _, line = rule(good, good, good, (1.0, 0.2, np.nan))
    assert since is None and "z shift 0.2000 > 0.1" in line and "loss unknown" in line
    assert rule((np.nan, 0.0, 0.0), good, good)[0] == 2  # an undefined correlation is not stable


# ---------------------------------------------------------------------------------------------- errors
def _error(capsys, argv: list[str]) -> str:
    assert main(["convergence_vae", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_errors(tmp_path, capsys, two_state, frozen):
    star = two_state / "particles.star"
    assert "training folder not found" in _error(capsys, [str(tmp_path / "nowhere")])
    (tmp_path / "empty").mkdir()
    assert "config.json" in _error(capsys, [str(tmp_path / "empty")])
    assert main(["train_nn", str(star), "-o", str(tmp_path / "nn"), "-n", "2", *SMALL_NN]) == 0
    assert "train_nn run (zdim 0)" in _error(capsys, [str(tmp_path / "nn")])
    one = _train_vae(star, tmp_path / "one", 2, "1e-3", "--checkpoint", "0")
    err = _error(capsys, [str(one)])
    assert "fewer than 2 checkpoints" in err and "epochs with weights and z: 2" in err
    assert "no checkpoint weights.9.pt" in _error(capsys, [str(frozen), "--epoch", "9"])
    assert "--epoch 0" in _error(capsys, [str(frozen), "--epoch", "0"])
    assert "fewer than 2 checkpoints up to epoch 1" in _error(capsys, [str(frozen), "--epoch", "1"])
    assert "--n-vols 65: more than the 64 particles" in _error(capsys, [str(frozen), "--n-vols", "65"])
    assert "--epoch-interval 5: leaves only epoch 4" in _error(capsys, [str(frozen), "--epoch-interval", "5"])
    assert "--corr-threshold" in _error(capsys, [str(frozen), "--corr-threshold", "2"])
