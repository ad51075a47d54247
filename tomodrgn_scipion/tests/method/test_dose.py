"""Dose and tilt weighting against Grant & Grigorieff (2015) and hand computation."""
import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar

from tomodrgn_scipion.method import dose
from tomodrgn_scipion.method.lattice import Lattice


@pytest.mark.parametrize("k,expected", [(0.25, 0.245 * 0.25 ** -1.665 + 2.81), (0.1, 0.245 * 10 ** 1.665 + 2.81), (1 / 3, 4.33606)])
def test_critical_exposure_at_300kv(k, expected):
    assert float(dose.critical_exposure(torch.tensor([k]))[0]) == pytest.approx(expected, rel=1e-4)


def test_critical_exposure_scales_by_0_8_at_200kv():
    k = torch.tensor([0.05, 0.2])
    torch.testing.assert_close(dose.critical_exposure(k, 200.0), 0.8 * dose.critical_exposure(k, 300.0))


def test_dose_weights_are_exp_of_minus_half_dose_over_ne():
    k = torch.tensor([0.0, 0.05, 0.1, 0.2], dtype=torch.float64)
    n = torch.tensor([0.0, 10.0, 60.0])
    w = dose.dose_weights(k, n, 300.0).double()
    ne = 0.245 * k[1:] ** -1.665 + 2.81
    expected = torch.exp(-n[:, None] / (2 * ne[None, :]))
    torch.testing.assert_close(w[:, 1:], expected, atol=1e-6, rtol=1e-6)
    assert torch.all(w[:, 0] == 1.0)  # no damage at the origin


def test_optimal_exposure_factor_maximises_snr():
    # Summed signal of frames exposed up to N, over the noise sqrt(N) (Grant & Grigorieff eq. 3).
    def neg_snr(n, ne=1.0):
        return -(2 * ne * (1 - math.exp(-n / (2 * ne)))) / math.sqrt(n)

    best = minimize_scalar(neg_snr, bounds=(0.1, 10.0), method="bounded", options={"xatol": 1e-8}).x
    assert best == pytest.approx(dose.OPTIMAL_EXPOSURE_FACTOR, abs=1e-4)


def test_dose_mask_drops_overexposed_frequencies():
    lat = Lattice(32)
    mask = lat.dose_mask(torch.tensor([0.0, 40.0, 120.0]), pixel_size_a=4.0, voltage_kv=300.0)
    k_a = lat.radius / 4.0
    ne = 0.245 * k_a.double().clamp(min=1e-9) ** -1.665 + 2.81
    for row, n in zip(mask, (0.0, 40.0, 120.0)):
        assert torch.equal(row, (n <= 2.51284 * ne) | (k_a == 0))
    assert mask[0].all() and mask[1].sum() > mask[2].sum()


def test_tilt_weights_are_cos_tilt():
    scale = torch.tensor([1.0, math.cos(math.radians(30)), 0.5, 0.0])
    torch.testing.assert_close(dose.tilt_weights(scale), scale.float())
    # The upstream bug: treating the radian tilt as degrees leaves weights of ~1.
    upstream = np.cos(np.radians(np.arccos(0.5)))
    assert upstream > 0.999 and float(dose.tilt_weights(torch.tensor([0.5]))) == pytest.approx(0.5)


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_imaging_params_as_device_tensors_give_the_same_transfer(device):
    """Streamed batches compute the CTF and weights from the parameters as tensors on the training device;
    the numbers must be those of the host arrays, premultiplied and already dose-weighted images included."""
    from tomodrgn_scipion.method.imaging import ImagingParams

    rng = np.random.default_rng(0)
    n = 7
    host = ImagingParams(rng.uniform(1e4, 3e4, n), rng.uniform(1e4, 3e4, n), rng.uniform(-180, 180, n), np.full(n, 300.0),
                         np.full(n, 2.7), np.full(n, 0.07), np.zeros(n), rng.uniform(0, 120, n), rng.uniform(0.5, 1, n),
                         premultiplied=rng.random(n) < 0.5, dose_weighted=rng.random(n) < 0.5)
    freqs = torch.as_tensor(rng.uniform(-0.08, 0.08, (50, 2)))
    on = host.to(device)
    assert isinstance(on.dfu, torch.Tensor) and on.dfu.device.type == device and on.premultiplied.dtype == torch.bool
    fd = freqs.to(device)
    torch.testing.assert_close(on.data_transfer(fd).cpu(), host.data_transfer(freqs))
    torch.testing.assert_close(on.attenuation(fd, True, True, True).cpu(), host.attenuation(freqs, True, True, True))
    for a, b in zip(on.insertion(fd, True, True), host.insertion(freqs, True, True)):
        torch.testing.assert_close(a.cpu(), b)
    # the flags matter: without them the premultiplied rows would differ
    plain = ImagingParams(*(getattr(host, f) for f in ("dfu", "dfv", "dfang", "voltage", "cs", "w", "phase_shift", "dose",
                                                         "ctf_scalefactor")))
    assert not torch.allclose(plain.to(device).data_transfer(fd).cpu(), host.data_transfer(freqs))
