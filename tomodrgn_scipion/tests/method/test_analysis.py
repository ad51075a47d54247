"""analyze, pc_traversal, graph_traversal and filter on simulated data: what the latent space shows,
where every output points (star order, particle ids), the content of the plots, and the errors."""
import json
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from tomodrgn_scipion.method.analysis import TrainingRun, pca, spearman
from tomodrgn_scipion.method.cli import main
from tomodrgn_scipion.method.cli_analysis import run_analysis
from tomodrgn_scipion.method.outputs import safe_name
from tomodrgn_scipion.method.phantom import two_state_phantom
from tomodrgn_scipion.method.simulate import SimulationConfig, simulate
from tomodrgn_scipion.method.star import TiltSeriesStar, read_star
from tomodrgn_scipion.method.stacks import read_volume

from .test_training import SMALL_VAE


def _points(ax) -> int:
    """Number of points drawn by the scatter collections of an axes."""
    return sum(len(c.get_offsets()) for c in ax.collections)


@pytest.fixture(scope="module")
def continuous(tmp_path_factory) -> Path:
    """400 particles mixing the two phantom states with a coefficient t per particle (mixing.txt)."""
    out = tmp_path_factory.mktemp("continuous")
    simulate(list(two_state_phantom(16)), out, SimulationConfig(
        n_particles=400, particles_per_tomogram=16, tilt_max=45.0, tilt_step=9.0, snr=3.0, seed=5, continuous=True))
    return out


@pytest.fixture(scope="module")
def subset_run(tmp_path_factory, two_state) -> tuple[Path, np.ndarray]:
    """A VAE trained on a non-consecutive subset of the two-state particles (others have no z)."""
    out = tmp_path_factory.mktemp("subset")
    ind = np.array([i for i in range(64) if i % 3 != 1])
    np.savetxt(out / "ind.txt", ind, fmt="%d")
    assert main(["train_vae", str(two_state / "particles.star"), "-o", str(out / "vae"), "--zdim", "3", "-n", "2",
                 "--ind", str(out / "ind.txt"), *SMALL_VAE]) == 0
    return out / "vae", ind


def test_pc1_follows_continuous_heterogeneity(tmp_path, continuous):
    vae = tmp_path / "vae"
    assert main(["train_vae", str(continuous / "particles.star"), "-o", str(vae), "--zdim", "2", "-n", "24",
                 "--checkpoint", "0", *SMALL_VAE, "-b", "4"]) == 0
    assert main(["analyze", str(vae), "--ksample", "4", "--skip-vol"]) == 0
    pc1 = np.load(vae / "analyze.24" / "z_pca.npy")[:, 0]
    t = np.loadtxt(continuous / "mixing.txt")
    assert abs(spearman(pc1, t)) >= 0.8


def test_analyze_outputs_in_star_order(tmp_path, subset_run, capsys):
    vae, ind = subset_run
    star = TiltSeriesStar(json.loads((vae / "config.json").read_text())["data"]["particles"])
    assert main(["analyze", str(vae), "--ksample", "3", "-o", str(tmp_path / "ana"), "--n-per-pc", "4"]) == 0
    out = capsys.readouterr().out
    assert "k-means, 3 clusters" in out and f"{len(ind)} analysed of 64" in out
    ana = tmp_path / "ana"
    labels = np.loadtxt(ana / "kmeans3" / "labels.txt", dtype=int)
    assert len(labels) == star.n_particles == 64
    assert set(np.flatnonzero(labels >= 0)) == set(ind) and set(labels[ind]) == {0, 1, 2}
    # the centres are particles: their z (by particle id) is the centre written in centers.txt
    centers = np.loadtxt(ana / "kmeans3" / "centers.txt", ndmin=2)
    centers_ind = np.loadtxt(ana / "kmeans3" / "centers_ind.txt", dtype=int)
    ids = (vae / "particle_ids.txt").read_text().split()
    z = np.load(vae / "z.npy")
    for c, i in zip(centers, centers_ind):
        np.testing.assert_allclose(c, z[ids.index(star.particle_ids[i])], rtol=1e-5, atol=1e-6)
        assert labels[i] >= 0
    # each particle is in the cluster of its nearest centre... up to k-means' own assignment: check centres' labels
    assert sorted(labels[centers_ind]) == [0, 1, 2]
    assert len(list((ana / "kmeans3").glob("vol_*.mrc"))) == 3
    for d in (1, 2):
        zt = np.loadtxt(ana / f"pc{d}" / "z_values.txt")
        assert zt.shape == (4, 3) and len(list((ana / f"pc{d}").glob("vol_*.mrc"))) == 4
    assert not (ana / "pc3").exists()
    vol, pixel = read_volume(ana / "kmeans3" / "vol_000.mrc")
    assert vol.shape == (16, 16, 16) and pixel == pytest.approx(6.0)
    occ = np.genfromtxt(ana / "kmeans3" / "occupancy.csv", delimiter=",", skip_header=1)[:, 1:]
    assert occ.sum() == len(ind) and occ.shape == (4, 3)  # 4 tomograms of 16 particles
    for png in ["z_pca.png", "z_pca_hexbin.png", "pca_explained.png", "controls.png", "loss.png",
                "kmeans3/z_pca_kmeans.png", "kmeans3/occupancy.png", "z_pca_traversals.png"]:
        img = matplotlib.image.imread(ana / png)
        assert img.std() > 0.01, png  # not blank
    assert (ana / "summary.txt").read_text().startswith("analysis of")
    assert np.load(ana / "z_pca.npy").shape == (len(ind), 3)


