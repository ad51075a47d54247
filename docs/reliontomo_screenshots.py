"""Screenshots of the hand-off with scipion-em-reliontomo in the Scipion GUI, on a virtual screen.

    .venv/bin/python docs/reliontomo_screenshots.py --project TestRelion5Chain   # -> docs/reliontomo/*.png

With the Makefile's Scipion environment, in a project holding an "import RELION 5 particles" run (reliontomo's
pseudo-subtomograms) and a "select particles" run on them, e.g. the one tests/test_reliontomo_chain.py leaves.
It opens, as a user does, our train VAE form and the list its particle field offers (reliontomo's sets among
ours), and reliontomo's 3D auto-refine form and the list its "Pseudo-Subtomograms" field offers (our selection),
and captures each window. Needs Xvfb and ImageMagick's ``import``.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--project", default="TestRelion5Chain")
    p.add_argument("-o", "--out", type=Path, default=Path(__file__).resolve().parent / "reliontomo")
    p.add_argument("--crop", default="1600x520+0+0", help="ImageMagick geometry of the part of the screen kept")
    a = p.parse_args(argv)

    from tomodrgn_scipion.headless import VirtualScreen, ensure_hosts_conf

    ensure_hosts_conf()
    screen = VirtualScreen("1600x1000x24")
    screen.start()
    import tkinter as tk

    import pyworkflow as pw
    import pyworkflow.gui.project  # noqa: F401
    from pyworkflow.gui.form import FormWindow
    from pyworkflow.project import Manager

    pw.Config.getDomain().getPlugins()  # registers reliontomo's variables before its protocols are imported
    from reliontomo.protocols import ProtRelionRefineSubtomograms

    from tomodrgn_scipion.protocols import TomoDrgnProtTrainVAE

    project = Manager().loadProject(a.project)
    os.chdir(project.path)
    a.out.mkdir(parents=True, exist_ok=True)

    def form_and_list(cls, param: str, name: str) -> None:
        prot = project.newProtocol(cls)
        form = FormWindow(f"Protocol: {prot.getClassLabel()}", prot, lambda *args: None)
        form.root.deiconify()
        form.root.geometry("+0+0")
        form.root.update()
        widget = form.widgetDict[param]

        def toplevels(widget) -> list:
            found = []
            for w in widget.winfo_children():
                if isinstance(w, tk.Toplevel) and w.winfo_viewable():
                    found.append(w)
                found += toplevels(w)
            return found

        def capture() -> None:
            dialogs = toplevels(form.root)
            for d in dialogs:
                d.geometry("+760+60")
                d.update()
            time.sleep(0.5)
            form.root.update()
            screen.screenshot(str(a.out / f"{name}.png"))  # the form and the list it opened, side by side
            subprocess.run(["convert", str(a.out / f"{name}.png"), "-crop", a.crop, "+repage", str(a.out / f"{name}.png")],
                           check=True, timeout=60)
            print("wrote", a.out / f"{name}.png", flush=True)
            for d in dialogs:
                d.destroy()
            if not dialogs:
                print(f"{name}: no list window opened", flush=True)

        form.root.after(2500, capture)
        widget._browseObject()
        form.root.destroy()

    form_and_list(TomoDrgnProtTrainVAE, "inputParticles", "train_vae")
    form_and_list(ProtRelionRefineSubtomograms, "inReParticles", "reliontomo_refine")
    screen.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
