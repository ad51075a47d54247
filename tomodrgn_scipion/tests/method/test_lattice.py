"""Fourier lattice, masks and the real-space window."""
import numpy as np
import pytest
import torch

from tomodrgn_scipion.method.lattice import Lattice, radial_shells, soft_circular_window


def test_lattice_coordinates_follow_the_fft_layout():
    lat = Lattice(8, dtype=torch.float64)
    grid = lat.freqs2d.reshape(8, 8, 2)
    # index [y, x]: kx varies along the last axis, ky along the first; zero at index 4
    assert grid[4, 4].tolist() == [0.0, 0.0]
    assert grid[4, 5].tolist() == [0.125, 0.0] and grid[5, 4].tolist() == [0.0, 0.125]
    assert torch.all(lat.coords[:, 2] == 0)


def test_circular_mask_is_closed_under_negation():
    lat = Lattice(16, dtype=torch.float64)
    m = lat.circular_mask().reshape(16, 16).numpy()
    inner = m[1:, 1:]
    assert np.array_equal(inner, inner[::-1, ::-1])
    assert not m[0].any() and not m[:, 0].any()  # Nyquist row/column excluded
    assert m.sum() == sum(1 for y in range(-8, 8) for x in range(-8, 8) if x * x + y * y < 64)


def test_soft_window_values():
    w = soft_circular_window(64, 0.5, 0.9).numpy()
    assert w[32, 32] == 1.0 and w[32, 32 + 16] == 1.0          # r = 0.5 of the half box: still 1
    assert w[32, 32 + 29] == 0.0 and w[0, 0] == 0.0              # beyond 0.9
    t = (22 / 32 - 0.5) / 0.4                                    # r = 22 px: part way through the edge
    assert w[32, 32 + 22] == pytest.approx(0.5 * (1 + np.cos(np.pi * t)), abs=1e-6)
    assert 0.0 < w[32, 32 + 22] < 1.0
    assert w[32 - 22, 32] == pytest.approx(w[32, 32 + 22])       # circular


def test_radial_shells():
    s = radial_shells(8, 3)
    assert s[4, 4, 4] == 0 and s[4, 4, 0] == 4 and s[4, 4, 5] == 1
