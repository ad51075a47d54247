"""``downsample``: Fourier cropping of particle tilt series, written back in every format.

The crop is pinned against independent computations: a band-limited image (a sum of 2D sinusoids below
the new Nyquist frequency) sampled on the fine grid and cropped equals the same function sampled directly
on the coarse grid of pixel size p D / D' (pixel values keep their scale); the mean pixel value is kept,
as tomoDRGN's ``tomodrgn downsample`` (bpowell122/tomodrgn ``commands/downsample.py``,
``downsample_images``: Hartley transform, crop, inverse, times (D'/D)^2) and cryoDRGN's keep it, and the
result agrees with that Hartley crop written here with numpy.
"""
from __future__ import annotations

import hashlib
import re
import tracemalloc
import warnings
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import torch

from tomodrgn_scipion.method import fft
from tomodrgn_scipion.method.backproject import backproject
from tomodrgn_scipion.method.cli import main
from tomodrgn_scipion.method.dataset import TiltSeriesData
from tomodrgn_scipion.method.downsample import (BOX_COLUMNS, PIXEL_COLUMNS, SHIFT_PX_COLUMNS, WARPTOOLS_PX_COLUMNS,
                                                fourier_crop)
from tomodrgn_scipion.method.formats.blocks import read_blocks, with_values
from tomodrgn_scipion.method.phantom import two_state_phantom
from tomodrgn_scipion.method.simulate import SimulationConfig, simulate
from tomodrgn_scipion.method.star import TiltSeriesStar

LAYOUTS = ("relion3", "relion31", "relion5", "warptools")
PARTICLE_SERIES = ("relion5", "warptools")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def out_name(tmp_path: Path, lay: str) -> Path:
    return tmp_path / ("ds_optimisation_set.star" if lay in PARTICLE_SERIES else "ds.star")


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> dict[str, Path]:
    """The same 8 simulated particles (box 32, 5 tilts, 3D origins) in every layout; the particle series
    CTF-premultiplied, as RELION 5 and WarpTools export them."""
    out = {}
    for lay in LAYOUTS:
        cfg = SimulationConfig(n_particles=8, particles_per_tomogram=4, tilt_max=30, tilt_step=15, snr=5.0, layout=lay,
                               tilt_axis=85.0, tilt_series_geometry=True, shift_std=1.5, seed=4,
                               premultiply=lay in PARTICLE_SERIES)
        out[lay] = simulate(list(two_state_phantom(32)), tmp_path_factory.mktemp(lay), cfg)["star"]
    return out


@pytest.fixture(scope="module")
def downsampled(layouts, tmp_path_factory) -> dict[str, Path]:
    """Each layout downsampled from box 32 to 16 by the command line (batches of 7 images, across stacks)."""
    out = {}
    for lay, src in layouts.items():
        o = out_name(tmp_path_factory.mktemp(f"ds_{lay}"), lay)
        assert main(["downsample", str(src), "-D", "16", "-o", str(o), "-b", "7"]) == 0
        out[lay] = o
    return out


