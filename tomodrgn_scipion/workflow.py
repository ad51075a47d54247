"""The plugin's standard workflow, import -> train VAE -> analyze -> select/export, built in a Scipion
project without a screen, run to the end, or written as a Scipion workflow template.

``python -m tomodrgn_scipion.workflow run --project NAME --star particles.star [...]`` is what ``make demo``
runs; ``python -m tomodrgn_scipion.workflow template OUT.json.template`` writes
``templates/tomodrgn_heterogeneity.json.template`` (for ``scipion3 template ... --nogui``), and
``... template --reliontomo OUT.json.template`` the facility template ``templates/tomodrgn_reliontomo.json.template``:
a RELION 5 2D-stack particle set (reliontomo's pseudo-subtomograms, registered from its optimisation set on
imported tomograms) -> train VAE -> analyze -> select -> reliontomo's 3D auto-refine of the chosen clusters.
Needs the Scipion environment variables of a headless run (SCIPION_DOMAIN=pwem, SCIPION_HOME,
SCIPION_USER_DATA...; the Makefile sets them).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

#: The protocol tree view of scipion-em-tomo, where protocols.conf puts the tomoDRGN section.
TOMOGRAPHY_VIEW = "Tomography"

# Template fields: (protocol key, parameter, title shown by ``scipion3 template``, type, alias).
# Types are pyworkflow.config.VarTypes: 0 string, 1 boolean, 2 path, 3 integer, 4 decimal.
TEMPLATE_FIELDS = [
    ("import", "starFile", "Star file (RELION 3.0 image series)", 2, "star"),
    ("import", "dataDir", "Image stacks folder (empty: beside the star file)", 2, "datadir"),
    ("import", "proteinDark", "Images are protein-dark", 1, "dark"),
    ("train", "zdim", "Latent dimension", 3, "zdim"),
    ("train", "numEpochs", "Training epochs", 3, "epochs"),
    ("analyze", "ksample", "k-means clusters", 3, "ksample"),
    ("analyze", "volumeStar", "Volume-series star for map-back (empty: none)", 2, "volumestar"),
    ("select", "clusters", "Clusters to keep", 0, "clusters"),
]


@dataclass
class WorkflowSettings:
    """Values of the workflow's main parameters (the template's fields)."""

    star: str
    datadir: str = ""
    protein_dark: bool = False
    zdim: int = 8
    epochs: int = 20
    ksample: int = 20
    volume_star: str = ""
    clusters: str = "0"
    use_gpu: bool = True
    extra_train: dict | None = None


def build(project, s: WorkflowSettings) -> dict:
    """Create (not launch) the four protocols in ``project``, chained by pointers.

    Returns
    -------
    dict
        ``import``, ``train``, ``analyze``, ``select`` -> protocol.
    """
    from .protocols import TomoDrgnProtAnalyze, TomoDrgnProtImportParticles, TomoDrgnProtSelect, TomoDrgnProtTrainVAE

    imp = project.newProtocol(TomoDrgnProtImportParticles, objLabel="import particle tilt series",
                              starFile=s.star, proteinDark=s.protein_dark)
    if s.datadir:
        imp.dataDir.set(s.datadir)
    project.saveProtocol(imp)
    train = project.newProtocol(TomoDrgnProtTrainVAE, objLabel="train VAE", zdim=s.zdim, numEpochs=s.epochs,
                                useGpu=s.use_gpu, **(s.extra_train or {}))
    train.inputParticles.set(imp)
    train.inputParticles.setExtended("outputParticles")
    project.saveProtocol(train)
    ana = project.newProtocol(TomoDrgnProtAnalyze, objLabel="analyze", ksample=s.ksample, useGpu=s.use_gpu)
    ana.inputTraining.set(train)
    if s.volume_star:
        ana.volumeStar.set(s.volume_star)
    project.saveProtocol(ana)
    sel = project.newProtocol(TomoDrgnProtSelect, objLabel="select and export", mode=0, clusters=s.clusters)
    sel.inputParticles.set(ana)
    sel.inputParticles.setExtended("outputParticles")
    project.saveProtocol(sel)
    return {"import": imp, "train": train, "analyze": ana, "select": sel}


def template_json(project) -> str:
    """The workflow as a Scipion template: the project's JSON export with the main fields as
    ``~title|default|type|alias~`` placeholders."""
    s = WorkflowSettings(star="/path/to/particles.star")
    prots = build(project, s)
    project.getRunsGraph(refresh=True)
    data = json.loads(project.getProtocolsJson(list(prots.values())))
    by_id = {str(p.getObjId()): key for key, p in prots.items()}
    defaults = {"starFile": s.star, "dataDir": "", "proteinDark": s.protein_dark, "zdim": s.zdim,
                "numEpochs": s.epochs, "ksample": s.ksample, "volumeStar": s.volume_star, "clusters": s.clusters}
    marks = {}
    for entry in data:
        key = by_id[str(entry["object.id"])]
        for prot_key, param, title, vtype, alias in TEMPLATE_FIELDS:
            if prot_key == key:
                mark = f"@@{alias}@@"
                entry[param] = mark
                value = defaults[param]
                marks[mark] = f"~{title}|{str(value).lower() if isinstance(value, bool) else value}|{vtype}|{alias}~"
    text = json.dumps(data, indent=4)
    for mark, field in marks.items():
        text = text.replace(mark, field)
    header = ("tomoDRGN heterogeneity analysis: import Warp/M particle tilt series, train the VAE, analyse the "
              "latent space (PCA, UMAP, k-means volumes) and select/export the particles of chosen clusters as "
              "a RELION 3.0 star file.\n")
    return header + text + "\n"


# The facility template: (protocol key, parameter, title, type, alias), as TEMPLATE_FIELDS.
RELIONTOMO_FIELDS = [
    ("tomograms", "filesPath", "Tomograms folder", 2, "tomodir"),
    ("tomograms", "filesPattern", "Tomogram files (pattern; tilt-series ids from the names)", 0, "tomopattern"),
    ("tomograms", "samplingRate", "Tomogram pixel size (A)", 4, "tomopix"),
    ("particles", "optimisationSet", "RELION 5 optimisation set (Extract subtomos, 2D stacks)", 2, "optimset"),
    ("train", "zdim", "Latent dimension", 3, "zdim"),
    ("train", "numEpochs", "Training epochs", 3, "epochs"),
    ("analyze", "ksample", "k-means clusters", 3, "ksample"),
    ("select", "clusters", "Clusters to refine", 0, "clusters"),
    ("reference", "filesPath", "Reference map for 3D auto-refine", 2, "reference"),
    ("reference", "samplingRate", "Reference map pixel size (A)", 4, "refpix"),
    ("refine", "maskDiameter", "Particle mask diameter (A)", 3, "diameter"),
    ("refine", "symmetry", "Symmetry group", 0, "symmetry"),
]
RELIONTOMO_DEFAULTS = {"tomograms.filesPath": "/path/to/tomograms", "tomograms.filesPattern": "*.mrc",
                       "tomograms.samplingRate": 10.0, "particles.optimisationSet": "/path/to/optimisation_set.star",
                       "train.zdim": 8, "train.numEpochs": 20, "analyze.ksample": 20, "select.clusters": "0",
                       "reference.filesPath": "/path/to/reference.mrc", "reference.samplingRate": 5.0,
                       "refine.maskDiameter": 200, "refine.symmetry": "C1"}


def build_reliontomo(project, values: dict | None = None) -> dict:
    """Create (not launch) the facility chain in ``project``: tomo's tomogram import, our RELION 5 particle
    import (a ``RelionSetOfPseudoSubtomograms``), train VAE, analyze, select by cluster, pwem's volume import
    of the reference, and reliontomo's 3D auto-refine of the selection (3 MPI processes, GPU).

    Parameters
    ----------
    values : dict, optional
        ``"<key>.<parameter>"`` -> value, over :data:`RELIONTOMO_DEFAULTS`.

    Returns
    -------
    dict
        ``tomograms``, ``particles``, ``train``, ``analyze``, ``select``, ``reference``, ``refine`` -> protocol.
    """
    from pwem.protocols import ProtImportVolumes
    from reliontomo.protocols import ProtRelionRefineSubtomograms
    from tomo.protocols import ProtImportTomograms

    from .protocols import (TomoDrgnProtAnalyze, TomoDrgnProtImportRelionParticles, TomoDrgnProtSelect,
                            TomoDrgnProtTrainVAE)

    v = {**RELIONTOMO_DEFAULTS, **(values or {})}

    def params(key: str) -> dict:
        return {k.split(".", 1)[1]: val for k, val in v.items() if k.split(".", 1)[0] == key}

    def chain(prot, attr: str, source, extended: str | None = None) -> None:
        pointer = getattr(prot, attr)
        pointer.set(source)
        if extended:
            pointer.setExtended(extended)

    tomos = project.newProtocol(ProtImportTomograms, objLabel="import tomograms", **params("tomograms"))
    project.saveProtocol(tomos)
    parts = project.newProtocol(TomoDrgnProtImportRelionParticles, objLabel="import RELION 5 particles",
                                **params("particles"))
    chain(parts, "inputTomograms", tomos, "Tomograms")
    project.saveProtocol(parts)
    train = project.newProtocol(TomoDrgnProtTrainVAE, objLabel="train VAE", **params("train"))
    chain(train, "inputParticles", parts, "outputRelionParticles")
    project.saveProtocol(train)
    ana = project.newProtocol(TomoDrgnProtAnalyze, objLabel="analyze", **params("analyze"))
    chain(ana, "inputTraining", train)
    project.saveProtocol(ana)
    sel = project.newProtocol(TomoDrgnProtSelect, objLabel="select clusters", mode=0, **params("select"))
    chain(sel, "inputParticles", ana, "outputParticles")
    project.saveProtocol(sel)
    ref = project.newProtocol(ProtImportVolumes, objLabel="import reference", **params("reference"))
    project.saveProtocol(ref)
    refine = project.newProtocol(ProtRelionRefineSubtomograms, objLabel="reliontomo 3D auto-refine", numberOfMpi=3,
                                 doGpu=True, **params("refine"))
    chain(refine, "inReParticles", sel, "outputParticles")
    chain(refine, "referenceVolume", ref, "outputVolume")
    project.saveProtocol(refine)
    return {"tomograms": tomos, "particles": parts, "train": train, "analyze": ana, "select": sel,
            "reference": ref, "refine": refine}


def reliontomo_template_json(project) -> str:
    """The facility chain as a Scipion template, its main fields as ``~title|default|type|alias~``."""
    prots = build_reliontomo(project)
    project.getRunsGraph(refresh=True)
    data = json.loads(project.getProtocolsJson(list(prots.values())))
    by_id = {str(p.getObjId()): key for key, p in prots.items()}
    marks = {}
    for entry in data:
        key = by_id[str(entry["object.id"])]
        for prot_key, param, title, vtype, alias in RELIONTOMO_FIELDS:
            if prot_key == key:
                mark = f"@@{alias}@@"
                entry[param] = mark
                marks[mark] = f"~{title}|{RELIONTOMO_DEFAULTS[f'{key}.{param}']}|{vtype}|{alias}~"
    text = json.dumps(data, indent=4)
    for mark, field in marks.items():
        text = text.replace(mark, field)
    header = ("tomoDRGN between RELION 5 steps: register a reliontomo 2D-stack particle set (optimisation set of "
              "'Extract subtomos' with 2D stacks, on the imported tomograms), train the VAE, analyse the latent "
              "space, select the particles of chosen clusters (a reliontomo pseudo-subtomogram set) and refine "
              "them with reliontomo's 3D auto-refine.\n")
    return header + text + "\n"


def run(project, prots: dict) -> None:
    """Launch the protocols in order, each after the previous one finished; stop at the first failure."""
    for key in ("import", "train", "analyze", "select"):
        prot = prots[key]
        print(f"running {prot.getObjLabel()} ...", flush=True)
        project.launchProtocol(prot, wait=True)
        prot = project.getProtocol(prot.getObjId())
        prots[key] = prot
        if not prot.isFinished():
            raise SystemExit(f"{prot.getObjLabel()} failed: {prot.getErrorMessage()}")


def report(prots: dict) -> list[str]:
    """What came out, one line each."""
    imp, train, ana, sel = (prots[k] for k in ("import", "train", "analyze", "select"))
    mapback = ([f"map-back: ChimeraX scripts per tomogram in {os.path.abspath(ana.mapbackDir('markers'))} (markers) and "
                f"{os.path.abspath(ana.mapbackDir('volumes'))} (cluster volumes)"]
               if os.path.isdir(ana.mapbackDir("markers")) else [])
    return [
        f"import: {imp.summaryVar.get()}",
        f"train VAE: {train.outputParticles.getSize()} particles with z (zdim {train.zdim.get()}), "
        f"model in {os.path.abspath(train.trainDir())}",
        f"analyze: {ana.outputVolumes.getSize()} cluster volumes, plots and tables in {os.path.abspath(ana.anaDir())}",
        *mapback,
        f"select: {sel.outputParticles.getSize()} particles of cluster(s) {sel.clusters.get()}, "
        f"star file {os.path.abspath(sel.exportedStar())}",
    ]


def _manager_project(name: str, fresh: bool):
    from pyworkflow.project import Manager

    from .headless import ensure_hosts_conf

    ensure_hosts_conf()
    manager = Manager()
    if fresh and manager.hasProject(name):
        manager.deleteProject(name)
    project = manager.createProject(name)
    prefer_tomography_view(project.path)
    project.getSettings().setProtocolView(TOMOGRAPHY_VIEW)  # the open project's own copy, saved with it
    os.chdir(project.path)  # protocol paths are relative to the project folder
    return project


def prefer_tomography_view(project_path: str | os.PathLike) -> bool:
    """Open the project at ``project_path`` in the protocol tree's "Tomography" view (where the tomoDRGN
    section is) unless a view was chosen already: without one, Scipion shows its first view, "Protocols SPA".

    The project's settings file is changed directly, so this works from a protocol's own process too.

    Returns
    -------
    bool
        True if the view was set.
    """
    from pyworkflow.constants import PROJECT_SETTINGS
    from pyworkflow.project.config import ProjectSettings

    path = os.path.join(project_path, PROJECT_SETTINGS)
    if not os.path.isfile(path):
        return False
    settings = ProjectSettings.load(path)
    try:
        if settings.getProtocolView():
            return False
        settings.setProtocolView(TOMOGRAPHY_VIEW)
        settings.write()
    finally:
        settings.mapper.close()
    return True


def main(argv: list[str] | None = None) -> int:
    """``run`` the workflow in a new project, or write the ``template``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    r = sub.add_parser("run", help="create a project and run the workflow in it")
    r.add_argument("--project", required=True)
    r.add_argument("--star", type=Path, required=True)
    r.add_argument("--datadir", type=Path)
    r.add_argument("--protein-dark", action="store_true")
    r.add_argument("--zdim", type=int, default=8)
    r.add_argument("--epochs", type=int, default=20)
    r.add_argument("--ksample", type=int, default=20)
    r.add_argument("--volume-star", type=Path,
                   help="volume-series star of the same particles (coordinates in the tomograms): map the k-means "
                        "clusters back into the tomograms (ChimeraX scripts)")
    r.add_argument("--clusters", default="0")
    r.add_argument("--cpu", action="store_true", help="do not use a GPU")
    r.add_argument("--small", action="store_true", help="a small network (the demo's), for a quick run on a CPU")
    t = sub.add_parser("template", help="write the workflow template")
    t.add_argument("output", type=Path)
    t.add_argument("--reliontomo", action="store_true",
                   help="the facility template: reliontomo particles -> train -> analyze -> select -> 3D auto-refine")
    a = p.parse_args(argv)
    if a.what == "template":
        out = a.output.resolve()
        project = _manager_project("tomodrgn_template_scratch", fresh=True)
        text = reliontomo_template_json(project) if a.reliontomo else template_json(project)
        from pyworkflow.project import Manager

        Manager().deleteProject("tomodrgn_template_scratch")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, out)
        print(f"template: {out}")
        return 0
    small = dict(encLayersA=2, encDimA=128, outDimA=32, encLayersB=2, encDimB=128, decLayers=3, decDim=128,
                 batchSize=8, learningRate=1e-3) if a.small else None
    settings = WorkflowSettings(star=str(a.star.resolve()), datadir=str(a.datadir.resolve()) if a.datadir else "",
                                protein_dark=a.protein_dark, zdim=a.zdim, epochs=a.epochs, ksample=a.ksample,
                                volume_star=str(a.volume_star.resolve()) if a.volume_star else "", clusters=a.clusters,
                                use_gpu=not a.cpu, extra_train=small)
    project = _manager_project(a.project, fresh=True)
    prots = build(project, settings)
    run(project, prots)
    for line in report(prots):
        print(line)
    print(f"project: {project.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
