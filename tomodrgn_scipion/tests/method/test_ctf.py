"""The CTF against RELION's formulation, known wavelengths and analytic zeros."""
import math

import numpy as np
import pytest
import torch

from tomodrgn_scipion.method.ctf import compute_ctf, electron_wavelength


def test_wavelengths_match_tabulated_values():
    # Relativistic electron wavelengths (A), as tabulated in EM textbooks.
    assert float(electron_wavelength(300.0)) == pytest.approx(0.019687, abs=2e-6)
    assert float(electron_wavelength(200.0)) == pytest.approx(0.025079, abs=2e-6)
    assert float(electron_wavelength(100.0)) == pytest.approx(0.037014, abs=2e-6)


def relion_ctf(kx, ky, dfu, dfv, dfang, kv, cs, w, phase):
    """RELION's CTF (ctf.cpp): -sin(K1 df u^2 + K2 u^4 - K5 - K3), with its own sign of defocus."""
    lam = 12.2643247 / math.sqrt(kv * 1e3 * (1 + kv * 1e3 * 0.978466e-6))
    u2 = kx ** 2 + ky ** 2
    ang = np.arctan2(ky, kx)
    deltaf = -(0.5 * (dfu + dfv) + 0.5 * (dfu - dfv) * np.cos(2 * (ang - math.radians(dfang))))
    k1 = math.pi / 2 * 2 * lam
    k2 = math.pi / 2 * cs * 1e7 * lam ** 3
    k3 = math.atan(w / math.sqrt(1 - w * w))
    k5 = math.radians(phase)
    return -np.sin(k1 * deltaf * u2 + k2 * u2 * u2 - k5 - k3)


@pytest.mark.parametrize("dfu,dfv,dfang,kv,cs,w,phase", [
    (15000.0, 15000.0, 0.0, 300.0, 2.7, 0.1, 0.0),
    (23000.0, 21000.0, 35.0, 300.0, 2.7, 0.07, 0.0),
    (13099.8, 13099.8, 0.0, 300.0, 2.7, 0.1, 90.0),
    (30000.0, 28000.0, -70.0, 200.0, 2.0, 0.1, 30.0),
])
def test_ctf_is_relion_ctf_with_opposite_sign(dfu, dfv, dfang, kv, cs, w, phase):
    rng = np.random.default_rng(0)
    k = rng.uniform(-0.08, 0.08, size=(500, 2))
    ours = compute_ctf(torch.from_numpy(k), *(torch.tensor([v]) for v in (dfu, dfv, dfang, kv, cs, w, phase)))[0].numpy()
    ref = relion_ctf(k[:, 0], k[:, 1], dfu, dfv, dfang, kv, cs, w, phase)
    # tomoDRGN's CTF is RELION's negated (protein-dark convention); the two wavelength formulas
    # agree to 1e-5 relative, hence the tolerance.
    np.testing.assert_allclose(ours, -ref, atol=2e-3)


def test_zeros_of_a_pure_phase_ctf():
    df, kv = 20000.0, 300.0
    lam = float(electron_wavelength(kv))
    s = np.sqrt(np.arange(1, 6) / (lam * df))  # sin(pi lam df s^2) = 0
    k = torch.from_numpy(np.stack([s, np.zeros_like(s)], 1))
    c = compute_ctf(k, torch.tensor([df]), torch.tensor([df]), torch.tensor([0.0]), torch.tensor([kv]),
                    torch.tensor([0.0]), torch.tensor([0.0]))
    assert c.abs().max() < 1e-9


def test_contrast_at_zero_frequency_is_protein_dark():
    k0 = torch.zeros(1, 2, dtype=torch.float64)
    args = dict(dfu=torch.tensor([20000.0]), dfv=torch.tensor([20000.0]), dfang_deg=torch.tensor([0.0]),
                voltage_kv=torch.tensor([300.0]), cs_mm=torch.tensor([2.7]))
    assert float(compute_ctf(k0, w=torch.tensor([0.1]), **args)) == pytest.approx(-0.1)
    # A 90 degree phase plate turns all of the phase contrast into dark contrast at low frequency.
    assert float(compute_ctf(k0, w=torch.tensor([0.0]), phase_shift_deg=90.0, **args)) == pytest.approx(-1.0)


def test_astigmatism_axes():
    dfu, dfv, ang = 25000.0, 20000.0, 30.0
    lam = float(electron_wavelength(300.0))
    s = math.sqrt(1 / (lam * dfu))  # first zero along the dfU axis
    a = math.radians(ang)
    along_u = torch.tensor([[s * math.cos(a), s * math.sin(a)]], dtype=torch.float64)
    along_v = torch.tensor([[-s * math.sin(a), s * math.cos(a)]], dtype=torch.float64)
    args = (torch.tensor([dfu]), torch.tensor([dfv]), torch.tensor([ang]), torch.tensor([300.0]), torch.tensor([0.0]), torch.tensor([0.0]))
    assert abs(float(compute_ctf(along_u, *args))) < 1e-9
    assert abs(float(compute_ctf(along_v, *args))) > 0.5
