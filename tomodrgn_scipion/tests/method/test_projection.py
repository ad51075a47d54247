"""Central-slice projection against an exact DFT projection; projector/back-projector adjointness."""
import numpy as np
import pytest
import torch

from tomodrgn_scipion.method import fft, interp
from tomodrgn_scipion.method.projection import BackProjector, Projector, SliceGeometry
from tomodrgn_scipion.method.simulate import SimulationConfig
from tomodrgn_scipion.method.transforms import euler_to_matrix, random_rotations

from .exact import centred_ifft2, exact_projection_ft


def our_projections(vol: np.ndarray, rots: torch.Tensor, pad: int = SimulationConfig.pad) -> np.ndarray:
    geom = SliceGeometry(vol.shape[0], pad)
    values = Projector(torch.from_numpy(vol.astype(np.float64)), geom).project(rots)
    return fft.ifft2_center(geom.to_grid(values)).real.numpy()


def test_projection_matches_exact_dft_on_phantom(phantom):
    vol = phantom[1]
    rots = random_rotations(4, torch.Generator().manual_seed(5))
    ours = our_projections(vol, rots)
    for img, a in zip(ours, rots.numpy()):
        ref = centred_ifft2(exact_projection_ft(vol, a))
        assert np.corrcoef(img.ravel(), ref.ravel())[0, 1] > 0.999


def test_projection_matches_exact_dft_on_ribosome(sample_truth):
    vol = sample_truth[0]
    # the identity puts every sample on a grid point, the hardest case for the apodization correction
    rots = torch.cat([torch.eye(3, dtype=torch.float64)[None],
                      euler_to_matrix(torch.tensor([-45.0, 120.0]), torch.tensor([131.8, 40.0]), torch.tensor([105.0, -30.0]))])
    ours = our_projections(vol, rots)
    for img, a in zip(ours, rots.numpy()):
        ref = centred_ifft2(exact_projection_ft(vol, a))
        assert np.corrcoef(img.ravel(), ref.ravel())[0, 1] > 0.999


def test_projection_scale_is_the_line_integral(phantom):
    """No stray normalisation: the projection's values equal the exact DFT sum's, not just their shape."""
    vol = phantom[0].astype(np.float64)
    rots = random_rotations(3, torch.Generator().manual_seed(9))
    for img, a in zip(our_projections(vol, rots), rots.numpy()):
        ref = centred_ifft2(exact_projection_ft(vol, a))
        # trilinear sampling of a 3x oversampled transform attenuates the highest frequencies slightly
        assert float((img * ref).sum() / (ref ** 2).sum()) == pytest.approx(1.0, abs=1e-2)
    # and the zero frequency is exactly the total mass, whatever the orientation
    assert abs(our_projections(vol, rots).sum(axis=(1, 2)) / vol.sum() - 1).max() < 1e-5


def test_gather_and_scatter_are_adjoint():
    gen = torch.Generator().manual_seed(0)
    size = 12
    pts = torch.rand(500, 3, generator=gen, dtype=torch.float64) * size  # some wrap around the last index
    idx, w = interp.trilinear_stencil(pts, size)
    grid = torch.randn(size, size, size, generator=gen, dtype=torch.float64)
    y = torch.randn(500, generator=gen, dtype=torch.float64)
    acc = torch.zeros(size, size, size, dtype=torch.float64)
    interp.scatter(acc, idx, w, y)
    assert float((interp.gather(grid, idx, w) * y).sum()) == pytest.approx(float((grid * acc).sum()), rel=1e-10)


def test_backprojecting_noise_free_projections_without_ctf_recovers_the_volume(phantom):
    vol = phantom[0].astype(np.float64)
    geom = SliceGeometry(32, 2)
    rots = random_rotations(400, torch.Generator().manual_seed(2))
    values = Projector(torch.from_numpy(vol), geom).project(rots)
    bp = BackProjector(geom)
    ones = torch.ones(values[:, geom.half].shape, dtype=torch.float64)
    bp.insert(values[:, geom.half], ones, rots)
    rec = bp.reconstruct(1e-3).numpy()
    assert np.corrcoef(rec.ravel(), vol.ravel())[0, 1] > 0.995


def test_hermitian_half_equals_whole_plane(phantom):
    """Slicing or inserting one frequency of each {k, -k} pair gives what the whole plane gives."""
    geom = SliceGeometry(16, 2)
    vol = torch.from_numpy(phantom[0][::2, ::2, ::2].astype(np.float64))
    proj = Projector(vol, geom, dtype=torch.complex128)
    rots = random_rotations(5, torch.Generator().manual_seed(3))
    idx, w = interp.trilinear_stencil(geom.points(rots).reshape(-1, 3), geom.size)
    whole = interp.gather(proj.ft, idx, w).reshape(5, -1)
    # points are float32: k and -k round differently by ~1e-6 voxel
    torch.testing.assert_close(proj.project(rots), whole, atol=1e-4 * float(whole.abs().max()), rtol=0)
    # insertion: reference scatters every frequency of the plane
    values = torch.randn(whole.shape, dtype=torch.complex128, generator=torch.Generator().manual_seed(4))
    values = (values + values[:, geom.mirror].conj()) / 2  # a real image's transform
    h = torch.rand(whole.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    h = (h + h[:, geom.mirror]) / 2
    bp = BackProjector(geom)
    bp.insert(values[:, geom.half], h[:, geom.half], rots)
    num_ref = torch.zeros_like(bp.num)
    den_ref = torch.zeros_like(bp.den)
    interp.scatter(num_ref, idx, w, values.reshape(-1))
    interp.scatter(den_ref, idx, w, (h * h).reshape(-1))
    num, den = bp.accumulated()
    torch.testing.assert_close(num, num_ref, atol=1e-4 * float(num_ref.abs().max()), rtol=0)
    torch.testing.assert_close(den, den_ref, atol=1e-4 * float(den_ref.abs().max()), rtol=0)
