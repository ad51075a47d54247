"""simulate: Warp-style tilt series, checked against exact projections and their own ground truth."""
import hashlib
import mrcfile

import numpy as np
import pandas as pd
import pytest
import torch

from tomodrgn_scipion.method import simulate as simulate_module
from tomodrgn_scipion.method.ctf import compute_ctf
from tomodrgn_scipion.method.dataset import TiltSeriesData
from tomodrgn_scipion.method.mapback import check_particles, read_volume_series
from tomodrgn_scipion.method.simulate import SimulationConfig, simulate, tilt_scheme
from tomodrgn_scipion.method.star import TiltSeriesStar, read_star
from tomodrgn_scipion.method.transforms import euler_to_matrix, rotation_about_y

from .exact import centred_ifft2, exact_projection_ft


def test_dose_symmetric_scheme():
    t = tilt_scheme(60, 3)
    assert len(t) == 41 and sorted(t) == list(np.arange(-60, 61, 3.0))
    assert t[:7].tolist() == [0, 3, -3, -6, 6, 9, -9]
    assert tilt_scheme(6, 3, "sequential").tolist() == [-6, -3, 0, 3, 6]
    assert tilt_scheme(6, 3, "bidirectional").tolist() == [0, 3, 6, -3, -6]


def test_star_columns_and_geometry(sim_high_snr):
    s = TiltSeriesStar(sim_high_snr / "particles.star")
    truth = pd.read_csv(sim_high_snr / "ground_truth.csv", dtype={"particle": str})
    assert s.n_particles == 40 and s.n_images == 40 * 41
    assert s.particle_ids == truth["particle"].tolist() and s.particle_ids[21] == "001_000001"
    rows = s.rows_of_particle[7]
    tilts = tilt_scheme(60, 3)
    np.testing.assert_allclose(s.stage_tilt_deg[rows], np.abs(tilts), atol=1e-4)
    np.testing.assert_allclose(s.dose[rows], 3.0 * np.arange(1, 42))
    # each tilt's pose is the particle orientation composed with the stage tilt about Y
    p_rot = euler_to_matrix(*(torch.tensor([truth.loc[7, c]]) for c in ("rot", "tilt", "psi")))
    poses = euler_to_matrix(*(torch.from_numpy(s.euler[rows, i]) for i in range(3)))
    torch.testing.assert_close(poses, rotation_about_y(torch.from_numpy(tilts)) @ p_rot, atol=1e-5, rtol=0)
    # defocus follows the particle height in the tilted specimen
    mean_df = (s.dfu[rows] + s.dfv[rows]) / 2
    rad = np.radians(tilts)
    expected = truth.loc[7, "tomogram_defocus_A"] - (np.sin(rad) * truth.loc[7, "x_A"] + np.cos(rad) * truth.loc[7, "z_A"])
    np.testing.assert_allclose(mean_df, expected, atol=0.05 + 1e-4 * abs(expected).max())
    assert (sim_high_snr / "labels.txt").read_text().split() == [str(v) for v in truth["label"]]