# ------------------------------------------------------------------------------------------- the crop
def sinusoids(n: int, pixel: float, period: float, terms: list[tuple[int, int, float, float]], offset: float) -> np.ndarray:
    """``offset + sum_m a_m cos(2 pi (kx_m x + ky_m y) / period + phase_m)`` sampled at pixel centres
    ``x = (j - n // 2) * pixel`` (columns), ``y = (i - n // 2) * pixel`` (rows); shape (n, n), float64."""
    c = (np.arange(n) - n // 2) * pixel
    y, x = np.meshgrid(c, c, indexing="ij")
    img = np.full((n, n), offset, dtype=np.float64)
    for kx, ky, a, phase in terms:
        img += a * np.cos(2 * np.pi * (kx * x + ky * y) / period + phase)
    return img


@pytest.mark.parametrize("d,small", [(32, 16), (32, 12), (64, 24)])
def test_crop_of_band_limited_image_is_the_function_on_the_coarse_grid(d, small):
    """Independent computation: the sinusoids sampled on the D grid (pixel p), cropped, equal the same
    sinusoids sampled directly on the D' grid with pixel p D / D' (same physical frequencies, all below the
    new Nyquist frequency), values unscaled."""
    pixel = 2.5
    period = d * pixel  # A: the fine box, so the image is periodic on both grids
    rng = np.random.default_rng(d + small)
    limit = small // 2 - 1
    terms = [(int(rng.integers(-limit, limit + 1)), int(rng.integers(-limit, limit + 1)), float(rng.normal()),
              float(rng.uniform(0, 2 * np.pi))) for _ in range(6)] + [(limit, -limit, 0.7, 0.3), (0, limit, -1.1, 1.0)]
    fine = sinusoids(d, pixel, period, terms, offset=3.25)
    coarse = sinusoids(small, pixel * d / small, period, terms, offset=3.25)
    got = fourier_crop(torch.from_numpy(fine)[None], small)[0].numpy()
    np.testing.assert_allclose(got, coarse, atol=1e-11, rtol=0)
    got32 = fourier_crop(torch.from_numpy(fine.astype(np.float32))[None], small)[0]
    assert got32.dtype == torch.float32
    np.testing.assert_allclose(got32.numpy(), coarse, atol=2e-5, rtol=0)


def upstream_hartley_crop(img: np.ndarray, small: int) -> np.ndarray:
    """tomoDRGN's crop written with numpy: centred Hartley transform (Re F - Im F), keep the central
    ``small`` frequencies, inverse (the same transform over the number of samples), times (small / D)^2."""
    def ht(x: np.ndarray) -> np.ndarray:
        f = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x)))
        return f.real - f.imag

    d = img.shape[-1]
    lo = d // 2 - small // 2
    h = ht(img)[lo:lo + small, lo:lo + small]
    return ht(h) / small ** 2 * (small / d) ** 2


def test_crop_keeps_the_mean_and_agrees_with_upstream():
    rng = np.random.default_rng(0)
    img = rng.normal(size=(3, 32, 32)) + 5.0
    got = fourier_crop(torch.from_numpy(img), 16).numpy()
    np.testing.assert_allclose(got.mean(axis=(1, 2)), img.mean(axis=(1, 2)), rtol=1e-12)
    # below the new Nyquist frequency the two crops agree (they treat the unpaired Nyquist row differently)
    f = fft.fft2_center(torch.from_numpy(img))
    k = torch.arange(32) - 16
    keep = (k.abs() < 8)[:, None] & (k.abs() < 8)[None, :]
    low = fft.ifft2_center(f * keep).real.numpy()
    got = fourier_crop(torch.from_numpy(low), 16).numpy()
    for i in range(3):
        np.testing.assert_allclose(got[i], upstream_hartley_crop(low[i], 16), atol=1e-12)


# ----------------------------------------------------------------------------------------- every format
def changed_labels(lay: str, block: str) -> set[str]:
    """The labels ``downsample`` may change in a block of the particles' file; every other value stays."""
    if block == "optics":
        return set(PIXEL_COLUMNS) | set(BOX_COLUMNS)
    px = set(SHIFT_PX_COLUMNS) if lay not in PARTICLE_SERIES else set(WARPTOOLS_PX_COLUMNS) if lay == "warptools" else set()
    return {"rlnImageName"} | set(PIXEL_COLUMNS) | set(BOX_COLUMNS) | px


def fields(line: str) -> tuple[list[str], list[str]]:
    """(values, the whitespace around them) of a star row without quoted values."""
    parts = re.split(r"(\s+)", line)
    return parts[0::2], parts[1::2]


