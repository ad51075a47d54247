"""RELION 5 star text as reliontomo keeps it: exact round trips, subsets selected by ``_rlnTomoParticleName``
with every block and column kept, optimisation sets that reliontomo's own object reads, and one-line errors.
No Scipion project: the project-level hand-off is in test_reliontomo.py."""
from pathlib import Path

import pytest

from tomodrgn_scipion.convert import relion5 as r5
from tomodrgn_scipion.method.errors import InputError
from tomodrgn_scipion.tests.relion5_data import PARTICLE_COLUMNS, write_relion5_set


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_relion5_set(tmp_path_factory.mktemp("relion5"), n_particles=10)


def test_round_trip_is_exact(data, tmp_path):
    for path in (data["particles"], data["tomograms"], data["optimisation_set"],
                 str(Path(data["tomograms"]).parent / "tilt_series" / "TS_01.star")):
        text = Path(path).read_text()
        star = r5.read_star_text(path)
        assert star.text() == text
        r5.write_text_atomic(star.text(), tmp_path / "copy.star")
        assert (tmp_path / "copy.star").read_text() == text
    star = r5.read_star_text(data["particles"])
    assert [(b.name, b.loop) for b in star.blocks] == [("general", False), ("optics", True), ("particles", True)]
    assert star.block("particles").labels == PARTICLE_COLUMNS
    assert r5.are_2d_stacks(star) and r5.particle_names(star) == data["names"]


def test_subset_keeps_rows_by_name_and_everything_else(data, tmp_path):
    src = Path(data["particles"]).read_text()
    keep = [data["names"][i] for i in (7, 0, 4)]  # out of file order: rows stay in file order
    n = r5.subset_particles_star(data["particles"], keep, tmp_path / "sub.star")
    assert n == 3
    out = r5.read_star_text(tmp_path / "sub.star")
    assert r5.particle_names(out) == [data["names"][i] for i in (0, 4, 7)]
    full = r5.read_star_text(data["particles"])
    # every block but the particle rows is the same text; the kept rows are the input's lines
    for a, b in zip(full.blocks, out.blocks):
        assert (a.name, a.head, a.labels, a.tail) == (b.name, b.head, b.labels, b.tail)
    assert out.block("particles").rows == [full.block("particles").rows[i] for i in (0, 4, 7)]
    assert Path(data["particles"]).read_text() == src  # input untouched
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary left


def test_subset_errors_are_one_line(data, tmp_path):
    with pytest.raises(InputError) as err:
        r5.subset_particles_star(data["particles"], ["TS_01/1", "TS_09/99", "TS_09/98"], tmp_path / "x.star")
    assert str(err.value) == f"{data['particles']}: block data_particles has no particle TS_09/99 (and 1 more)"
    assert not (tmp_path / "x.star").exists()
    with pytest.raises(InputError, match="no particles to keep"):
        r5.subset_particles_star(data["particles"], [], tmp_path / "x.star")
    bad = tmp_path / "dup.star"
    text = Path(data["particles"]).read_text()
    rows = r5.read_star_text(data["particles"]).block("particles").rows
    bad.write_text(text.replace(rows[1], rows[1] + rows[1]))
    with pytest.raises(InputError, match="particle name TS_02/1 appears twice"):
        r5.subset_particles_star(bad, ["TS_01/1"], tmp_path / "x.star")
    short = tmp_path / "short.star"
    short.write_text(text.replace(rows[2], " ".join(rows[2].split()[:-1]) + "\n"))
    with pytest.raises(InputError, match=r"block data_particles, row 3 has 25 values for 26 columns"):
        r5.subset_particles_star(short, ["TS_01/1"], tmp_path / "x.star")
    with pytest.raises(InputError, match="cannot read"):
        r5.read_star_text(tmp_path / "missing.star")


