"""Scipion sets <-> RELION 3.0 image-series star files: exact round trips, z by particle id, tilt
images with Scipion's projection-alignment convention."""
from pathlib import Path

import numpy as np
import pytest
import torch

from tomodrgn_scipion.method.errors import InputError
from tomodrgn_scipion.method.simulate import SimulationConfig, simulate
from tomodrgn_scipion.method.phantom import two_state_phantom
from tomodrgn_scipion.method.star import read_star, write_star
from tomodrgn_scipion.method.transforms import euler_to_matrix

pytest.importorskip("tomo")
from pwem.objects import SetOfParticles  # noqa: E402

from tomodrgn_scipion.convert.particles import (particles_from_star, particles_with_z, pose_from_matrix,  # noqa: E402
                                                pose_matrix, star_from_particles, star_from_tilt_images,
                                                tilt_images_from_particles)
from tomodrgn_scipion.objects import TomoDrgnParticles  # noqa: E402


@pytest.fixture(scope="module")
def sim(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sim")
    simulate(list(two_state_phantom(16)), out, SimulationConfig(n_particles=12, particles_per_tomogram=5, tilt_max=30.0,
                                                                tilt_step=10.0, seed=1))
    df = read_star(out / "particles.star")
    df["rlnMyScore"] = [f"{v:.3f}" for v in np.linspace(0, 1, len(df))]  # a user's own column
    write_star(df, out / "particles.star")
    return out


def imported(tmp_path: Path, star: Path) -> TomoDrgnParticles:
    s = TomoDrgnParticles(filename=str(tmp_path / "particles.sqlite"))
    particles_from_star(star, s)
    s.write()
    return s


def test_import_and_exact_round_trip(tmp_path, sim):
    star = sim / "particles.star"
    s = imported(tmp_path, star)
    assert s.getSize() == 12 and s.getSamplingRate() == pytest.approx(6.0)
    acq = s.getAcquisition()
    assert acq.getVoltage() == pytest.approx(300.0) and acq.getDosePerFrame() == pytest.approx(3.0)
    assert acq.getAccumDose() == pytest.approx(21.0) and acq.getAngleMax() == pytest.approx(30.0)
    first = s.getFirstItem()
    assert first.getParticleId() == read_star(star)["rlnGroupName"].iat[0] and first.getNumTilts() == 7
    assert first.getTomoId() == "tomo_000.tomostar" and first.getVolName() == "tomo_000.tomostar"  # _rlnMicrographName
    star_from_particles(s, tmp_path / "out.star")
    assert read_star(tmp_path / "out.star").equals(read_star(star))


def test_persisted_set_reloads(tmp_path, sim):
    s = imported(tmp_path, sim / "particles.star")
    s.close()
    again = TomoDrgnParticles(filename=str(tmp_path / "particles.sqlite"))
    again.loadAllProperties()
    assert again.getStar() == str(sim / "particles.star") and again.getSize() == 12
    assert [p.getRows() for p in again] == [list(r) for r in np.split(np.arange(84), 12)]


def test_subset_with_gaps_exports_exactly_its_rows(tmp_path, sim):
    s = imported(tmp_path, sim / "particles.star")
    keep = [2, 5, 9, 12]
    sub = TomoDrgnParticles(filename=str(tmp_path / "subset.sqlite"))
    sub.copyInfo(s)
    for p in s:
        if p.getObjId() in keep:
            sub.append(p.clone())
    star_from_particles(sub, tmp_path / "sub.star")
    df = read_star(sim / "particles.star")
    ids = [df["rlnGroupName"].unique()[k - 1] for k in keep]
    expected = df[df["rlnGroupName"].isin(ids)].reset_index(drop=True)
    assert read_star(tmp_path / "sub.star").equals(expected)


def test_z_is_matched_by_particle_id(tmp_path, sim):
    s = imported(tmp_path, sim / "particles.star")
    sub = TomoDrgnParticles(filename=str(tmp_path / "subset.sqlite"))
    sub.copyInfo(s)
    for p in s:
        if p.getObjId() % 3 == 0:  # ids 3, 6, 9, 12
            sub.append(p.clone())
    ids = s.getParticleIds()
    order = np.random.default_rng(0).permutation(12)[:10]  # z rows in another order, two particles missing
    z = np.stack([[float(k), -float(k)] for k in order]).astype(np.float32)
    out = TomoDrgnParticles(filename=str(tmp_path / "z.sqlite"))
    missing = particles_with_z(sub, out, z, [ids[k] for k in order])
    expect_missing = sum(1 for i in (2, 5, 8, 11) if i not in order)
    assert missing == expect_missing and out.getSize() == 4 - missing and out.getZDim() == 2
    for p in out:
        k = ids.index(p.getParticleId())
        np.testing.assert_array_equal(p.getZ(), [k, -k])
    with pytest.raises(InputError, match="shape"):
        particles_with_z(sub, TomoDrgnParticles(filename=str(tmp_path / "bad.sqlite")), z[:3], ids[:4])


def test_pose_matrix_is_relion_a_transposed():
    """Scipion stores the inverse of [[A, -s], [0, 1]] for projection alignment (A: RELION's matrix)."""
    rot, tilt, psi, sx, sy = 30.0, 70.0, -110.0, 1.5, -2.25
    m = pose_matrix(rot, tilt, psi, sx, sy)
    a = euler_to_matrix(torch.tensor([rot]), torch.tensor([tilt]), torch.tensor([psi]))[0].numpy()
    np.testing.assert_allclose(m[:3, :3], a.T, atol=1e-12)
    np.testing.assert_allclose(m[:3, 3], a.T @ np.array([sx, sy, 0.0]), atol=1e-12)
    back = pose_from_matrix(m)
    np.testing.assert_allclose(pose_matrix(*back), m, atol=1e-12)
    np.testing.assert_allclose(back[3:], [sx, sy], atol=1e-12)


def test_tilt_images_and_back(tmp_path, sim):
    star = sim / "particles.star"
    s = imported(tmp_path, star)
    imgs = SetOfParticles(filename=str(tmp_path / "tilts.sqlite"))
    assert tilt_images_from_particles(s, imgs) == 84
    imgs.write()
    df = read_star(star)
    first = imgs.getFirstItem()
    assert first.getFileName().endswith("tomo_000.mrcs") and first.getIndex() == 1
    assert first.getCTF().getDefocusU() == pytest.approx(float(df["rlnDefocusU"].iat[0]))
    assert first._rlnGroupName.get() == df["rlnGroupName"].iat[0] and first._tdRow.get() == 0
    # unchanged images give the source rows back, text intact
    star_from_tilt_images(imgs, star, tmp_path / "same.star")
    assert read_star(tmp_path / "same.star").equals(df)
    # a refined pose and defocus of one image are written into its row only
    moved = SetOfParticles(filename=str(tmp_path / "moved.sqlite"))
    moved.copyInfo(imgs)
    for img in imgs:
        img = img.clone()
        if img.getObjId() == 5:
            img.setTransform(type(img.getTransform())(pose_matrix(10.0, 20.0, 30.0, 0.5, -0.5)))
            img.getCTF().setStandardDefocus(12345.0, 12000.0, 10.0)
        if img.getObjId() not in (7, 8):
            moved.append(img)
    star_from_tilt_images(moved, star, tmp_path / "moved.star")
    out = read_star(tmp_path / "moved.star")
    expected = df.drop(index=[6, 7]).reset_index(drop=True)
    changed = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginX", "rlnOriginY", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"]
    assert out.drop(columns=changed).equals(expected.drop(columns=changed))
    assert out.drop(index=4).equals(expected.drop(index=4))
    got = out.iloc[4][changed].astype(float).to_numpy()
    np.testing.assert_allclose(pose_matrix(*got[:5]), pose_matrix(10.0, 20.0, 30.0, 0.5, -0.5), atol=1e-9)
    np.testing.assert_allclose(got[5:], [12345.0, 12000.0, 10.0])