def test_plots_show_every_particle(tmp_path, subset_run):
    vae, ind = subset_run
    r = run_analysis(TrainingRun.open(vae), None, 3, tmp_path / "ana", skip_vol=True, skip_umap=True)
    n = len(ind)
    assert _points(r.figures["z_pca.png"].axes[0]) == n
    km = r.figures["kmeans3/z_pca_kmeans.png"].axes[0]
    assert _points(km) == n + 3  # particles, then the 3 centres
    assert km.get_xlabel().startswith("PC1 (") and "% of variance" in km.get_ylabel()
    hb = r.figures["z_pca_hexbin.png"].axes[0].collections[0]
    assert hb.get_array().sum() == n  # particle counts over the hexagons
    bars = r.figures["kmeans3/occupancy.png"].axes[0].patches
    assert sum(b.get_height() for b in bars) == n
    ctrl = r.figures["controls.png"]
    panels = [ax for ax in ctrl.axes if ax.get_label() != "<colorbar>"]
    assert panels and all(_points(ax) == n for ax in panels)
    titles = " ".join(ax.get_title() for ax in panels)
    assert "_rlnDefocusU" in titles and "tilts" not in titles.split()  # all particles have 11 tilts: constant
    loss = r.figures["loss.png"].axes[0].lines[0]
    assert len(loss.get_xdata()) == 2
    # the controls table has one row per informative column, with finite correlations for defocus
    assert np.isfinite(r.controls.loc["_rlnDefocusU @ first tilt", "PC1"])


def test_controls_find_a_latent_axis_made_of_metadata(tmp_path, two_state):
    """A 'latent space' that is defocus: the controls must rank defocus first."""
    from tomodrgn_scipion.method.analysis import per_particle_table

    star = TiltSeriesStar(two_state / "particles.star")
    table = per_particle_table(star)
    from tomodrgn_scipion.method.cli_analysis import controls_table

    dfu = table["_rlnDefocusU @ first tilt"].to_numpy()
    rng = np.random.default_rng(0)
    emb = {"PC1": dfu + rng.normal(0, dfu.std() * 0.1, len(dfu)), "PC2": rng.normal(size=len(dfu))}
    rho = controls_table(table, emb)
    assert rho.index[0].startswith("_rlnDefocus") and rho.iloc[0]["max |rho|"] > 0.9
    assert table["tilts"].eq(11).all() and (table["max dose (e/A^2)"] > 0).all()
    assert set(table["tomogram"]) == set(star.tomogram_of_particle())


def test_umap_when_zdim_above_two(tmp_path, subset_run):
    pytest.importorskip("umap")
    vae, ind = subset_run
    r = run_analysis(TrainingRun.open(vae), None, 2, tmp_path / "ana", skip_vol=True, n_pcs=0)
    um = np.load(tmp_path / "ana" / "umap.npy")
    assert um.shape == (len(ind), 2) and _points(r.figures["umap.png"].axes[0]) == len(ind)
    assert (tmp_path / "ana" / "kmeans2" / "umap_kmeans.png").is_file()
    assert "UMAP1" in r.controls.columns