@pytest.mark.parametrize("lay", LAYOUTS)
def test_every_format_round_trips(layouts, downsampled, lay):
    src, out = layouts[lay], downsampled[lay]
    old, new = TiltSeriesData(src, window=False, lazy=True), TiltSeriesData(out, window=False, lazy=True)
    a, b = old.star, new.star
    assert b.source == lay and b.particle_ids == a.particle_ids and b.n_images == a.n_images
    np.testing.assert_array_equal(b.particle_index, a.particle_index)
    assert new.box == 16 and b.pixel_size == pytest.approx(2 * a.pixel_size, rel=1e-12)
    for attr in ("euler", "dfu", "dfv", "dfang", "dose", "ctf_scalefactor", "voltage", "cs", "w", "phase_shift"):
        # WarpTools coordinates are in pixels of the images: rescaled, they give the same depth to 1e-6 A
        np.testing.assert_allclose(getattr(b, attr), getattr(a, attr), atol=1e-6 if lay == "warptools" else 0, rtol=0, err_msg=attr)
    np.testing.assert_array_equal(b.ctf_premultiplied, a.ctf_premultiplied)
    assert b.ctf_premultiplied.all() == (lay in PARTICLE_SERIES)
    np.testing.assert_allclose(b.shifts_px * b.pixel_size, a.shifts_px * a.pixel_size, atol=1e-6, rtol=0)  # A
    rows = np.arange(a.n_images)
    expected = fourier_crop(torch.from_numpy(old.images.get(rows)), 16).numpy()
    np.testing.assert_allclose(new.images.get(rows), expected, atol=1e-6, rtol=0)

    # the particles' file: the same blocks, header lines and rows; only the box-dependent values differ
    pin = read_blocks(src.parent / "particles.star")
    pout = read_blocks(b.image_anchor)
    assert pin.names() == pout.names()
    for x, y in zip(pin.blocks, pout.blocks):
        assert x.header == y.header and x.pairs == y.pairs and len(x.rows) == len(y.rows), x.name
        if not x.is_loop:
            continue
        may = changed_labels(lay, x.name)
        tx, ty = x.table(pin.path), y.table(pout.path)
        for c in x.labels:
            if c not in may:
                assert tx[c].tolist() == ty[c].tolist(), (x.name, c)
        for r, (lx, ly) in enumerate(zip(x.rows, y.rows)):  # untouched fields byte-identical, spacing included
            (vx, sx), (vy, sy) = fields(lx), fields(ly)
            assert sx == sy, (x.name, r)
            vx, vy = [v for v in vx if v], [v for v in vy if v]
            assert len(vx) == len(vy) == len(x.labels), (x.name, r)
            for c, fx, fy in zip(x.labels, vx, vy):
                if c not in may:
                    assert fx == fy, (x.name, r, c)
        for c in set(x.labels) & set(PIXEL_COLUMNS):
            np.testing.assert_allclose(ty[c].astype(float), 2 * tx[c].astype(float), rtol=1e-9, err_msg=c)
        for c in set(x.labels) & set(BOX_COLUMNS):
            assert set(ty[c]) == {"16"} and set(tx[c]) == {"32"}
    if lay in PARTICLE_SERIES:
        pairs_in, pairs_out = read_blocks(src).pairs(), read_blocks(out).pairs()
        assert pairs_out["rlnTomoTomogramsFile"] == str((src.parent / pairs_in["rlnTomoTomogramsFile"]).resolve())
        assert Path(pairs_out["rlnTomoParticlesFile"]) == out.with_name("ds_particles.star").resolve()
    # float32 stacks, one per input stack, the new pixel size in the header
    stacks_in = {Path(p).resolve() for p in old.images.paths}
    stacks_out = {Path(p).resolve() for p in new.images.paths}
    assert len(stacks_out) == len(stacks_in) and all(p.is_relative_to(out.with_name("ds_stacks")) for p in stacks_out)
    for p in stacks_out:
        with mrcfile.open(p) as m:
            assert m.data.dtype == np.float32 and m.data.shape[1:] == (16, 16)
            assert float(m.voxel_size.x) == pytest.approx(2 * a.pixel_size, rel=1e-6)
            # header statistics kept while streaming, as mrcfile computes them from the whole stack
            h = m.header
            np.testing.assert_allclose([h.dmin, h.dmax, h.dmean, h.rms],
                                       [m.data.min(), m.data.max(), m.data.mean(dtype=np.float64), m.data.std(dtype=np.float64)],
                                       rtol=1e-5, atol=1e-6)


def test_inputs_are_not_modified(layouts, tmp_path):
    src = layouts["relion5"]
    files = sorted(p for p in src.parent.rglob("*") if p.is_file())
    before = {p: digest(p) for p in files}
    assert main(["downsample", str(src), "-D", "24", "-o", str(tmp_path / "x_optimisation_set.star")]) == 0
    assert {p: digest(p) for p in files} == before
    assert TiltSeriesStar(tmp_path / "x_optimisation_set.star").pixel_size == pytest.approx(TiltSeriesStar(src).pixel_size * 32 / 24)


