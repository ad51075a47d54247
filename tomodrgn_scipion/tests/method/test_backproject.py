"""backproject: recovers volumes from simulated data and the external sample."""
import numpy as np
import pytest
import torch

from tomodrgn_scipion.method import fsc as fsc_mod
from tomodrgn_scipion.method.backproject import backproject, split_halves
from tomodrgn_scipion.method.cli import main
from tomodrgn_scipion.method.dataset import TiltSeriesData
from tomodrgn_scipion.method.fsc import masked_correlation
from tomodrgn_scipion.method.simulate import SimulationConfig, simulate
from tomodrgn_scipion.method.stacks import read_volume


def test_high_snr_simulation_is_recovered(sim_high_snr, phantom):
    data = TiltSeriesData(sim_high_snr / "particles.star")  # protein-light: default inversion
    r = backproject(data)
    assert masked_correlation(r.full, phantom[0]) >= 0.95
    assert masked_correlation(r.filtered, phantom[0]) >= 0.95
    assert r.resolution_0143 < 3 * data.pixel_size
    weighted = backproject(data, dose_weight=True, tilt_weight=True, dose_mask=True)
    assert masked_correlation(weighted.full, phantom[0]) >= 0.95
    # without the inversion the map comes out negated: the contrast convention is pinned
    assert masked_correlation(backproject(TiltSeriesData(sim_high_snr / "particles.star", invert=False)).full, phantom[0]) < -0.9


def test_sample_acceptance(sample_star, sample_truth, tmp_path, capsys):
    out = tmp_path / "bp" / "map.mrc"
    assert main(["backproject", str(sample_star), "-o", str(out), "--uninvert-data"]) == 0
    printed = capsys.readouterr().out
    assert "FSC = 0.143" in printed and str(out) in printed
    mean_truth = (sample_truth[0] + sample_truth[1]) / 2
    filtered, pix = read_volume(tmp_path / "bp" / "map_filtered.mrc")
    assert pix == pytest.approx(13.1)
    corr = masked_correlation(filtered, mean_truth)
    assert corr >= 0.79  # tomoDRGN's backproject_voxel: 0.79 filtered
    # the hand is right: the mirror image of the truth fits worse
    assert masked_correlation(filtered, mean_truth[::-1]) < corr - 0.1
    for suffix in ("half1.mrc", "half2.mrc", "fsc.csv", "fsc.png"):
        assert (tmp_path / "bp" / f"map_{suffix}").stat().st_size > 0
    table = np.genfromtxt(tmp_path / "bp" / "map_fsc.csv", delimiter=",", names=True)
    assert len(table) == 17 and table["fsc"][0] == pytest.approx(1.0, abs=1e-6)


def test_warp_like_data_do_as_well(tmp_path, phantom):
    """No phase plate, protein-dark, 41 tilts, dose and noise like the sample's: filtered map >= 0.79."""
    cfg = SimulationConfig(n_particles=144, particles_per_tomogram=72, contrast="dark", phase_shift=0.0, snr=0.056,
                           pixel_size=8.0, seed=5)
    simulate(list(phantom), tmp_path, cfg)
    data = TiltSeriesData(tmp_path / "particles.star", invert=False)
    r = backproject(data, dose_weight=True)
    mean_truth = (phantom[0] + phantom[1]) / 2
    assert masked_correlation(r.filtered, mean_truth) >= 0.79


def test_half_maps_split_particles_not_tilts(sim_high_snr):
    data = TiltSeriesData(sim_high_snr / "particles.star")
    chosen = np.arange(3, 13)
    rows1, rows2 = split_halves(data, chosen)
    p1, p2 = set(data.star.particle_index[rows1]), set(data.star.particle_index[rows2])
    assert p1.isdisjoint(p2) and p1 | p2 == set(chosen) and abs(len(p1) - len(p2)) <= 1
    assert len(rows1) + len(rows2) == 10 * 41  # every tilt of every chosen particle, once
    r = backproject(data, particles=chosen)
    assert r.n_particles == 10 and r.n_images == 10 * 41


def test_fsc_and_resolution():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(16, 16, 16, generator=gen, dtype=torch.float64)
    b = torch.randn(16, 16, 16, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(fsc_mod.fsc(a, a), torch.ones(9, dtype=torch.float64))
    assert fsc_mod.fsc(a, b)[2:].abs().max() < 0.35
    assert fsc_mod.fsc(a, -a)[3].item() == pytest.approx(-1.0)
    curve = np.array([1.0, 0.9, 0.5, 0.1, 0.0])
    freq, res = fsc_mod.resolution_at(curve, d=8, pixel_size=2.0)
    shell = 2 + (0.5 - 0.143) / 0.4
    assert freq == pytest.approx(shell / 16) and res == pytest.approx(16 / shell)
    assert fsc_mod.resolution_at(np.ones(5), 8, 2.0)[1] == pytest.approx(4.0)  # never crosses: Nyquist


def test_lowpass_removes_high_frequencies():
    gen = torch.Generator().manual_seed(1)
    v = torch.randn(16, 16, 16, generator=gen, dtype=torch.float64)
    lp = fsc_mod.lowpass(v, cutoff_freq=4 / (16 * 1.0), pixel_size=1.0, edge_shells=1.0)
    curve = fsc_mod.fsc(lp, v)
    assert curve[1:3].min() > 0.99
    spectrum = torch.fft.fftshift(torch.fft.fftn(lp)).abs()
    shells = torch.round(torch.sqrt(sum(g ** 2 for g in torch.meshgrid(*[torch.arange(16) - 8] * 3, indexing="ij"))))
    assert spectrum[shells >= 6].max() < 1e-9
