"""The workflow template: it is what the code generates, pyworkflow's template reader fills it, and the
filled workflow loads into a project as the chained import -> train VAE -> analyze -> select."""
import json
import os
from pathlib import Path

import pytest

pytest.importorskip("tomo")
from pyworkflow.template import LocalTemplate  # noqa: E402

from .project_test import ProjectTest  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "templates" / "tomodrgn_heterogeneity.json.template"


class TestWorkflowTemplate(ProjectTest):
    def test_template_is_up_to_date(self):
        from tomodrgn_scipion.workflow import main

        out = Path(self.proj.path) / "regenerated.json.template"
        self.assertEqual(main(["template", str(out)]), 0)
        self.assertEqual(out.read_text(), TEMPLATE.read_text(),
                         "templates/ is stale: python -m tomodrgn_scipion.workflow template templates/tomodrgn_heterogeneity.json.template")

    def test_filled_template_loads_as_the_chain(self):
        t = LocalTemplate("tomodrgn", str(TEMPLATE))
        t.replaceEnvVariables()  # as scipion3 template does: environment variables, then the fields
        t.parseContent()
        aliases = {p.getAlias() for p in t.getParams().values()}
        self.assertEqual(aliases, {"star", "datadir", "dark", "zdim", "epochs", "ksample", "volumestar", "clusters"})
        star = Path(self.proj.path) / "particles.star"  # the template checks that paths exist
        star.write_text("")
        vol_star = Path(self.proj.path) / "particles_volumes.star"
        vol_star.write_text("")
        for alias, value in (("star", str(star)), ("zdim", "4"), ("epochs", "30"), ("ksample", "5"),
                             ("clusters", "1 3"), ("dark", "true"), ("volumestar", str(vol_star))):
            self.assertEqual(t.setParamValue(alias, value), 1)
        path = t.createTemplateFile()
        data = json.loads(Path(path).read_text())
        self.assertEqual([d["object.className"] for d in data], ["TomoDrgnProtImportParticles", "TomoDrgnProtTrainVAE",
                                                                 "TomoDrgnProtAnalyze", "TomoDrgnProtSelect"])
        prots = self.proj.loadProtocols(path)
        os.unlink(path)
        loaded = {p.getClassName(): p for p in prots.values()}
        imp, train = loaded["TomoDrgnProtImportParticles"], loaded["TomoDrgnProtTrainVAE"]
        ana, sel = loaded["TomoDrgnProtAnalyze"], loaded["TomoDrgnProtSelect"]
        self.assertEqual(imp.starFile.get(), str(star))
        self.assertTrue(imp.proteinDark.get())
        self.assertEqual((train.zdim.get(), train.numEpochs.get()), (4, 30))
        self.assertEqual(ana.ksample.get(), 5)
        self.assertEqual(ana.volumeStar.get(), str(vol_star))
        self.assertEqual(sel.clusters.get(), "1 3")
        self.assertIs(type(train.inputParticles.getObjValue()), type(imp))
        self.assertEqual(train.inputParticles.getObjValue().getObjId(), imp.getObjId())
        self.assertEqual(train.inputParticles.getExtended(), "outputParticles")
        self.assertEqual(ana.inputTraining.getObjValue().getObjId(), train.getObjId())
        self.assertEqual(sel.inputParticles.getObjValue().getObjId(), ana.getObjId())


FACILITY = REPO / "templates" / "tomodrgn_reliontomo.json.template"


class TestFacilityTemplate(ProjectTest):
    """The facility template with reliontomo installed: reliontomo particles -> train -> analyze -> select ->
    reliontomo's 3D auto-refine, read and filled by pyworkflow's template machinery."""

    def test_template_is_up_to_date(self):
        from tomodrgn_scipion.workflow import main

        out = Path(self.proj.path) / "regenerated.json.template"
        self.assertEqual(main(["template", "--reliontomo", str(out)]), 0)
        self.assertEqual(out.read_text(), FACILITY.read_text(), "templates/ is stale: python -m tomodrgn_scipion."
                         "workflow template --reliontomo templates/tomodrgn_reliontomo.json.template")

    def test_filled_template_loads_as_the_chain(self):
        t = LocalTemplate("tomodrgn-reliontomo", str(FACILITY))
        t.replaceEnvVariables()
        t.parseContent()
        aliases = {p.getAlias() for p in t.getParams().values()}
        self.assertEqual(aliases, {"tomodir", "tomopattern", "tomopix", "optimset", "zdim", "epochs", "ksample",
                                   "clusters", "reference", "refpix", "diameter", "symmetry"})
        folder = Path(self.proj.path)
        (folder / "tomos").mkdir(exist_ok=True)
        for name in ("optimisation_set.star", "reference.mrc"):
            (folder / name).write_text("")
        values = {"tomodir": str(folder / "tomos"), "tomopattern": "TS_*.mrc", "tomopix": "13.5",
                  "optimset": str(folder / "optimisation_set.star"), "zdim": "4", "epochs": "30", "ksample": "6",
                  "clusters": "2 5", "reference": str(folder / "reference.mrc"), "refpix": "5.4",
                  "diameter": "180", "symmetry": "C2"}
        for alias, value in values.items():
            self.assertEqual(t.setParamValue(alias, value), 1, alias)
        path = t.createTemplateFile()
        data = json.loads(Path(path).read_text())
        self.assertEqual([d["object.className"] for d in data],
                         ["ProtImportTomograms", "TomoDrgnProtImportRelionParticles", "TomoDrgnProtTrainVAE",
                          "TomoDrgnProtAnalyze", "TomoDrgnProtSelect", "ProtImportVolumes",
                          "ProtRelionRefineSubtomograms"])
        prots = self.proj.loadProtocols(path)
        os.unlink(path)
        p = {x.getClassName(): x for x in prots.values()}
        tomos, parts = p["ProtImportTomograms"], p["TomoDrgnProtImportRelionParticles"]
        train, ana, sel = p["TomoDrgnProtTrainVAE"], p["TomoDrgnProtAnalyze"], p["TomoDrgnProtSelect"]
        ref, refine = p["ProtImportVolumes"], p["ProtRelionRefineSubtomograms"]
        self.assertEqual((tomos.filesPattern.get(), tomos.samplingRate.get()), ("TS_*.mrc", 13.5))
        self.assertEqual(parts.optimisationSet.get(), values["optimset"])
        self.assertEqual((train.zdim.get(), train.numEpochs.get(), ana.ksample.get()), (4, 30, 6))
        self.assertEqual((sel.mode.get(), sel.clusters.get()), (0, "2 5"))
        self.assertEqual((ref.filesPath.get(), ref.samplingRate.get()), (values["reference"], 5.4))
        self.assertEqual((refine.maskDiameter.get(), refine.symmetry.get(), refine.numberOfMpi.get()), (180, "C2", 3))
        for prot, attr, source, extended in ((parts, "inputTomograms", tomos, "Tomograms"),
                                             (train, "inputParticles", parts, "outputRelionParticles"),
                                             (ana, "inputTraining", train, None),
                                             (sel, "inputParticles", ana, "outputParticles"),
                                             (refine, "inReParticles", sel, "outputParticles"),
                                             (refine, "referenceVolume", ref, "outputVolume")):
            pointer = getattr(prot, attr)
            self.assertEqual(pointer.getObjValue().getObjId(), source.getObjId(), attr)
            self.assertEqual(pointer.getExtended() or None, extended, attr)
