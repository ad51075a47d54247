"""Screenshots of every viewer of the plugin, taken on a virtual screen from the `make demo` project.

    make demo && make screenshots          # -> docs/viewers/*.png

The demo workflow runs import, train VAE, analyze and select. The viewers of back-projection, homogeneous
training and generate volumes need runs of those protocols: they are added to the demo project (small,
CPU, under a minute) when it has none. Each viewer's form is captured, then every window it opens
(ChimeraX is not used: volumes appear as central-slice montages); selection by drawing is shown with a
polygon drawn around k-means cluster 0.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def _add_missing_runs(project, runs: dict) -> dict:
    from tomodrgn_scipion.protocols import (TomoDrgnProtBackproject, TomoDrgnProtGenerateVolumes,
                                            TomoDrgnProtTrainNN)

    imp, train = runs["TomoDrgnProtImportParticles"], runs["TomoDrgnProtTrainVAE"]
    extra = [("TomoDrgnProtBackproject", TomoDrgnProtBackproject, {"objLabel": "back-project"}),
             ("TomoDrgnProtTrainNN", TomoDrgnProtTrainNN,
              {"objLabel": "train homogeneous", "numEpochs": 2, "decLayers": 2, "decDim": 64, "batchSize": 8,
               "learningRate": 1e-3, "useGpu": False}),
             ("TomoDrgnProtGenerateVolumes", TomoDrgnProtGenerateVolumes,
              {"objLabel": "generate volumes", "zSource": 0, "zValues": "-1 0\n0 0\n1 0", "useGpu": False})]
    for name, cls, kw in extra:
        if name in runs:
            continue
        prot = project.newProtocol(cls, **kw)
        if name == "TomoDrgnProtGenerateVolumes":
            prot.inputRun.set(train)
        else:
            prot.inputParticles.set(imp)
            prot.inputParticles.setExtended("outputParticles")
        print(f"adding '{kw['objLabel']}' to the project", flush=True)
        project.launchProtocol(prot, wait=True)
        runs[name] = prot
    return runs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--project", default="tomodrgn_demo")
    p.add_argument("-o", "--out", type=Path, default=Path(__file__).resolve().parent / "viewers")
    a = p.parse_args(argv)

    from tomodrgn_scipion.headless import VirtualScreen, ensure_hosts_conf

    ensure_hosts_conf()
    screen = VirtualScreen("1400x1000x24")
    screen.start()
    import tkinter as tk

    import pyworkflow.gui.project  # noqa: F401
    from pyworkflow.plugin import Domain
    from pyworkflow.project import Manager

    import tomodrgn_scipion.viewers as viewers
    from tomodrgn_scipion.viewers.selection import SelectionWindow
    from tomodrgn_scipion.viewers.views import FigureView

    Domain.getViewers()
    root = tk.Tk()
    root.withdraw()
    project = Manager().loadProject(a.project)
    os.chdir(project.path)
    runs = {r.getClassName(): r for r in project.getRuns() if r.isFinished()}
    runs = _add_missing_runs(project, runs)
    a.out.mkdir(parents=True, exist_ok=True)

    def grab(window, name: str) -> None:
        window.update()
        time.sleep(0.3)
        window.update()
        screen.screenshot(str(a.out / f"{name}.png"), str(window.winfo_id()))
        print("wrote", a.out / f"{name}.png", flush=True)

    for vname in viewers.__all__:
        vcls = getattr(viewers, vname)
        for target in vcls._targets:
            prot = runs.get(target.__name__)
            if prot is None:
                continue
            base = target.__name__[len("TomoDrgnProt"):].lower()
            v = vcls(project=project, protocol=prot)

            def capture_form(name=base):
                for w in root.winfo_children():
                    if isinstance(w, tk.Toplevel) and w.winfo_viewable():
                        grab(w, f"{name}_form")
                        w.destroy()
                root.quit()

            root.after(1500, capture_form)
            v.visualize(prot)
            v = vcls(project=project, protocol=prot)
            v.setProtocol(prot)
            v._tkRoot = root
            for key, fn in v._getVisualizeDict().items():
                for view in fn(key):
                    if isinstance(view, SelectionWindow):
                        view.show()
                        rows = [i for i, lab in enumerate(v.latentSpace().labels) if lab == 0]
                        from scipy.spatial import ConvexHull

                        pts = view.xy[rows]
                        view.select_polygon(pts[ConvexHull(pts).vertices])
                        root.update()
                        grab(view.window, f"{base}_{key[len('display'):].lower()}")
                        view.window.destroy()
                    elif isinstance(view, FigureView):
                        view.show(block=False)
                        grab(view.window, f"{base}_{key[len('display'):].lower()}")
                        view.window.destroy()
                    else:
                        print(f"{base} {key}: {type(view).__name__} {getattr(view, '_msg', '')}", flush=True)
    root.destroy()
    screen.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