def test_analyze_errors(tmp_path, capsys, subset_run):
    vae, _ = subset_run
    for argv, msg in [
        (["analyze", str(vae), "--epoch", "7"], "no checkpoint weights.7.pt"),
        (["analyze", str(vae), "--ksample", "1000"], "--ksample 1000"),
        (["analyze", str(tmp_path / "nothing")], "training folder not found"),
        (["analyze", str(vae), "--particles", str(tmp_path / "moved.star"), "--skip-vol"], "moved.star"),
    ]:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and msg in err, err


def test_analyze_defaults_to_the_latest_checkpoint_of_a_run_in_progress(tmp_path, subset_run, capsys):
    import shutil

    vae, _ = subset_run
    live = tmp_path / "live"
    shutil.copytree(vae, live)
    # epoch 2 is logged in loss.csv but its checkpoint is not written yet; weights.pt/z.npy are from elsewhere
    for f in ("weights.2.pt", "z.2.npy", "z_logvar.2.npy"):
        (live / f).unlink()
    np.save(live / "z.npy", np.zeros_like(np.load(live / "z.npy")))
    assert main(["analyze", str(live), "--ksample", "2", "--skip-vol", "--skip-umap"]) == 0
    assert "at epoch 1 (of 2)" in capsys.readouterr().out
    np.testing.assert_allclose(np.load(live / "analyze.1" / "z_pca.npy"), pca(np.load(live / "z.1.npy")).coords, atol=1e-5)


def test_pc_traversal(tmp_path, capsys):
    rng = np.random.default_rng(1)
    z = rng.normal(size=(500, 3)) * [5.0, 1.0, 0.2] @ np.linalg.qr(rng.normal(size=(3, 3)))[0]
    np.save(tmp_path / "z.npy", z)
    assert main(["pc_traversal", str(tmp_path / "z.npy"), "--dim", "1", "-n", "7", "-o", str(tmp_path / "t")]) == 0
    zt = np.loadtxt(tmp_path / "t" / "pc1" / "z_values.txt")
    p = pca(z.astype(np.float32))
    steps = np.diff(zt, axis=0)
    # evenly spaced along PC1 and nowhere else, between the 5th and 95th percentiles
    np.testing.assert_allclose(np.abs(steps @ p.components[0]), np.linalg.norm(steps, axis=1), rtol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(steps, axis=1), np.linalg.norm(steps[0]), rtol=1e-3)
    vals = np.loadtxt(tmp_path / "t" / "pc1" / "pc_values.txt")
    np.testing.assert_allclose(vals[[0, -1]], np.percentile(p.coords[:, 0], [5, 95]), rtol=1e-4)
    assert main(["pc_traversal", str(tmp_path / "z.npy"), "--lim", "-1", "1", "--use-percentile-spacing",
                 "-o", str(tmp_path / "u")]) == 0
    assert sorted(x.name for x in (tmp_path / "u").iterdir()) == ["pc1", "pc2", "pc3"]
    v = np.loadtxt(tmp_path / "u" / "pc2" / "pc_values.txt")
    assert np.all(np.diff(v) > 0) and v[0] >= -1 and v[-1] <= 1
    assert main(["pc_traversal", str(tmp_path / "z.npy"), "--dim", "4", "-o", str(tmp_path / "w")]) == 2
    assert "--dim 4" in capsys.readouterr().err


def test_graph_traversal_follows_the_data(tmp_path, capsys):
    # particles on an arc: the path between the ends must walk along it, not cut across
    ang = np.linspace(0, np.pi, 200)
    z = np.column_stack([np.cos(ang), np.sin(ang)]) * 10
    order = np.random.default_rng(2).permutation(200)
    np.save(tmp_path / "z.npy", z[order])
    start, end = int(np.flatnonzero(order == 0)[0]), int(np.flatnonzero(order == 199)[0])
    assert main(["graph_traversal", str(tmp_path / "z.npy"), "--anchors", str(start), str(end), "-o",
                 str(tmp_path / "path.txt"), "--outind", str(tmp_path / "ind.txt")]) == 0
    rows = np.loadtxt(tmp_path / "ind.txt", dtype=int)
    assert rows[0] == start and rows[-1] == end
    arc = order[rows]
    assert np.all(np.diff(arc) > 0)  # monotonic along the arc
    np.testing.assert_allclose(np.loadtxt(tmp_path / "path.txt"), z[order][rows], rtol=1e-5)
    assert "length" in capsys.readouterr().out
    # two far-apart groups are not connected
    two = np.concatenate([z[:50], z[:50] + 1000])
    np.save(tmp_path / "two.npy", two)
    assert main(["graph_traversal", str(tmp_path / "two.npy"), "--anchors", "0", "60", "-o",
                 str(tmp_path / "p2.txt")]) == 2
    assert "no path from 0 to 60" in capsys.readouterr().err
    assert main(["graph_traversal", str(tmp_path / "two.npy"), "--anchors", "0", "100", "-o",
                 str(tmp_path / "p3.txt")]) == 2
    assert "out of range" in capsys.readouterr().err


