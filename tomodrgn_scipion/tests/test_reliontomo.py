"""The hand-off with scipion-em-reliontomo in a headless Scipion project, with reliontomo's real classes,
reader and protocols (no RELION binaries: its protocols run up to where RELION would start).

RELION 5 files as reliontomo's "Extract subtomos" leaves them (relion5_data.py) -> Scipion's tomogram import
-> our "import RELION 5 particles" (reliontomo's own createSetOfRelionPSubtomograms and reader) -> our
select (by index) -> a RelionSetOfPseudoSubtomograms that reliontomo's 3D auto-refine, 3D classification,
reconstruct particle and re-extraction forms accept, and whose conversion (reliontomo's own, run by its
protocols) writes a particles.star with exactly the selected particles and every original column. Also:
z and clusters attached by particle name, clusters as coordinates on the tomograms, and the form errors for
3D pseudo-subtomograms."""
import os
import tempfile
from pathlib import Path

import mrcfile
import numpy as np
import pytest

pytest.importorskip("reliontomo")

from tomodrgn_scipion.convert import relion5 as r5  # noqa: E402
from tomodrgn_scipion.protocols import (TomoDrgnProtBackproject, TomoDrgnProtImportRelionParticles,  # noqa: E402
                                        TomoDrgnProtSelect, TomoDrgnProtTrainNN, TomoDrgnProtTrainVAE)
from tomodrgn_scipion.protocols.protocol_select import SELECT_CLUSTERS, SELECT_INDICES  # noqa: E402
from tomodrgn_scipion.tests.project_test import ProjectTest  # noqa: E402
from tomodrgn_scipion.tests.relion5_data import (BINNING, BOX, PARTICLE_COLUMNS, TOMO_BIN, TS_PIXEL,  # noqa: E402
                                                 write_relion5_set)


def relion_a(row: dict, prefix: str) -> np.ndarray:
    """RELION's A of the angles ``<prefix>Rot/Tilt/Psi`` of a row, from reliontomo's own matrix (its inverse)."""
    from reliontomo.convert.convert50_tomo import getCoordsTransformMatrixFromRow

    angles = {f"rlnTomoSubtomogram{a}": float(row[f"{prefix}{a}"]) for a in ("Rot", "Tilt", "Psi")}
    return np.linalg.inv(getCoordsTransformMatrixFromRow(angles))[:3, :3]


def star_rows(path: str) -> dict:
    """data_particles of a star file: name -> {column: value text}."""
    block = r5.read_star_text(path).block("particles")
    cols = {c: block.column(c) for c in block.labels}
    names = [r5.unquote(v) for v in cols[r5.PARTICLE_NAME]]
    return {n: {c: r5.unquote(v[i]) for c, v in cols.items()} for i, n in enumerate(names)}