def test_volume_star_places_the_particles_of_the_image_star(sim_high_snr):
    """particles_volumes.star: one row per particle of particles.star, in order, in its tomogram, at the
    ground-truth x, z, with the orientation that every tilt image's pose composes with the stage tilt."""
    vs = read_volume_series(sim_high_snr / "particles_volumes.star")
    s = check_particles(vs, sim_high_snr / "particles.star")
    truth = pd.read_csv(sim_high_snr / "ground_truth.csv", dtype={"particle": str})
    assert vs.n_particles == 40 and vs.tomograms == [f"{t}.tomostar" for t in truth["tomogram"]]
    cfg = SimulationConfig()
    centre = np.array([cfg.tomogram_width, cfg.tomogram_width, cfg.tomogram_thickness]) / 2
    rel = vs.centers_a - centre  # coordinates x pixel size, from the tomogram's centre
    np.testing.assert_allclose(rel[:, 0], truth["x_A"], atol=0.01)
    np.testing.assert_allclose(rel[:, 2], truth["z_A"], atol=0.01)
    assert np.all(np.abs(rel) <= centre) and rel[:, 1].std() > cfg.tomogram_width / 5
    df = read_star(sim_high_snr / "particles_volumes.star")
    assert set(df["rlnPixelSize"]) == set(df["rlnDetectorPixelSize"]) == {"6.0"}
    # independently of simulate: Ry(t)^T A_image = A_volume for every tilt image, and the 0-degree
    # image carries the volume-series angles themselves
    a_vol = euler_to_matrix(*(torch.from_numpy(vs.euler[:, i]) for i in range(3)))
    a_img = euler_to_matrix(*(torch.from_numpy(s.euler[:, i]) for i in range(3)))
    signed_tilt = np.tile(tilt_scheme(60, 3), 40)
    untilt = rotation_about_y(torch.from_numpy(signed_tilt)).transpose(1, 2) @ a_img
    torch.testing.assert_close(untilt, a_vol[torch.from_numpy(s.particle_index)], atol=1e-5, rtol=0)
    zero = [rows[0] for rows in s.rows_of_particle]
    assert np.all(s.stage_tilt_deg[zero] == 0.0)
    np.testing.assert_allclose(s.euler[zero], vs.euler, atol=2e-6)