def test_particles_star_with_tomograms_option(layouts, tmp_path):
    """A particles.star given with --tomograms gives a particles.star, read with the same --tomograms."""
    src = layouts["warptools"]
    tomos = src.parent / "particles_tomograms.star"
    out = tmp_path / "p.star"
    assert main(["downsample", str(src.parent / "particles.star"), "--tomograms", str(tomos), "-D", "16", "-o", str(out)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.star", "p_stacks"]
    s = TiltSeriesStar(out, tomograms=tomos)
    ref = TiltSeriesStar(src)
    assert s.source == "warptools" and s.particle_ids == ref.particle_ids
    np.testing.assert_allclose(s.dfu, ref.dfu, atol=1e-6, rtol=0)


def test_float16_stacks_and_warp_image_numbers(layouts, tmp_path):
    """float16 stacks (MRC mode 12) give float32 ones; Warp's zero-padded ``000001@`` numbers keep their width."""
    import shutil

    src = Path(shutil.copytree(layouts["relion3"].parent, tmp_path / "in"))
    for p in (src / "stacks").glob("*.mrcs"):
        data = mrcfile.read(p)
        with mrcfile.new(p, overwrite=True) as m:
            m.set_data(data.astype(np.float16))
    star = src / "particles.star"
    star.write_text(re.sub(r"\t(\d+)@stacks", lambda m: f"\t{int(m.group(1)):06d}@stacks", star.read_text()))
    out = tmp_path / "ds.star"
    assert main(["downsample", str(star), "-D", "16", "-o", str(out)]) == 0
    old, new = TiltSeriesData(star, window=False), TiltSeriesData(out, window=False)
    rows = np.arange(old.n_images)
    assert mrcfile.open(new.images.paths[0]).data.dtype == np.float32
    np.testing.assert_allclose(new.images.get(rows), fourier_crop(torch.from_numpy(old.images.get(rows)), 16).numpy(), atol=1e-6)
    assert [n.split("@")[0] for n in new.star.image_names] == [n.split("@")[0] for n in old.star.image_names]
    assert new.star.image_names[0].startswith("000001@/")


def test_with_values_keeps_every_other_character(tmp_path):
    """Only the named fields of the named rows change; spacing, other values and quoted values stay."""
    path = tmp_path / "t.star"
    path.write_text('# version 30001\n\ndata_optics\n\nloop_\n_rlnOpticsGroup #1\n_rlnImagePixelSize #2\n  1   6.0\n\n'
                    'data_particles\n\nloop_\n_rlnA #1\n_rlnImageName #2\n_rlnC #3\n'
                    '  x\t  "a b"   0.100\n y  stack.mrcs\t\t7  \n')
    star = read_blocks(path)
    edited = with_values(star, "particles", {"rlnImageName": [None, "/new dir/s.mrcs"], "rlnC": ["1.5", None]})
    assert edited.get("particles").rows == ['  x\t  "a b"   1.5', ' y  "/new dir/s.mrcs"\t\t7  ']
    assert edited.get("optics") is star.get("optics") and star.get("particles").rows[1] == " y  stack.mrcs\t\t7  "
    assert edited.get("particles").table(path)["rlnImageName"].tolist() == ["a b", "/new dir/s.mrcs"]


# ------------------------------------------------------------------------------------- reconstruction
def crop_volume(vol: np.ndarray, small: int) -> np.ndarray:
    d = vol.shape[-1]
    f = fft.crop_center(fft.fft3_center(torch.from_numpy(vol.astype(np.float64))), small, 3)
    return (fft.ifft3_center(f).real * (small / d) ** 3).numpy()


@pytest.mark.parametrize("lay", ["relion3", "relion5"])
def test_backprojection_of_downsampled_set_matches_cropped_map(layouts, downsampled, lay):
    """The map of the downsampled set against the Fourier-cropped map of the original: correlation 0.99976
    (relion3) and 0.99981 (relion5, CTF-premultiplied) measured; the real-space window and the FSC-based Wiener
    term are not exactly the same on the two grids."""
    full = backproject(TiltSeriesData(layouts[lay]), pad=2).full
    small = backproject(TiltSeriesData(downsampled[lay]), pad=2).full
    corr = np.corrcoef(crop_volume(full, 16).ravel(), small.ravel())[0, 1]
    assert corr > 0.999, corr


# ---------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("args,words", [
    (["-D", "15"], ["-D 15", "even"]),
    (["-D", "6"], ["-D 6", "at least 8"]),
    (["-D", "32"], ["-D 32", "smaller than", "32"]),
    (["-D", "48"], ["-D 48", "smaller than"]),
    (["-D", "16", "-b", "0"], ["--batch-size 0"]),
    (["-D", "16", "--stack-dir", "{src}/stacks"], ["would replace the input", "tomo_000.mrcs"]),
    (["-D", "16", "-o", "{src}/particles.star"], ["would replace the input", "particles.star"]),
    (["-D", "16", "-o", "{tmp}/ds.txt"], ["must be a .star file"]),
])
def test_bad_input_is_one_line(layouts, tmp_path, capsys, args, words):
    src = layouts["relion3"].parent
    before = {p: digest(p) for p in src.rglob("*") if p.is_file()}
    argv = ["downsample", str(src / "particles.star"), "-o", str(tmp_path / "ds.star")]
    argv += [x.format(src=src, tmp=tmp_path) for x in args]
    capsys.readouterr()
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and all(w in lines[0] for w in words), lines
    assert {p: digest(p) for p in src.rglob("*") if p.is_file()} == before
    assert not list(tmp_path.rglob("*.star")) and not list(tmp_path.rglob("*.mrcs"))