class TestRelionTomoHandOff(ProjectTest):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        import reliontomo

        # reliontomo's forms first check that RELION's folder exists; an empty one (no binaries) passes that
        # check, and its protocols then stop at the first RELION command, which is what these tests want
        Path(reliontomo.Plugin.getHome()).mkdir(parents=True, exist_ok=True)
        cls.tmp = Path(tempfile.mkdtemp(prefix="tomodrgn_reliontomo_"))
        cls.data = write_relion5_set(cls.tmp / "relion", n_particles=12)
        from pwem.protocols import ProtImportVolumes
        from tomo.protocols import ProtImportTomograms

        cls.tomos = cls.newProtocol(ProtImportTomograms, filesPath=str(cls.tmp / "relion" / "tomograms"),
                                    filesPattern="*.mrc", samplingRate=TS_PIXEL * TOMO_BIN)
        cls.launchProtocol(cls.tomos)
        cls.imp = cls._importRelion(cls.data["optimisation_set"])
        ref = cls.tmp / "reference.mrc"
        with mrcfile.new(ref) as m:
            m.set_data(np.zeros((BOX, BOX, BOX), np.float32))
            m.voxel_size = TS_PIXEL * BINNING
        cls.ref = cls.newProtocol(ProtImportVolumes, filesPath=str(ref), samplingRate=TS_PIXEL * BINNING)
        cls.launchProtocol(cls.ref)

    @classmethod
    def _importRelion(cls, optimisation_set: str) -> TomoDrgnProtImportRelionParticles:
        prot = cls.newProtocol(TomoDrgnProtImportRelionParticles, optimisationSet=optimisation_set)
        prot.inputTomograms.set(cls.tomos)
        prot.inputTomograms.setExtended("Tomograms")
        cls.launchProtocol(prot)
        return prot

    def _select(self, source, output: str, **kw) -> TomoDrgnProtSelect:
        prot = self.newProtocol(TomoDrgnProtSelect, **kw)
        prot.inputParticles.set(source)
        prot.inputParticles.setExtended(output)
        self.launchProtocol(prot)
        return prot

    # ------------------------------------------------------------------------------------------ tests
    def test_import_builds_reliontomo_set(self):
        from reliontomo.objects import RelionSetOfPseudoSubtomograms

        pset = self.imp.outputRelionParticles
        self.assertIsInstance(pset, RelionSetOfPseudoSubtomograms)
        self.assertEqual(pset.getSize(), 12)
        self.assertEqual(r5.item_names(pset), self.data["names"])
        self.assertTrue(pset.are2dStacks() and pset.areRe5Particles())
        self.assertAlmostEqual(pset.getCurrentSamplingRate(), TS_PIXEL * BINNING, places=5)
        self.assertEqual(pset.getBoxSize(), BOX)
        # the set keeps copies in the run's folder (paths absolute: here they already were, so the same text)
        for own, original in ((pset.getTomogramsStar(), self.data["tomograms"]),
                              (pset.getParticlesStar(), self.data["particles"])):
            self.assertEqual(os.path.dirname(os.path.abspath(own)), os.path.abspath(self.imp._getExtraPath()))
            self.assertEqual(Path(own).read_text(), Path(original).read_text())
        coords = pset.getCoordinates3D()
        self.assertEqual(coords.getSize(), 12)
        from tomo.constants import SCIPION, TR_RELION

        for c, name in zip(coords.iterItems(orderBy="id"), self.data["names"]):
            row = self.data["rows"][name]
            self.assertEqual(c.getTomoId(), row["rlnTomoName"])
            # RELION 5's position X - A_sub o, with A_sub from reliontomo's own Euler code
            a_sub, a_part = (relion_a(row, prefix) for prefix in ("rlnTomoSubtomogram", "rlnAngle"))
            origin = np.array([float(row[f"rlnOrigin{a}Angst"]) for a in "XYZ"])
            centred = np.array([float(row[f"rlnCenteredCoordinate{a}Angst"]) for a in "XYZ"])
            expected = (centred - a_sub @ origin) / (TS_PIXEL * TOMO_BIN)
            np.testing.assert_allclose([c.getX(SCIPION), c.getY(SCIPION), c.getZ(SCIPION)], expected, atol=1e-4)
            self.assertGreater(np.abs(expected - centred / (TS_PIXEL * TOMO_BIN)).max(), 1e-3)  # the origin counts
            np.testing.assert_allclose(c.getMatrix(convention=TR_RELION)[:3, :3], (a_sub @ a_part).T, atol=1e-6)

    def test_selection_goes_to_reliontomo_refine(self):
        """Select by index -> reliontomo's 3D auto-refine: its form accepts the set, and its own conversion
        step writes exactly the selected particles with every original column and value."""
        from reliontomo.objects import RelionSetOfPseudoSubtomograms
        from reliontomo.protocols import (ProtRelion3DClassifySubtomograms, ProtRelion5ExtractSubtomos,
                                          ProtRelion5ReconstructParticle, ProtRelionRefineSubtomograms)

        chosen = [0, 3, 4, 9, 10]
        sel = self._select(self.imp, "outputRelionParticles", mode=SELECT_INDICES,
                           indices=" ".join(map(str, chosen)))
        out = sel.outputParticles
        names = [self.data["names"][i] for i in chosen]
        self.assertIsInstance(out, RelionSetOfPseudoSubtomograms)
        self.assertEqual(r5.item_names(out), names)
        self.assertEqual(out.getNReParticles(), 5)
        self.assertTrue(out.are2dStacks())
        self.assertEqual(os.path.abspath(out.getTomogramsStar()),
                         os.path.abspath(self.imp.outputRelionParticles.getTomogramsStar()))
        self.assertEqual(list(star_rows(out.getParticlesStar())), names)  # its own file: the kept rows only
        self.assertEqual(os.path.abspath(out.filesMaster), os.path.abspath(sel.exportedOptimisationSet()))

        # reliontomo's forms take it (their pointers are strict RelionSetOfPseudoSubtomograms)
        forms = {
            ProtRelionRefineSubtomograms: dict(numberOfMpi=3, maskDiameter=60),
            ProtRelion3DClassifySubtomograms: dict(numberOfMpi=3, maskDiameter=60, numberOfClasses=2),
            ProtRelion5ReconstructParticle: dict(numberOfMpi=2, boxSize=BOX, croppedBoxSize=BOX),
            ProtRelion5ExtractSubtomos: dict(numberOfMpi=2, boxSize=BOX, croppedBoxSize=BOX, write2dStacks=True),
        }
        prots = {}
        for cls, kw in forms.items():
            prot = self.newProtocol(cls, **kw)
            prot.inReParticles.set(sel)
            prot.inReParticles.setExtended("outputParticles")
            if hasattr(prot, "referenceVolume"):
                prot.referenceVolume.set(self.ref)
                prot.referenceVolume.setExtended("outputVolume")
            self.assertEqual(prot.validate(), [], cls.__name__)
            prots[cls] = prot

        # 3D auto-refine runs its conversion step, then stops where relion_refine would start
        refine = prots[ProtRelionRefineSubtomograms]
        with self.assertRaises(Exception):
            self.launchProtocol(refine)
        refine = self.proj.getProtocol(refine.getObjId())
        steps = [s.getObjName() if hasattr(s, "getObjName") else str(s) for s in refine.loadSteps()]
        status = [s.getStatus() for s in refine.loadSteps()]
        self.assertEqual(status[0], "finished", steps)  # convertInputStep
        self.assertEqual(status[1], "failed", steps)  # the RELION step
        written = star_rows(refine.getOutStarFileName())
        self.assertEqual(list(written), names)
        for name in names:
            original = self.data["rows"][name]
            for col in PARTICLE_COLUMNS:
                self.assertIn(col, written[name])
                try:
                    self.assertAlmostEqual(float(written[name][col]), float(original[col]), places=2, msg=col)
                except ValueError:
                    self.assertEqual(written[name][col], original[col], col)
        text = Path(refine.getOutStarFileName()).read_text()
        self.assertIn("_rlnTomoSubTomosAre2DStacks", text)

    def test_z_and_clusters_by_name(self):
        """Attributes go to the item of the same particle name, whatever the order they come in."""
        from reliontomo.objects import RelionSetOfPseudoSubtomograms
        from tomo.constants import SCIPION
        from tomo.objects import SetOfCoordinates3D

        pset = self.imp.outputRelionParticles
        names = self.data["names"]
        rng = np.random.default_rng(1)
        z = {n: rng.normal(size=3).astype(np.float32) for n in reversed(names[1:])}  # one without z
        out = RelionSetOfPseudoSubtomograms(filename=str(self.tmp / "with_z.sqlite"))
        missing = r5.relion_items_with(pset, out, {n: {r5.Z_ATTR: v} for n, v in z.items()})
        self.assertEqual((missing, out.getSize()), (1, 11))
        out.write()
        again = RelionSetOfPseudoSubtomograms(filename=str(self.tmp / "with_z.sqlite"))
        again.loadAllProperties()
        for p in again.iterItems():
            np.testing.assert_allclose(r5.item_z(p), z[p.getRelionParticleName()], rtol=1e-6)
        # the input's info came along (a pointer needs the project's database, so it is checked before writing)
        self.assertEqual(out.getCoordinates3D().getSize(), 12)
        self.assertEqual((again.getParticlesStar(), again.getTomogramsStar(), again.are2dStacks()),
                         (pset.getParticlesStar(), pset.getTomogramsStar(), True))

        labels = {n: i % 3 for i, n in enumerate(names)}
        labels[names[5]] = -1  # not trained on: not placed
        coords = SetOfCoordinates3D(filename=str(self.tmp / "clusters.sqlite"))
        counts = r5.cluster_coordinates(pset, labels, coords)
        self.assertEqual(counts, {0: 4, 1: 4, 2: 3})
        tomo_px = TS_PIXEL * TOMO_BIN
        placed = 0
        for c in coords.iterItems():
            cluster = c._tdCluster.get()
            self.assertEqual(c.getGroupId(), cluster + 1)
            match = [n for n in names if labels[n] == cluster and self.data["rows"][n]["rlnTomoName"] == c.getTomoId()
                     and abs(float(self.data["rows"][n]["rlnCenteredCoordinateYAngst"]) / tomo_px - c.getY(SCIPION)) < 0.5]
            self.assertEqual(len(match), 1)
            placed += 1
        self.assertEqual(placed, 11)
        self.assertEqual({t.getTsId() for t in coords.getPrecedents()}, {"TS_01", "TS_02"})

    def test_forms_explain_3d_pseudo_subtomograms(self):
        text = Path(self.data["particles"]).read_text().replace("_rlnTomoSubTomosAre2DStacks                       1",
                                                                 "_rlnTomoSubTomosAre2DStacks                       0")
        root = self.tmp / "relion3d"
        root.mkdir(exist_ok=True)
        (root / "particles.star").write_text(text)
        opt = root / "optimisation_set.star"
        r5.write_optimisation_set(opt, root / "particles.star", self.data["tomograms"])
        imp3d = self._importRelion(str(opt))
        self.assertFalse(imp3d.outputRelionParticles.are2dStacks())
        for cls in (TomoDrgnProtTrainVAE, TomoDrgnProtTrainNN, TomoDrgnProtBackproject):
            prot = self.newProtocol(cls)
            prot.inputParticles.set(imp3d)
            prot.inputParticles.setExtended("outputRelionParticles")
            errors = prot.validate()
            self.assertTrue(any(e.startswith("3D pseudo-subtomograms cannot be used") and "2D stacks?' = Yes" in e
                                for e in errors), (cls.__name__, errors))
        # the 2D set passes the same check
        prot = self.newProtocol(TomoDrgnProtTrainVAE)
        prot.inputParticles.set(self.imp)
        prot.inputParticles.setExtended("outputRelionParticles")
        self.assertEqual(prot.validate(), [])

    def test_import_errors(self):
        prot = self.newProtocol(TomoDrgnProtImportRelionParticles, optimisationSet=str(self.tmp / "none.star"))
        prot.inputTomograms.set(self.tomos)
        prot.inputTomograms.setExtended("Tomograms")
        self.assertEqual(prot.validate(), [f"Optimisation set not found: {self.tmp / 'none.star'}"])
        other = self.tmp / "other"
        data = write_relion5_set(other, n_particles=3, tomograms=("TS_07",))
        prot = self.newProtocol(TomoDrgnProtImportRelionParticles, optimisationSet=data["optimisation_set"])
        prot.inputTomograms.set(self.tomos)
        prot.inputTomograms.setExtended("Tomograms")
        self.assertEqual(prot.validate(), ["No tomogram with tilt-series id TS_07 among the chosen tomograms: its "
                                           "particles cannot be placed."])

    def test_select_by_cluster_needs_clusters(self):
        prot = self.newProtocol(TomoDrgnProtSelect, mode=SELECT_CLUSTERS, clusters="0")
        prot.inputParticles.set(self.imp)
        prot.inputParticles.setExtended("outputRelionParticles")
        self.assertEqual(prot.validate(), ["These particles have no clusters: use the output particles of an "
                                           "analyze run."])
