"""``analyze_volumes``: PCA and k-means of volumes mixing the two phantom states in known amounts."""
from __future__ import annotations

import hashlib
from pathlib import Path

import mrcfile
import numpy as np
import pytest
from scipy.stats import spearmanr

from tomodrgn_scipion.method.cli import main
from tomodrgn_scipion.method.phantom import two_state_phantom
from tomodrgn_scipion.method.stacks import write_mrc
from tomodrgn_scipion.method.volume_analysis import scatter_figure

BOX = 16
PIXEL = 2.5
# evenly spaced, none at 0.5: the best 2-cluster split of a line of points is between 0.45 and 0.55
T = np.linspace(0.0, 1.0, 12)
NOISE = 0.01


@pytest.fixture(scope="module")
def states() -> tuple[np.ndarray, np.ndarray]:
    return two_state_phantom(BOX)


@pytest.fixture(scope="module")
def voldir(tmp_path_factory: pytest.TempPathFactory, states) -> Path:
    """12 volumes (1 - t) * state0 + t * state1 plus a little Gaussian noise, vol_000.mrc ... vol_011.mrc."""
    s0, s1 = states
    rng = np.random.default_rng(7)
    out = tmp_path_factory.mktemp("vols")
    for i, t in enumerate(T):
        vol = (1 - t) * s0 + t * s1 + NOISE * s0.max() * rng.standard_normal(s0.shape)
        write_mrc(out / f"vol_{i:03d}.mrc", vol.astype(np.float32), PIXEL)
    return out


@pytest.fixture(scope="module")
def masks(tmp_path_factory: pytest.TempPathFactory, states) -> dict[str, Path]:
    """``differ``: the voxels where the two states differ; ``same``: only voxels where they agree."""
    s0, s1 = states
    d = np.abs(s1 - s0) / max(s0.max(), s1.max())
    out = tmp_path_factory.mktemp("masks")
    paths = {"differ": out / "differ.mrc", "same": out / "same.mrc"}
    write_mrc(paths["differ"], (d > 0.1).astype(np.float32), PIXEL)
    write_mrc(paths["same"], (d < 1e-3).astype(np.float32), PIXEL)
    return paths


def _run(*args: str) -> int:
    return main(["analyze_volumes", *map(str, args)])


def _table(path: Path) -> np.ndarray:
    return np.loadtxt(path, ndmin=2)


def _vol(path: Path) -> np.ndarray:
    with mrcfile.open(path) as m:
        assert m.voxel_size.x == pytest.approx(PIXEL)
        return np.asarray(m.data, dtype=np.float64)


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.mrc"))}


def test_pc1_tracks_mixing_and_kmeans_splits_states(voldir, states, capsys):
    before = _digest(voldir)
    assert _run(voldir, "--ksample", "2") == 0
    out = capsys.readouterr().out
    res = voldir / "volume_analysis"
    assert "analysed 12 volumes of 16^3 at 2.5 A/px, 4096 voxels" in out
    for group in ("PCA (PC1", "k-means (2 clusters)", "volumes (mean, -/+ 2 sd along PC1..PC3)", "summary:"):
        assert sum(line.startswith(group) for line in out.splitlines()) == 1, group
    assert _digest(voldir) == before  # inputs untouched, no output among them

    assert (res / "volumes.txt").read_text().split() == [f"vol_{i:03d}.mrc" for i in range(12)]
    pcs = _table(res / "volume_pca.txt")
    assert pcs.shape == (12, 11)
    assert abs(spearmanr(pcs[:, 0], T).statistic) > 0.95
    ev = _table(res / "explained_variance.txt")
    assert ev.shape == (11, 2) and ev[:, 0].sum() == pytest.approx(1.0, abs=1e-4)
    assert ev[0, 0] > 0.5 and ev[0, 0] > 10 * ev[1, 0]
    # the variance column is the sample variance of the coordinates along each PC
    np.testing.assert_allclose(ev[:, 1], pcs.var(axis=0, ddof=1), rtol=1e-4)

    labels = np.loadtxt(res / "labels.txt", dtype=int)
    assert len(set(labels[T < 0.5])) == 1 and len(set(labels[T > 0.5])) == 1
    assert labels[T < 0.5][0] != labels[T > 0.5][0]
    centers = np.loadtxt(res / "centers_ind.txt", dtype=int)
    assert sorted(labels[centers]) == [0, 1]  # each centre volume lies in its own cluster

    s0, s1 = states
    vols = np.stack([_vol(voldir / f"vol_{i:03d}.mrc") for i in range(12)])
    np.testing.assert_allclose(_vol(res / "mean.mrc"), vols.mean(0), atol=1e-5)
    swing = _vol(res / "pc1_plus.mrc") - _vol(res / "pc1_minus.mrc")
    # PC1 changes the volume the way going from one state to the other does (up to sign)
    assert abs(np.corrcoef(swing.ravel(), (s1 - s0).ravel())[0, 1]) > 0.95
    # and spans -/+ 2 sd of the volumes' PC1 coordinates
    assert np.linalg.norm(swing) == pytest.approx(4 * pcs[:, 0].std(ddof=1), rel=1e-3)
    for name in ("pca_explained.png", "pca_scatter.png", "pc3_minus.mrc", "pc3_plus.mrc", "summary.txt"):
        assert (res / name).stat().st_size > 0
    assert not (res / "pc4_plus.mrc").exists()
    assert "cluster sizes: 0: 6, 1: 6" in (res / "summary.txt").read_text()