def test_optimisation_set_read_by_reliontomo(data, tmp_path):
    """reliontomo's RelionSetOfPseudoSubtomograms reads the optimisation set we write (and its optics table)."""
    from reliontomo.objects import RelionSetOfPseudoSubtomograms

    r5.subset_particles_star(data["particles"], data["names"][:4], tmp_path / "particles.star")
    opt = tmp_path / "optimisation_set.star"
    r5.write_optimisation_set(opt, tmp_path / "particles.star", data["tomograms"])
    files = r5.read_optimisation_set(opt)
    assert files == {r5.OPT_PARTICLES: str(tmp_path / "particles.star"), r5.OPT_TOMOGRAMS: data["tomograms"]}
    pset = RelionSetOfPseudoSubtomograms(optimSetStar=str(opt))
    assert pset.getParticlesStar() == str(tmp_path / "particles.star")
    assert pset.getTomogramsStar() == data["tomograms"]
    assert "optics1" in pset.getAcquisition().opticsGroupInfo.get()


def test_volume_series_star_reads_in_mapback(data, tmp_path):
    """The particles' own positions (X - A_sub o, from the tomogram corner) and orientations (A_sub A_part),
    as the volume-series star that mapback's reader takes; matrices from pwem's (reliontomo's) Euler code."""
    from pwem.convert.transformations import euler_matrix

    from tomodrgn_scipion.method.mapback import read_volume_series
    from tomodrgn_scipion.method.transforms import euler_to_matrix
    from tomodrgn_scipion.tests.relion5_data import TOMO_SIZE, TS_PIXEL
    import numpy as np
    import torch

    out = tmp_path / "volumes.star"
    assert r5.volume_series_star(data["particles"], data["tomograms"], out) == len(data["names"])
    vs = read_volume_series(out)
    assert vs.tomograms == [data["rows"][n]["rlnTomoName"] for n in data["names"]]

    def relion_a(row, prefix):  # RELION's A: the rotation block of pwem's euler_matrix of the negated angles
        return euler_matrix(*np.radians([-float(row[f"{prefix}{a}"]) for a in ("Rot", "Tilt", "Psi")]), axes="szyz")[:3, :3]

    for i, name in enumerate(data["names"]):
        row = data["rows"][name]
        a_sub, a_part = relion_a(row, "rlnTomoSubtomogram"), relion_a(row, "rlnAngle")
        origin = np.array([float(row[f"rlnOrigin{a}Angst"]) for a in "XYZ"])
        centred = np.array([float(row[f"rlnCenteredCoordinate{a}Angst"]) for a in "XYZ"])
        np.testing.assert_allclose(vs.centers_a[i], centred - a_sub @ origin + np.array(TOMO_SIZE) * TS_PIXEL / 2,
                                   atol=2e-3)
        a = euler_to_matrix(*(torch.as_tensor(float(v)) for v in vs.euler[i])).numpy().reshape(3, 3)
        np.testing.assert_allclose(a, a_sub @ a_part, atol=1e-5)


def test_relative_paths_made_absolute(data, tmp_path):
    """RELION's paths are relative to its project folder (above the star file): resolved upwards, as RELION
    and the method do; only those values change."""
    project = tmp_path / "relion_project"
    (project / "Extract" / "job009").mkdir(parents=True)
    (project / "Subtomograms").mkdir()
    (project / "Subtomograms" / "1_stack2d.mrcs").write_bytes(b"")
    text = Path(data["particles"]).read_text().replace(data["rows"]["TS_01/1"]["rlnImageName"],
                                                       "Subtomograms/1_stack2d.mrcs")
    src = project / "Extract" / "job009" / "particles.star"
    src.write_text(text)
    assert r5.with_absolute_paths(src, "particles", ["rlnImageName", "rlnCtfImage"], tmp_path / "abs.star") == 1
    out, before = r5.read_star_text(tmp_path / "abs.star"), r5.read_star_text(src)
    names = [r5.unquote(v) for v in out.block("particles").column("rlnImageName")]
    assert names[0] == str(project / "Subtomograms" / "1_stack2d.mrcs")
    assert names[1:] == [r5.unquote(v) for v in before.block("particles").column("rlnImageName")][1:]
    assert out.block("particles").rows[1:] == before.block("particles").rows[1:]
    for label in before.block("particles").labels:
        if label != "rlnImageName":
            assert out.block("particles").column(label) == before.block("particles").column(label)
    assert r5.resolve_star_path("3@Subtomograms/1_stack2d.mrcs", src) == f"3@{project}/Subtomograms/1_stack2d.mrcs"
    assert r5.resolve_star_path("missing.mrcs", src) == "missing.mrcs"