def test_shared_sample_round_trip(tmp_path):
    from tomodrgn_scipion.tests.method.conftest import SAMPLE_STAR

    if not SAMPLE_STAR.is_file():
        pytest.skip("external sample not found")
    s = imported(tmp_path, SAMPLE_STAR)
    assert s.getSize() == 144 and sum(p.getNumTilts() for p in s) == 1296
    assert s.getSamplingRate() == pytest.approx(13.1)
    star_from_particles(s, tmp_path / "out.star")
    assert read_star(tmp_path / "out.star").equals(read_star(SAMPLE_STAR))


@pytest.mark.parametrize("layout", ["relion31", "relion5", "warptools"])
def test_other_formats_import_and_export_a_subset_in_their_own_format(tmp_path, layout):
    """A set imported from a RELION 3.1 star or a RELION 5 / WarpTools optimisation set exports its particles in
    that format: the optics table kept, or a new optimisation set naming the kept particles.star rows."""
    from tomodrgn_scipion.convert.particles import particle_star_name
    from tomodrgn_scipion.method.formats.blocks import read_blocks
    from tomodrgn_scipion.method.star import TiltSeriesStar

    info = simulate(list(two_state_phantom(16)), tmp_path / "sim", SimulationConfig(
        n_particles=8, particles_per_tomogram=4, tilt_max=20.0, tilt_step=10.0, seed=1, layout=layout,
        premultiply=layout != "relion31"))
    s = imported(tmp_path, info["star"])
    assert s.getSize() == 8 and s.getFirstItem().getNumTilts() == 5
    sub = TomoDrgnParticles(filename=str(tmp_path / "sub.sqlite"))
    sub.copyInfo(s)
    for p in s.iterItems(orderBy="id"):
        if p.getObjId() in (2, 7):
            sub.append(p.clone())
    name = particle_star_name(sub, "out")
    assert name == ("out.star" if layout == "relion31" else "out_optimisation_set.star")
    assert star_from_particles(sub, tmp_path / name) == 10
    back = TiltSeriesStar(tmp_path / name)
    full = TiltSeriesStar(info["star"])
    assert back.source == layout and back.particle_ids == [full.particle_ids[1], full.particle_ids[6]]
    assert back.ctf_premultiplied.all() == (layout != "relion31")
    written = read_blocks(tmp_path / ("out.star" if layout == "relion31" else "out_particles.star"))
    assert written.names() == read_blocks(info["star"] if layout == "relion31" else info["star"].parent / "particles.star").names()
    if layout != "relion3":
        with pytest.raises(InputError, match="from RELION 3.0 image series only"):
            tilt_images_from_particles(s, SetOfParticles(filename=str(tmp_path / "tilts.sqlite")))