def test_mask_over_the_difference_vs_mask_excluding_it(voldir, masks, tmp_path, capsys):
    runs = {}
    for name, mask in masks.items():
        assert _run(voldir, "--mask", mask, "-o", tmp_path / name, "--ksample", "2") == 0
        runs[name] = (_table(tmp_path / name / "volume_pca.txt"), _table(tmp_path / name / "explained_variance.txt"))
    out = capsys.readouterr().out
    n_differ = int((_vol(masks["differ"]) > 0.5).sum())
    assert f"{n_differ} voxels inside {masks['differ']}" in out

    pcs, ev = runs["differ"]
    assert abs(spearmanr(pcs[:, 0], T).statistic) > 0.99
    assert ev[0, 0] > 0.9
    # without the voxels that differ, only noise is left: no dominant PC, and it does not follow t
    pcs_same, ev_same = runs["same"]
    assert ev_same[0, 0] < 0.3
    assert ev_same[0, 1] < 0.2 * ev[0, 1]
    assert abs(spearmanr(pcs_same[:, 0], T).statistic) < 0.9

    # PC volumes vary only inside the mask; outside it they are the mean of the inputs
    inside = _vol(masks["differ"]) > 0.5
    mean, plus = _vol(tmp_path / "differ" / "mean.mrc"), _vol(tmp_path / "differ" / "pc1_plus.mrc")
    np.testing.assert_array_equal(plus[~inside], mean[~inside])
    assert np.abs(plus[inside] - mean[inside]).max() > 0.1


def test_same_inputs_same_outputs(voldir, tmp_path, capsys):
    for name in ("a", "b"):
        assert _run(voldir, "-o", tmp_path / name, "--seed", "3") == 0
    capsys.readouterr()
    labels = np.loadtxt(tmp_path / "a" / "labels.txt", dtype=int)
    assert sorted(labels) == list(range(12))  # default K = min(20, 12 volumes): one volume per cluster
    for name in ("volume_pca.txt", "explained_variance.txt", "labels.txt", "centers_ind.txt", "summary.txt"):
        a_text = (tmp_path / "a" / name).read_text().replace(str(tmp_path / "a"), "")
        assert a_text == (tmp_path / "b" / name).read_text().replace(str(tmp_path / "b"), ""), name
    for name in ("mean.mrc", "pc1_minus.mrc", "pc2_plus.mrc", "pc3_plus.mrc"):
        np.testing.assert_array_equal(_vol(tmp_path / "a" / name), _vol(tmp_path / "b" / name))


