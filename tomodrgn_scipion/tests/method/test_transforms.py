"""Euler angles, rotations and shifts against scipy and real-space computations."""
import numpy as np
import pytest
import torch
from scipy.ndimage import map_coordinates
from scipy.spatial.transform import Rotation

from tomodrgn_scipion.method import fft
from tomodrgn_scipion.method.projection import Projector, SliceGeometry
from tomodrgn_scipion.method.transforms import (euler_to_matrix, matrix_to_euler, random_rotations,
                                                rotation_about_y, shift_fourier)


def passive(axis: str, deg: float) -> np.ndarray:
    """Elementary coordinate-frame rotation, as RELION writes them."""
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    if axis == "z":
        return np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]])
    return np.array([[c, 0, -s], [0, 1, 0], [s, 0, c]])


ANGLES = np.array([[10.0, 20.0, 30.0], [-45.0, 131.81, 105.0], [170.0, 95.0, -60.0], [0.0, 0.0, 0.0]])


@pytest.mark.parametrize("rot,tilt,psi", ANGLES.tolist())
def test_euler_matches_relion_composition_and_scipy(rot, tilt, psi):
    ours = euler_to_matrix(torch.tensor([rot]), torch.tensor([tilt]), torch.tensor([psi]))[0].numpy()
    relion = passive("z", psi) @ passive("y", tilt) @ passive("z", rot)
    np.testing.assert_allclose(ours, relion, atol=1e-12)
    scipy_m = Rotation.from_euler("ZYZ", [rot, tilt, psi], degrees=True).as_matrix().T
    np.testing.assert_allclose(ours, scipy_m, atol=1e-12)


def test_matrix_to_euler_roundtrip_including_gimbal_lock():
    gen = torch.Generator().manual_seed(0)
    mats = torch.cat([random_rotations(200, gen), euler_to_matrix(torch.tensor([30.0, -70.0]), torch.tensor([0.0, 180.0]), torch.tensor([0.0, 0.0]))])
    rot, tilt, psi = matrix_to_euler(mats)
    assert torch.all((tilt >= 0) & (tilt <= 180))
    torch.testing.assert_close(euler_to_matrix(rot, tilt, psi), mats, atol=1e-9, rtol=0)


def test_random_rotations_are_proper_and_uniform():
    gen = torch.Generator().manual_seed(1)
    r = random_rotations(20000, gen)
    torch.testing.assert_close(r @ r.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(20000, 3, 3), atol=1e-12, rtol=0)
    assert torch.allclose(torch.linalg.det(r), torch.ones(20000, dtype=torch.float64))
    # The mean of uniformly distributed rotation matrices is zero.
    assert r.mean(0).abs().max() < 0.02


def test_stage_tilt_is_relion_rotation_about_y():
    m = rotation_about_y(torch.tensor([60.0]))[0].numpy()
    np.testing.assert_allclose(m, passive("y", 60.0), atol=1e-12)


def real_space_projection(vol: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Image(x, y) = sum_z V(A^T (x, y, z)), by cubic interpolation in real space (independent of our FFT code)."""
    d = vol.shape[0]
    c = np.arange(d) - d // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    pts = np.stack([x.ravel(), y.ravel(), z.ravel()], 0)  # image-frame coordinates (x, y, z)
    src = a.T @ pts  # volume-frame coordinates
    sampled = map_coordinates(vol, [src[2] + d // 2, src[1] + d // 2, src[0] + d // 2], order=3, mode="constant")
    return sampled.reshape(d, d, d).sum(0)


def test_fourier_slice_matches_real_space_projection(phantom):
    vol = phantom[0].astype(np.float64)
    geom = SliceGeometry(32, 2)
    proj = Projector(torch.from_numpy(vol), geom)
    angles = torch.tensor([[30.0, 60.0, -20.0], [-100.0, 135.0, 75.0]], dtype=torch.float64)
    rots = euler_to_matrix(angles[:, 0], angles[:, 1], angles[:, 2])
    imgs = fft.ifft2_center(geom.to_grid(proj.project(rots))).real.numpy()
    for img, a in zip(imgs, rots.numpy()):
        ref = real_space_projection(vol, a)
        assert np.corrcoef(img.ravel(), ref.ravel())[0, 1] > 0.995
        # and not its mirror image: the handedness is pinned
        assert np.corrcoef(img.ravel(), ref[:, ::-1].ravel())[0, 1] < 0.95


def test_shift_fourier_moves_content_like_roll():
    rng = np.random.default_rng(3)
    img = rng.normal(size=(2, 16, 16))
    f = fft.fft2_center(torch.from_numpy(img))
    shifted = fft.ifft2_center(shift_fourier(f, torch.tensor([[3.0, -2.0], [-5.0, 4.0]]))).real.numpy()
    np.testing.assert_allclose(shifted[0], np.roll(img[0], (-2, 3), axis=(0, 1)), atol=1e-10)
    np.testing.assert_allclose(shifted[1], np.roll(img[1], (4, -5), axis=(0, 1)), atol=1e-10)


def test_shift_at_the_used_frequencies_equals_the_grid_shift():
    """Training and back-projection shift only the half-plane frequencies they use: the values must be those
    of the whole-grid shift (which test_shift_fourier_moves_content_like_roll pins to np.roll) at the same
    frequencies, so the coordinates of SliceGeometry are those of the grid."""
    from tomodrgn_scipion.method.projection import SliceGeometry
    from tomodrgn_scipion.method.transforms import shift_at

    g = SliceGeometry(16, pad=1)
    rng = np.random.default_rng(2)
    f = fft.fft2_center(torch.as_tensor(rng.normal(size=(3, 16, 16))))
    s = torch.as_tensor(rng.uniform(-4, 4, (3, 2)))
    whole = g.from_grid(shift_fourier(f, s))[:, g.half]
    part = shift_at(g.from_grid(f)[:, g.half], s, g.coords[g.half][:, :2])
    torch.testing.assert_close(part, whole)
    assert not torch.allclose(part, g.from_grid(f)[:, g.half])
