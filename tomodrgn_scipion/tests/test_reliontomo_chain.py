"""The chain of issue 13 in a headless Scipion project, with scipion-em-reliontomo's real classes and
protocols: particles as reliontomo makes them (RELION 5 layout from ``simulate --layout relion5``, registered
with reliontomo's own reader) -> our train VAE -> analyze -> select a cluster -> a
``RelionSetOfPseudoSubtomograms`` that reliontomo's 3D auto-refine accepts, whose own conversion writes a
particles.star with exactly that cluster's particles and every original column. RELION itself is not needed:
the refinement stops where relion_refine would start."""
import tempfile
from pathlib import Path

import mrcfile
import numpy as np
import pytest

pytest.importorskip("reliontomo")

from tomodrgn_scipion.convert import relion5 as r5  # noqa: E402
from tomodrgn_scipion.method.phantom import two_state_phantom  # noqa: E402
from tomodrgn_scipion.method.simulate import SimulationConfig, simulate  # noqa: E402
from tomodrgn_scipion.protocols import (TomoDrgnProtAnalyze, TomoDrgnProtBackproject,  # noqa: E402
                                        TomoDrgnProtImportRelionParticles, TomoDrgnProtSelect, TomoDrgnProtTrainVAE)
from tomodrgn_scipion.protocols.protocol_select import SELECT_CLUSTERS  # noqa: E402
from tomodrgn_scipion.tests.project_test import ProjectTest  # noqa: E402
from tomodrgn_scipion.tests.test_reliontomo import star_rows  # noqa: E402

SMALL = dict(encLayersA=1, encDimA=64, outDimA=16, encLayersB=1, encDimB=64, decLayers=2, decDim=64, batchSize=8,
             learningRate=1e-3, useGpu=False)
TOMO_PIXEL = 40.0  # A: the Scipion tomograms (4000 x 4000 x 1000 A as simulated) at 100 x 100 x 25 px