def test_filter_round_trip_is_exact(tmp_path, capsys, two_state):
    src = two_state / "particles.star"
    original = src.read_bytes()
    star = TiltSeriesStar(src)
    labels = np.arange(star.n_particles) % 3
    np.savetxt(tmp_path / "labels.txt", labels, fmt="%d")
    assert main(["filter", str(src), "--labels", str(tmp_path / "labels.txt"), "--labels-sel", "0", "2",
                 "-o", str(tmp_path / "keep.star"), "--tomogram", "all"]) == 0
    assert main(["filter", str(src), "--labels", str(tmp_path / "labels.txt"), "--labels-sel", "0", "2",
                 "--action", "drop", "-o", str(tmp_path / "drop.star")]) == 0
    df = read_star(src)
    keep, drop = read_star(tmp_path / "keep.star"), read_star(tmp_path / "drop.star")
    kept_ids = {star.particle_ids[i] for i in np.flatnonzero(labels != 1)}
    expect = df[df["rlnGroupName"].isin(kept_ids)].reset_index(drop=True)
    assert list(keep.columns) == list(df.columns)
    assert keep.reset_index(drop=True).equals(expect)  # same rows, same text, same order
    assert set(drop["rlnGroupName"]) == set(df["rlnGroupName"]) - kept_ids
    assert len(keep) + len(drop) == len(df)
    per_tomo = sorted(tmp_path.glob("keep_*.star"))
    assert len(per_tomo) == 4 and sum(len(read_star(p)) for p in per_tomo) == len(keep)
    assert src.read_bytes() == original  # input untouched
    out = capsys.readouterr().out
    assert f"kept {len(kept_ids)} of 64 particles" in out
    # by index file, one tomogram
    tomo = star.tomogram_of_particle()[5]
    np.savetxt(tmp_path / "ind.txt", [5, 0, 40], fmt="%d")
    assert main(["filter", str(src), "--ind", str(tmp_path / "ind.txt"), "--tomogram", tomo,
                 "-o", str(tmp_path / "sel.star")]) == 0
    sel = read_star(tmp_path / "sel.star")
    assert list(dict.fromkeys(sel["rlnGroupName"])) == [star.particle_ids[i] for i in (0, 5, 40)]
    one = read_star(tmp_path / f"sel_{safe_name(tomo)}.star")
    assert set(one["rlnGroupName"]) == {star.particle_ids[i] for i in (0, 5)}


@pytest.mark.parametrize("args, msg", [
    (["--ind", "IND_OOR"], "particle index 64 out of range 0..63"),
    (["--ind", "IND_DUP"], "is given 2 times"),
    (["--labels", "LAB", "--labels-sel", "7"], "--labels-sel 7: no particle has that label"),
    (["--labels", "LAB_SHORT", "--labels-sel", "0"], "10 labels, but the star file has 64 particles"),
    (["--labels", "LAB", "--labels-sel", "0", "1", "2", "--action", "drop"], "leaves no particle"),
    (["--labels", "LAB"], "--labels needs --labels-sel"),
    (["--ind", "IND_OK", "--tomogram", "nowhere"], "--tomogram nowhere"),
    (["--ind", "MISSING"], "not found"),
])
def test_filter_errors(tmp_path, capsys, two_state, args, msg):
    files = {"IND_OK": [3, 5], "IND_OOR": [3, 64], "IND_DUP": [3, 3], "LAB": np.arange(64) % 3, "LAB_SHORT": np.zeros(10)}
    for name, vals in files.items():
        np.savetxt(tmp_path / f"{name}.txt", vals, fmt="%d")
    argv = [a if a not in files and a != "MISSING" else str(tmp_path / f"{a}.txt") for a in args]
    assert main(["filter", str(two_state / "particles.star"), *argv, "-o", str(tmp_path / "o.star")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and msg in err, err
    assert not (tmp_path / "o.star").exists()