def test_natural_order_mask_in_folder_and_few_pcs(states, tmp_path, capsys):
    s0, s1 = states
    vd = tmp_path / "vols"
    vd.mkdir()
    for i, t in zip((10, 2, 1), (0.0, 0.4, 1.0)):
        write_mrc(vd / f"vol_{i}.mrc", ((1 - t) * s0 + t * s1).astype(np.float32), PIXEL)
    write_mrc(vd / "mask.mrc", np.ones_like(s0), PIXEL)  # the mask is not one of the volumes
    assert _run(vd, "--mask", vd / "mask.mrc", "--n-pcs", "5") == 0
    out = capsys.readouterr().out
    assert "analysed 3 volumes" in out and "PC1..PC2" in out  # 3 volumes have 2 components
    res = vd / "volume_analysis"
    assert (res / "volumes.txt").read_text().split() == ["vol_1.mrc", "vol_2.mrc", "vol_10.mrc"]
    assert (res / "pc2_plus.mrc").is_file() and not (res / "pc3_plus.mrc").exists()


def test_scatter_has_one_point_per_volume(voldir, tmp_path, capsys):
    assert _run(voldir, "-o", tmp_path, "--ksample", "3") == 0
    capsys.readouterr()
    pcs = _table(tmp_path / "volume_pca.txt")
    ratio = _table(tmp_path / "explained_variance.txt")[:, 0]
    labels = np.loadtxt(tmp_path / "labels.txt", dtype=int)
    centers = np.loadtxt(tmp_path / "centers_ind.txt", dtype=int)
    fig = scatter_figure(pcs, ratio, labels, centers)
    ax = fig.axes[0]
    points = [c for c in ax.collections if c.get_label().startswith("cluster")]
    assert sum(len(c.get_offsets()) for c in points) == 12
    assert sorted(t.get_text() for t in ax.texts) == sorted(str(i) for i in range(12))
    assert "PC1 (" in ax.get_xlabel() and "% of variance" in ax.get_xlabel() and "PC2 (" in ax.get_ylabel()


def _write(folder: Path, names_shapes: list[tuple[str, int]], seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, d in names_shapes:
        write_mrc(folder / name, rng.standard_normal((d, d, d)).astype(np.float32), 1.0)
    return folder


@pytest.mark.parametrize("case", ["empty", "one", "shapes", "mask_shape", "identical", "ksample", "outdir", "not_folder"])
def test_bad_input_one_line_exit_2(case, tmp_path, capsys):
    vd = tmp_path / "vols"
    args: list = []
    if case == "empty":
        vd.mkdir()
        culprit = vd
    elif case == "one":
        _write(vd, [("vol_000.mrc", 8)])
        culprit = vd
    elif case == "shapes":
        _write(vd, [("vol_000.mrc", 8), ("vol_001.mrc", 8), ("vol_002.mrc", 10), ("vol_003.mrc", 12)])
        culprit = vd / "vol_002.mrc"
    elif case == "mask_shape":
        _write(vd, [(f"vol_{i}.mrc", 8) for i in range(3)])
        culprit = tmp_path / "mask.mrc"
        write_mrc(culprit, np.ones((10, 10, 10), np.float32), 1.0)
        args = ["--mask", culprit]
    elif case == "identical":
        vd.mkdir()
        for i in range(3):
            write_mrc(vd / f"vol_{i}.mrc", np.ones((8, 8, 8), np.float32), 1.0)
        culprit = vd
    elif case == "ksample":
        _write(vd, [(f"vol_{i}.mrc", 8) for i in range(3)])
        culprit, args = "--ksample 4", ["--ksample", "4"]
    elif case == "outdir":
        _write(vd, [(f"vol_{i}.mrc", 8) for i in range(3)])
        culprit, args = vd, ["-o", vd]
    else:
        culprit = vd
    before = {p.name: p.read_bytes() for p in vd.glob("*")} if vd.is_dir() else {}
    assert _run(vd, *args) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and str(culprit) in lines[0], captured.err
    assert lines[0].startswith("tomodrgn-scipion analyze_volumes: error:")
    after = {p.name: p.read_bytes() for p in vd.glob("*")} if vd.is_dir() else {}
    assert after == before  # nothing written, nothing changed