def test_failure_half_way_leaves_no_output(layouts, tmp_path, capsys):
    """A NaN in the second stack stops the run after the first stack is done: no stack, star or temporary
    file is left."""
    import shutil

    src = Path(shutil.copytree(layouts["relion3"].parent, tmp_path / "in"))
    p = src / "stacks" / "tomo_001.mrcs"
    data = mrcfile.read(p).copy()
    data[1, 3, 3] = np.nan
    with warnings.catch_warnings(), mrcfile.new(p, overwrite=True) as m:
        warnings.simplefilter("ignore", RuntimeWarning)  # mrcfile's word on the NaN
        m.set_data(data)
    out = tmp_path / "o" / "ds.star"
    assert main(["downsample", str(src / "particles.star"), "-D", "16", "-o", str(out), "-b", "3"]) == 2
    assert "tomo_001.mrcs" in capsys.readouterr().err
    assert not [f for f in (tmp_path / "o").rglob("*") if f.is_file()]


# ------------------------------------------------------------------------------------------- memory
def test_memory_does_not_grow_with_the_number_of_images(tmp_path):
    """Images are streamed: the peak of traced allocations (numpy arrays, star text) while the command runs
    stays far below the size of the images and grows much less than they do."""
    sim = simulate(list(two_state_phantom(64)), tmp_path / "sim", SimulationConfig(
        n_particles=24, particles_per_tomogram=24, tilt_max=30, tilt_step=15, snr=0.0, seed=1))["star"]
    full = TiltSeriesStar(sim)
    few = sim.parent / "few.star"
    full.write_subset(np.arange(6), few)
    peaks = {}
    for name, star, n in (("few", few, 6 * 5), ("all", sim, 24 * 5)):
        tracemalloc.start()
        assert main(["downsample", str(star), "-D", "32", "-o", str(tmp_path / f"{name}_ds.star"), "-b", "10"]) == 0
        peaks[name] = (tracemalloc.get_traced_memory()[1], n * 64 * 64 * 4)  # (peak, bytes of the images)
        tracemalloc.stop()
        # the subset's stack holds the images it uses, renumbered
        assert mrcfile.open(next((tmp_path / f"{name}_ds_stacks").glob("*.mrcs"))).data.shape[0] == n
    (p_few, b_few), (p_all, b_all) = peaks["few"], peaks["all"]
    assert p_all < b_all / 2, peaks
    assert p_all - p_few < (b_all - b_few) / 4, peaks
