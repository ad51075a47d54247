"""The plugin's standard workflow, import -> train VAE -> analyze -> select/export, built in a Scipion
project without a screen, run to the end, or written as a Scipion workflow template.

``python -m tomodrgn_scipion.workflow run --project NAME --star particles.star [...]`` is what ``make demo``
runs; ``python -m tomodrgn_scipion.workflow template OUT.json.template`` writes
``templates/tomodrgn_heterogeneity.json.template`` (for ``scipion3 template ... --nogui``).
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
    a = p.parse_args(argv)
    if a.what == "template":
        out = a.output.resolve()
        project = _manager_project("tomodrgn_template_scratch", fresh=True)
        text = template_json(project)
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
