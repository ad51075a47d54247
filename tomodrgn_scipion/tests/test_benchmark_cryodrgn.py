"""benchmarks/cryodrgn_et.py: the star written for cryoDRGN-ET holds the same images as the input.

cryoDRGN-ET (cryodrgn 4.3.1, ``dataset.TiltSeriesData``) groups tilt images by ``_rlnGroupName``, ranks
them by ``_rlnCtfScalefactor`` and encodes the first ``--ntilts`` rows of each particle in file order;
so each particle's rows must come lowest dose first and every particle needs ``--ntilts`` of them.
The expected dose and tilt steps are those the simulation was asked for.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import cryodrgn_et  # noqa: E402

from tomodrgn_scipion.method.phantom import two_state_phantom  # noqa: E402
from tomodrgn_scipion.method.simulate import SimulationConfig, simulate  # noqa: E402
from tomodrgn_scipion.method.star import TiltSeriesStar, read_star, write_star  # noqa: E402
from tomodrgn_scipion.method.stacks import ImageSource  # noqa: E402


@pytest.fixture(scope="module")
def shuffled_star(tmp_path_factory) -> Path:
    """6 simulated particles (11 tilts, 2.5 e/A^2 and 9 degrees per tilt); the rows of particle 1 in
    reverse order, particle 0 missing its two highest-dose images."""
    out = tmp_path_factory.mktemp("cryo_sim")
    simulate(list(two_state_phantom(16)), out, SimulationConfig(
        n_particles=6, particles_per_tomogram=3, tilt_max=45.0, tilt_step=9.0, dose_per_tilt=2.5, snr=1.0, seed=5))
    df = read_star(out / "particles.star")
    groups = df["rlnGroupName"].unique()
    first = df.index[df["rlnGroupName"] == groups[0]]
    second = df.index[df["rlnGroupName"] == groups[1]]
    dose = -df["rlnCtfBfactor"].astype(float) / 4
    order = list(df.index.drop(second))
    cut = order.index(second[0] - 1) + 1 if second[0] > 0 else 0
    order[cut:cut] = list(second[::-1])
    df = df.loc[order].drop(index=dose.loc[first].nlargest(2).index).reset_index(drop=True)
    df.attrs["block_name"] = ""
    write_star(df, out / "shuffled.star")
    return out / "shuffled.star"


def images_of(star: TiltSeriesStar) -> dict[str, int]:
    """Absolute 'N@path' of every image -> its row."""
    src = ImageSource(star.image_names, star.image_anchor, lazy=True)
    src.close()
    return {f"{src.index[r] + 1}@{src.paths[src.stack_of[r]].resolve()}": r for r in range(star.n_images)}


def test_same_images_lowest_dose_first(shuffled_star: Path, tmp_path: Path) -> None:
    cs = cryodrgn_et.write_cryodrgn_star(shuffled_star, tmp_path / "c.star", None, None)
    src, out = TiltSeriesStar(shuffled_star), TiltSeriesStar(cs.path)
    assert (cs.ntilts, cs.n_particles, cs.box, cs.pixel_size) == (9, 6, 16, src.pixel_size)
    assert out.particle_ids == src.particle_ids
    where = images_of(src)
    df = read_star(cs.path)
    names = df["rlnImageName"].tolist()
    assert all(Path(n.split("@", 1)[1]).is_absolute() for n in names)
    rows = np.array([where[n] for n in names])
    assert sorted(rows) == list(range(src.n_images))
    for field in ("dose", "ctf_scalefactor", "dfu", "dfv", "dfang", "voltage", "cs", "w", "phase_shift"):
        np.testing.assert_allclose(getattr(out, field), getattr(src, field)[rows], rtol=1e-12, err_msg=field)
    np.testing.assert_allclose(out.euler, src.euler[rows], rtol=1e-12)
    np.testing.assert_allclose(out.shifts_px, src.shifts_px[rows], rtol=1e-12)
    for r in out.rows_of_particle:
        assert np.all(np.diff(r) == 1), "a particle's rows are contiguous"
        assert np.all(np.diff(out.dose[r]) > 0), "lowest dose first"
    assert cs.dose_per_tilt == pytest.approx(2.5)
    assert cs.angle_per_tilt == pytest.approx(9.0)
    assert not cs.premultiplied


def test_particles_short_of_ntilts_left_out(shuffled_star: Path, tmp_path: Path) -> None:
    cs = cryodrgn_et.write_cryodrgn_star(shuffled_star, tmp_path / "c.star", 11, None)
    src, out = TiltSeriesStar(shuffled_star), TiltSeriesStar(cs.path)
    assert cs.n_particles == 5
    assert out.particle_ids == src.particle_ids[1:]
    assert out.n_images == 5 * 11


def test_ntilts_beyond_every_particle_is_refused(shuffled_star: Path, tmp_path: Path) -> None:
    with pytest.raises(cryodrgn_et.InputError, match="--ntilts 12"):
        cryodrgn_et.write_cryodrgn_star(shuffled_star, tmp_path / "c.star", 12, None)
    assert not (tmp_path / "c.star").exists()
