"""The networks: Hermitian decoder, rendering consistent with central slices, encoder pooling."""
import numpy as np
import pytest
import torch

from tomodrgn_scipion.method import fft
from tomodrgn_scipion.method.errors import InputError
from tomodrgn_scipion.method.models import PE_TYPES, POOLING, ModelConfig, PositionalEncoding, render_volume, upper_half
from tomodrgn_scipion.method.projection import Projector, SliceGeometry
from tomodrgn_scipion.method.transforms import euler_to_matrix


def small_model(zdim: int = 2, box: int = 16, pe_type: str = "geom_lowf", pooling: str = "concatenate", seed: int = 0):
    torch.manual_seed(seed)
    cfg = ModelConfig(box=box, zdim=zdim, dec_layers=2, dec_dim=32, pe_type=pe_type, enc_in_dim=10, ntilts=3,
                      enc_layers_A=1, enc_dim_A=16, out_dim_A=8, enc_layers_B=1, enc_dim_B=16, pooling_function=pooling)
    return cfg.build()


def test_upper_half_takes_exactly_one_of_each_pair():
    k = torch.cartesian_prod(*[torch.arange(-3, 4, dtype=torch.float32)] * 3) / 8
    up = upper_half(k)
    assert torch.equal(up ^ upper_half(-k), (k != 0).any(1))


def test_decoder_is_hermitian():
    m = small_model()
    k = torch.rand(500, 3) - 0.5
    k = k[k.norm(dim=1) < 0.5]
    z = torch.randn(1, 2)
    with torch.no_grad():
        a, b = m.decoder(k[None], z)[0], m.decoder(-k[None], z)[0]
    assert torch.allclose(a[:, 0], b[:, 0]) and torch.allclose(a[:, 1], -b[:, 1])


def test_latent_term_per_slice_equals_concatenation():
    """The first layer adds W_z z once per slice; it must equal the textbook [pe(k), z] input."""
    m = small_model(zdim=3)
    k = (torch.rand(4, 16, 3) - 0.5) * 0.9
    k[..., 2] = -k[..., 2].abs()  # lower half: no conjugation involved
    z = torch.randn(4, 3)
    with torch.no_grad():
        ours = m.decoder(k, z)
        ref = m.decoder.mlp(torch.cat([m.decoder.pe(k), z[:, None, :].expand(-1, 16, -1)], -1))
    torch.testing.assert_close(ours, ref)


@pytest.mark.parametrize("angles", [(0.0, 0.0, 0.0), (0.0, 90.0, 0.0), (90.0, 90.0, 0.0), (0.0, 90.0, 90.0), (90.0, 0.0, 0.0)])
def test_rendered_volume_projects_to_decoded_slices(angles):
    """Rotations by multiples of 90 degrees put every slice frequency on a grid point, where the
    rendered volume's transform must equal the decoder exactly: this pins the [z, y, x] layout, the
    pose convention and the Hermitian completion of rendering against the projector of simulate."""
    box = 16
    m = small_model(box=box)
    z = torch.randn(2)
    vol = render_volume(m.decoder, z, box).to(torch.float64)
    geom = SliceGeometry(box, pad=1)
    rot = euler_to_matrix(*(torch.tensor([a], dtype=torch.float64) for a in angles))
    projected = Projector(vol, geom, dtype=torch.complex128).project(rot)[0]
    # exact grid points (cos 90 is 6e-17, which would put some on the other side of the k_z = 0 plane)
    coords = (torch.round(geom.coords @ rot[0] * box) / box).to(torch.float32)
    with torch.no_grad():
        dec = m.decoder(coords[None], z[None])[0].to(torch.float64)
    torch.testing.assert_close(projected, torch.complex(dec[:, 0], dec[:, 1]), rtol=1e-4, atol=1e-4 * dec.abs().max().item())


def test_render_downsample_keeps_scale_and_low_frequencies():
    box = 16
    m = small_model(zdim=0, box=box)
    full = render_volume(m.decoder, None, box)
    small = render_volume(m.decoder, None, box, out_box=8)
    # same low-frequency content: crop the full volume's transform and compare
    cropped = fft.ifft3_center(fft.crop_center(fft.fft3_center(full.to(torch.float64)), 8, 3)).real * (8 / box) ** 3
    assert small.shape == (8, 8, 8)
    assert np.corrcoef(small.numpy().ravel(), cropped.numpy().ravel())[0, 1] > 0.95
    # the zero frequency (total density per voxel volume) is kept: sum x voxel volume is unchanged
    assert small.sum().item() * (box / 8) ** 3 == pytest.approx(full.sum().item(), rel=1e-4)


@pytest.mark.parametrize("pe_type", PE_TYPES)
def test_positional_encodings(pe_type):
    pe = PositionalEncoding(pe_type, 8, 32, 0.5, seed=1)
    out = pe(torch.rand(10, 3) - 0.5)
    assert out.shape == (10, pe.out_dim) and torch.isfinite(out).all()
    assert pe.out_dim == (3 if pe_type == "none" else 48)


def test_gaussian_encoding_is_seeded():
    a, b, c = (PositionalEncoding("gaussian", 4, 32, 0.5, seed=s).proj for s in (1, 1, 2))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("pooling", POOLING)
def test_encoder_pooling(pooling):
    m = small_model(pooling=pooling)
    x = torch.randn(5, 3, 10)
    mu, logvar = m.encoder(x)
    assert mu.shape == logvar.shape == (5, 2)
    if pooling != "concatenate":
        # symmetric pooling does not depend on the order of the tilts
        mu2, _ = m.encoder(x[:, [2, 0, 1]])
        torch.testing.assert_close(mu, mu2, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kwargs, word", [({"zdim": -1}, "zdim"), ({"pooling_function": "sum"}, "pooling"),
                                          ({"dec_dim": 0}, "dec-dim"), ({"pe_type": "fourier"}, "pe-type")])
def test_bad_architecture(kwargs, word):
    with pytest.raises(InputError, match=word):
        ModelConfig(**{"box": 16, "zdim": 2, "enc_in_dim": 4, "ntilts": 2, **kwargs}).build()


def test_config_round_trip():
    cfg = ModelConfig(box=16, zdim=2, enc_in_dim=4, ntilts=2)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(InputError, match="unknown"):
        ModelConfig.from_dict({**cfg.to_dict(), "foo": 1})
