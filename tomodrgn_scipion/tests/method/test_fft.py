"""Centred Fourier and Hartley transforms against explicit DFT sums (numpy, float64)."""
import numpy as np
import pytest
import torch

from tomodrgn_scipion.method import fft


def centred_dft_matrix(n: int) -> np.ndarray:
    """F[k, x] = exp(-2 pi i (k - n//2)(x - n//2) / n): origin and zero frequency at index n // 2."""
    k = np.arange(n) - n // 2
    return np.exp(-2j * np.pi * np.outer(k, k) / n)


@pytest.mark.parametrize("n", [8, 9])
def test_fft2_center_matches_explicit_dft(n):
    rng = np.random.default_rng(0)
    img = rng.normal(size=(n, n))
    m = centred_dft_matrix(n)
    expected = m @ img @ m.T  # rows are y, columns x
    got = fft.fft2_center(torch.from_numpy(img)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-9)
    back = fft.ifft2_center(torch.from_numpy(got)).real.numpy()
    np.testing.assert_allclose(back, img, atol=1e-12)


def test_fft3_center_matches_explicit_dft():
    n = 6
    rng = np.random.default_rng(1)
    vol = rng.normal(size=(n, n, n))
    m = centred_dft_matrix(n)
    expected = np.einsum("az,by,cx,zyx->abc", m, m, m, vol)
    got = fft.fft3_center(torch.from_numpy(vol)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-9)
    np.testing.assert_allclose(fft.ifft3_center(torch.from_numpy(got)).real.numpy(), vol, atol=1e-12)


def test_zero_frequency_at_centre_is_the_sum():
    img = torch.rand(10, 10, dtype=torch.float64)
    assert fft.fft2_center(img)[5, 5].real == pytest.approx(float(img.sum()))


@pytest.mark.parametrize("n", [8, 7])
def test_hartley_matches_cas_definition(n):
    rng = np.random.default_rng(2)
    img = rng.normal(size=(n, n))
    c = np.arange(n) - n // 2
    arg = 2 * np.pi * (c[:, None, None, None] * c[None, None, :, None] + c[None, :, None, None] * c[None, None, None, :]) / n
    # H[ky, kx] = sum_{y,x} img[y, x] cas(2 pi (ky y + kx x) / n), cas = cos + sin
    expected = np.einsum("abyx,yx->ab", np.cos(arg) + np.sin(arg), img)
    got = fft.ht2_center(torch.from_numpy(img)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-9)
    np.testing.assert_allclose(fft.iht2_center(torch.from_numpy(got)).numpy(), img, atol=1e-12)


def test_hartley_3d_roundtrip_and_fourier_recovery():
    vol = torch.rand(8, 8, 8, dtype=torch.float64)
    h = fft.ht3_center(vol)
    torch.testing.assert_close(fft.iht3_center(h), vol)
    f = fft.fft3_center(vol)
    rec = fft.hartley_to_fourier(h, 3)
    # Exact except on the Nyquist planes of an even box, which have no mirror partner.
    torch.testing.assert_close(rec[1:, 1:, 1:], f[1:, 1:, 1:])
    img = torch.rand(7, 7, dtype=torch.float64)
    torch.testing.assert_close(fft.hartley_to_fourier(fft.ht2_center(img), 2), fft.fft2_center(img))


def test_pad_and_crop_keep_the_origin():
    img = torch.zeros(8, 8)
    img[4, 4] = 1.0
    padded = fft.pad_center(img, 16, 2)
    assert padded.shape == (16, 16) and padded[8, 8] == 1.0
    torch.testing.assert_close(fft.crop_center(padded, 8, 2), img)