def test_volume_star_does_not_change_the_image_series(tmp_path, phantom, monkeypatch):
    """The y coordinates come from a stream of their own: the images and particles.star are those of the
    same seed before the volume-series star existed, whatever that stream draws."""
    cfg = SimulationConfig(n_particles=4, particles_per_tomogram=2, tilt_max=6, tilt_step=6, snr=1.0, seed=5)
    simulate(list(phantom), tmp_path / "a", cfg)
    monkeypatch.setattr(simulate_module, "_PLACEMENT_STREAM", (99,))
    simulate(list(phantom), tmp_path / "b", cfg)
    for rel in ("particles.star", "ground_truth.csv", "labels.txt"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    for rel in ("stacks/tomo_000.mrcs", "stacks/tomo_001.mrcs"):
        assert np.array_equal(mrcfile.read(tmp_path / "a" / rel), mrcfile.read(tmp_path / "b" / rel))
    va, vb = (read_star(tmp_path / k / "particles_volumes.star") for k in "ab")
    assert not va["rlnCoordinateY"].equals(vb["rlnCoordinateY"])
    assert va.drop(columns="rlnCoordinateY").equals(vb.drop(columns="rlnCoordinateY"))


def test_simulated_images_match_exact_dft_projections(tmp_path, phantom):
    """Noise-free simulate output against an exact DFT projection put through the same optics by hand."""
    cfg = SimulationConfig(n_particles=2, tilt_max=60, tilt_step=30, snr=0.0, defocus_min=4000, defocus_max=6000,
                           astigmatism=300, shift_std=1.5, contrast="dark", seed=4)
    simulate([phantom[1]], tmp_path, cfg)
    s = TiltSeriesStar(tmp_path / "particles.star")
    data = TiltSeriesData(tmp_path / "particles.star", invert=False, window=False)
    d = data.box
    k = (np.arange(d) - d // 2) / d
    ky, kx = np.meshgrid(k, k, indexing="ij")
    freqs = torch.from_numpy(np.stack([kx.ravel(), ky.ravel()], 1) / s.pixel_size)
    for row in range(0, s.n_images, 3):
        a = euler_to_matrix(*(torch.tensor([s.euler[row, i]]) for i in range(3)))[0].numpy()
        f = exact_projection_ft(phantom[1].astype(np.float64), a)
        ctf = compute_ctf(freqs, *(torch.tensor([v]) for v in (s.dfu[row], s.dfv[row], s.dfang[row], s.voltage[row], s.cs[row], s.w[row], s.phase_shift[row])))
        kk = np.sqrt(kx ** 2 + ky ** 2) / s.pixel_size
        ne = np.where(kk > 0, 0.245 * np.maximum(kk, 1e-9) ** -1.665 + 2.81, np.inf)
        f = f * ctf.numpy().reshape(d, d) * np.exp(-s.dose[row] / (2 * ne)) * s.ctf_scalefactor[row]
        ox, oy = s.shifts_px[row]
        f = f * np.exp(2j * np.pi * (kx * ox + ky * oy))  # content moves to -origin
        ref = centred_ifft2(f)
        img = data.real_images(np.array([row]))[0].numpy()
        assert np.corrcoef(img.ravel(), ref.ravel())[0, 1] > 0.999


def test_same_seed_same_data_and_snr(tmp_path, phantom):
    cfg = SimulationConfig(n_particles=6, particles_per_tomogram=3, tilt_max=9, snr=0.5, seed=11)
    simulate(list(phantom), tmp_path / "a", cfg)
    simulate(list(phantom), tmp_path / "b", cfg)
    for rel in ("particles.star", "particles_volumes.star", "ground_truth.csv", "labels.txt"):
        assert hashlib.sha256((tmp_path / "a" / rel).read_bytes()).digest() == hashlib.sha256((tmp_path / "b" / rel).read_bytes()).digest()
    for rel in ("stacks/tomo_000.mrcs", "stacks/tomo_001.mrcs"):  # MRC headers carry a creation time
        assert np.array_equal(mrcfile.read(tmp_path / "a" / rel), mrcfile.read(tmp_path / "b" / rel))
    other = SimulationConfig(**{**cfg.__dict__, "seed": 12})
    simulate(list(phantom), tmp_path / "c", other)
    assert not np.array_equal(mrcfile.read(tmp_path / "a" / "stacks/tomo_000.mrcs"), mrcfile.read(tmp_path / "c" / "stacks/tomo_000.mrcs"))
    # the noise is at the requested SNR: noisy minus noise-free images give the noise
    clean = SimulationConfig(**{**cfg.__dict__, "snr": 0.0})
    simulate(list(phantom), tmp_path / "clean", clean)
    noisy = TiltSeriesData(tmp_path / "a" / "particles.star", invert=False, window=False).real_images(np.arange(42)).numpy()
    signal = TiltSeriesData(tmp_path / "clean" / "particles.star", invert=False, window=False).real_images(np.arange(42)).numpy()
    assert signal.var() / (noisy - signal).var() == pytest.approx(0.5, rel=0.1)


def test_continuous_mixing_and_small_chunks(tmp_path, phantom):
    cfg = SimulationConfig(n_particles=5, particles_per_tomogram=5, tilt_max=3, snr=0.0, continuous=True,
                           chunk_images=4, shift_std=0.0, astigmatism=0.0, seed=2)
    simulate(list(phantom), tmp_path, cfg)
    t = np.loadtxt(tmp_path / "mixing.txt")
    assert t.shape == (5,) and np.all((t >= 0) & (t <= 1)) and not (tmp_path / "labels.txt").exists()
    data = TiltSeriesData(tmp_path / "particles.star", invert=True, window=False)
    assert data.n_images == 15
    # projection is linear: the image of a mixture is the mixture of the two states' images
    from tomodrgn_scipion.method import fft
    from tomodrgn_scipion.method.projection import Projector, SliceGeometry

    geom = SliceGeometry(32, cfg.pad)
    row = 4
    rot = data.rotations(np.array([row]))
    h = data.imaging.subset(np.array([row])).transfer(geom.freqs2d / data.pixel_size)
    parts = [fft.ifft2_center(geom.to_grid(Projector(torch.from_numpy(v), geom).project(rot) * h)).real[0].numpy() for v in phantom]
    tp = t[data.star.particle_index[row]]
    expected = (1 - tp) * parts[0] + tp * parts[1]
    np.testing.assert_allclose(data.real_images(np.array([row]))[0].numpy(), expected, atol=1e-4 * np.abs(expected).max())