class TestRelion5Chain(ProjectTest):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        import reliontomo
        from pwem.protocols import ProtImportVolumes
        from tomo.protocols import ProtImportTomograms

        Path(reliontomo.Plugin.getHome()).mkdir(parents=True, exist_ok=True)  # see test_reliontomo.py
        cls.tmp = Path(tempfile.mkdtemp(prefix="tomodrgn_relion5_chain_"))
        cls.sim = cls.tmp / "relion5"
        cfg = SimulationConfig(n_particles=60, particles_per_tomogram=30, tilt_max=45.0, tilt_step=9.0, snr=3.0,
                               seed=3, layout="relion5")
        simulate(list(two_state_phantom(16)), cls.sim, cfg)
        tomo_dir = cls.tmp / "tomograms"
        tomo_dir.mkdir()
        for name in sorted(set(r5.unquote(v) for v in
                               r5.read_star_text(cls.sim / "tomograms.star").block("global").column("rlnTomoName"))):
            with mrcfile.new(tomo_dir / f"{name}.mrc") as m:
                m.set_data(np.zeros((25, 100, 100), np.float32))
                m.voxel_size = TOMO_PIXEL
        cls.tomos = cls.newProtocol(ProtImportTomograms, filesPath=str(tomo_dir), filesPattern="*.mrc",
                                    samplingRate=TOMO_PIXEL)
        cls.launchProtocol(cls.tomos)
        cls.imp = cls.newProtocol(TomoDrgnProtImportRelionParticles,
                                  optimisationSet=str(cls.sim / "optimisation_set.star"))
        cls.imp.inputTomograms.set(cls.tomos)
        cls.imp.inputTomograms.setExtended("Tomograms")
        cls.launchProtocol(cls.imp)
        ref = cls.tmp / "reference.mrc"
        with mrcfile.new(ref) as m:
            m.set_data(np.zeros((16, 16, 16), np.float32))
            m.voxel_size = cfg.pixel_size
        cls.ref = cls.newProtocol(ProtImportVolumes, filesPath=str(ref), samplingRate=cfg.pixel_size)
        cls.launchProtocol(cls.ref)

    def test_chain_to_reliontomo_refine(self):
        from reliontomo.objects import RelionSetOfPseudoSubtomograms
        from reliontomo.protocols import ProtRelionRefineSubtomograms

        pset = self.imp.outputRelionParticles
        names = r5.item_names(pset)
        self.assertEqual(len(names), 60)
        original = star_rows(str(self.sim / "particles.star"))
        self.assertEqual(names, list(original))

        bp = self.newProtocol(TomoDrgnProtBackproject, useGpu=False)  # the homogeneous map from the same input
        bp.inputParticles.set(self.imp)
        bp.inputParticles.setExtended("outputRelionParticles")
        self.launchProtocol(bp)
        self.assertEqual(bp.outputVolume.getDim(), (16, 16, 16))
        self.assertEqual(list(star_rows(bp._getExtraPath("particles.star"))), names)

        train = self.newProtocol(TomoDrgnProtTrainVAE, zdim=2, numEpochs=3, **SMALL)
        train.inputParticles.set(self.imp)
        train.inputParticles.setExtended("outputRelionParticles")
        self.launchProtocol(train)
        out = train.outputParticles
        self.assertIsInstance(out, RelionSetOfPseudoSubtomograms)  # the input's own class
        z = np.load(train.trainDir("z.npy"))
        ids = open(train.trainDir("particle_ids.txt")).read().split()
        self.assertEqual(sorted(ids), sorted(names))
        for p in out.iterItems():  # z by particle name
            np.testing.assert_allclose(r5.item_z(p), z[ids.index(p.getRelionParticleName())], rtol=1e-6)

        ana = self.newProtocol(TomoDrgnProtAnalyze, ksample=2, numPcs=1, nPerPc=2, skipUmap=True, useGpu=False)
        ana.inputTraining.set(train)
        self.launchProtocol(ana)
        labels = np.loadtxt(ana.kmeansDir("labels.txt"), dtype=int)
        label_of = dict(zip(names, labels.tolist()))  # the method indexes particles in file order
        clustered = ana.outputParticles
        self.assertIsInstance(clustered, RelionSetOfPseudoSubtomograms)
        for p in clustered.iterItems():
            self.assertEqual(r5.item_cluster(p), label_of[p.getRelionParticleName()])
            self.assertIsNotNone(r5.item_z(p))
        coords = ana.outputCoordinates  # the clusters on the tomograms
        self.assertEqual(coords.getSize(), 60)
        self.assertEqual(sorted(c.getGroupId() for c in coords.iterItems()), sorted((labels + 1).tolist()))
        self.assertEqual({t.getTsId() for t in coords.getPrecedents()}, {t.getTsId() for t in self.tomos.Tomograms})
        # ChimeraX scripts from the set's own positions, one per tomogram, no external star
        self.assertEqual(len(list(Path(ana.mapbackDir("markers")).glob("*.cxc"))), 2)

        # a selection drawn in the analyze viewer (what its "Create subset" launches): reliontomo's class too
        from tomodrgn_scipion.viewers import TomoDrgnAnalyzeViewer

        viewer = TomoDrgnAnalyzeViewer(project=self.proj, protocol=ana)
        viewer.waitForRuns = True
        latent = viewer.latentSpace()
        rows = np.flatnonzero(latent.labels == 1)
        self.assertIn(f"keep {len(rows)} of 60 particles", viewer.createSelection(rows, "keep"))
        drawn = self.proj.getProtocol(viewer.lastSelection.getObjId())
        self.assertTrue(drawn.isFinished(), drawn.getErrorMessage())
        self.assertIsInstance(drawn.outputParticles, RelionSetOfPseudoSubtomograms)
        self.assertEqual(set(r5.item_names(drawn.outputParticles)), {latent.ids[r] for r in rows})

        sel = self.newProtocol(TomoDrgnProtSelect, mode=SELECT_CLUSTERS, clusters="0")
        sel.inputParticles.set(ana)
        sel.inputParticles.setExtended("outputParticles")
        self.launchProtocol(sel)
        chosen = [n for n in names if label_of[n] == 0]
        self.assertTrue(0 < len(chosen) < 60)
        selected = sel.outputParticles
        self.assertIsInstance(selected, RelionSetOfPseudoSubtomograms)
        self.assertEqual(r5.item_names(selected), chosen)

        refine = self.newProtocol(ProtRelionRefineSubtomograms, numberOfMpi=3, maskDiameter=80)
        refine.inReParticles.set(sel)
        refine.inReParticles.setExtended("outputParticles")
        refine.referenceVolume.set(self.ref)
        refine.referenceVolume.setExtended("outputVolume")
        self.assertEqual(refine.validate(), [])
        with self.assertRaises(Exception):  # at relion_refine: RELION is not installed here
            self.launchProtocol(refine)
        refine = self.proj.getProtocol(refine.getObjId())
        self.assertEqual([s.getStatus() for s in refine.loadSteps()][:2], ["finished", "failed"])
        written = star_rows(refine.getOutStarFileName())
        self.assertEqual(list(written), chosen)  # exactly that cluster's particles
        for name in chosen:
            for col, value in original[name].items():  # every original column, with its value
                self.assertIn(col, written[name])
                if col == "rlnImageName":  # made absolute when registered (RELION's paths are project-relative)
                    self.assertTrue(written[name][col].endswith(value), col)
                    continue
                try:
                    self.assertAlmostEqual(float(written[name][col]), float(value), places=2, msg=col)
                except ValueError:
                    self.assertEqual(written[name][col], value, col)
