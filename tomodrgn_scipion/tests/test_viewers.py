"""The "Analyze Results" viewers of every protocol, opened on a virtual screen (Xvfb) over a small simulated
project: what each figure shows is checked (points = particles, axis labels, the 0.143 line...), windows
are opened and rendered, and selection by drawing is driven with mouse events on the latent plot."""
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tomo")

from tomodrgn_scipion.headless import VirtualScreen  # noqa: E402

if not VirtualScreen.available():
    pytest.skip("Xvfb is not installed (apt-get install xvfb)", allow_module_level=True)

from matplotlib.backend_bases import MouseEvent  # noqa: E402
from matplotlib.collections import PathCollection, PolyCollection  # noqa: E402
from pyworkflow.viewer import MessageView  # noqa: E402

from tomodrgn_scipion.method.phantom import two_state_phantom  # noqa: E402
from tomodrgn_scipion.method.simulate import SimulationConfig, simulate  # noqa: E402
from tomodrgn_scipion.protocols import (TomoDrgnProtAnalyze, TomoDrgnProtBackproject,  # noqa: E402
                                        TomoDrgnProtGenerateVolumes, TomoDrgnProtImportParticles,
                                        TomoDrgnProtSelect, TomoDrgnProtTrainNN, TomoDrgnProtTrainVAE)
from tomodrgn_scipion.tests.project_test import ProjectTest  # noqa: E402
from tomodrgn_scipion.tests.test_protocols import SMALL  # noqa: E402
from tomodrgn_scipion.viewers import (TomoDrgnAnalyzeViewer, TomoDrgnBackprojectViewer,  # noqa: E402
                                      TomoDrgnGenerateViewer, TomoDrgnParticlesViewer, TomoDrgnTrainNNViewer,
                                      TomoDrgnTrainVAEViewer)
from tomodrgn_scipion.viewers.views import BackgroundView, FigureView, volumes_script  # noqa: E402

N_PARTICLES = 60


def n_points(ax) -> int:
    """Data points drawn by scatter calls in an axes (centre markers excluded: they are white)."""
    total = 0
    for c in ax.collections:
        if isinstance(c, PathCollection):
            face = c.get_facecolor()
            if len(face) and np.allclose(face[0][:3], 1.0):
                continue  # cluster-centre markers
            total += len(c.get_offsets())
    return total


def png_is_drawn(path: Path) -> bool:
    """The PNG exists and is not one flat colour."""
    from matplotlib.image import imread

    img = imread(path)
    return img.ndim == 3 and float(img[..., :3].std()) > 0.01


def _link(prot, source, name="outputParticles"):
    prot.inputParticles.set(source)
    prot.inputParticles.setExtended(name)


class TestViewers(ProjectTest):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        from pyworkflow.plugin import Domain

        Domain.getViewers()  # as the GUI does: registers each viewer with its plugin
        cls.screen = VirtualScreen()
        cls.screen.start()
        import tkinter as tk

        cls.root = tk.Tk()
        cls.root.withdraw()
        cls.shots = Path(tempfile.mkdtemp(prefix="tomodrgn_viewers_"))
        cls._opened: list[str] = []
        data = cls.shots / "data"
        simulate(list(two_state_phantom(16)), data, SimulationConfig(
            n_particles=N_PARTICLES, particles_per_tomogram=20, tilt_max=45.0, tilt_step=15.0, snr=3.0, seed=5))

        cls.imp = cls.proj.newProtocol(TomoDrgnProtImportParticles, starFile=str(data / "particles.star"))
        cls.proj.launchProtocol(cls.imp, wait=True)
        cls.train = cls.proj.newProtocol(TomoDrgnProtTrainVAE, zdim=2, numEpochs=3, **SMALL)
        _link(cls.train, cls.imp)
        cls.proj.launchProtocol(cls.train, wait=True)
        cls.ana = cls.proj.newProtocol(TomoDrgnProtAnalyze, ksample=2, nPerPc=3, useGpu=False,
                                       volumeStar=str(data / "particles_volumes.star"))
        cls.ana.inputTraining.set(cls.train)
        cls.proj.launchProtocol(cls.ana, wait=True)
        cls.bp = cls.proj.newProtocol(TomoDrgnProtBackproject)
        _link(cls.bp, cls.imp)
        cls.proj.launchProtocol(cls.bp, wait=True)
        cls.nn = cls.proj.newProtocol(TomoDrgnProtTrainNN, numEpochs=1, decLayers=2, decDim=32, batchSize=8,
                                      learningRate=1e-3, useGpu=False)
        _link(cls.nn, cls.imp)
        cls.proj.launchProtocol(cls.nn, wait=True)
        cls.gen = cls.proj.newProtocol(TomoDrgnProtGenerateVolumes, zSource=0, zValues="0 0\n1 1", useGpu=False)
        cls.gen.inputRun.set(cls.train)
        cls.proj.launchProtocol(cls.gen, wait=True)
        for prot in (cls.imp, cls.train, cls.ana, cls.bp, cls.nn, cls.gen):
            assert prot.isFinished(), f"{prot.getRunName()}: {prot.getErrorMessage()}"

    @classmethod
    def tearDownClass(cls):
        cls.root.destroy()
        cls.screen.stop()
        super().tearDownClass()

    def viewer(self, cls, prot):
        v = cls(project=self.proj, protocol=prot)
        v.setProtocol(prot)
        v._tkRoot = self.root
        return v

    def shown(self, view: FigureView, name: str) -> Path:
        """Open the view's window on the virtual screen, render it, save the figure; the PNG's path."""
        view.show(block=False)
        self.root.update()
        w = view.canvas.get_tk_widget()
        self.assertTrue(w.winfo_ismapped())
        self.assertGreater(w.winfo_width(), 100)
        path = self.shots / f"{name}.png"
        view.save(path)
        self.assertTrue(png_is_drawn(path))
        view.window.destroy()
        return path

    def shown_in_background(self, view: "BackgroundView") -> list:
        """Show a background view: it returns at once, its window keeps a progress line that moves while the
        Tk loop stays responsive, and it ends with the views of its work (returned, not opened)."""
        import time

        t0 = time.monotonic()
        view.open_when_done = False  # the test inspects the views instead of opening their windows
        view.show()
        self.assertLess(time.monotonic() - t0, 1.0)  # the work is not done on this (the GUI) thread
        self.assertTrue(view.thread.is_alive())
        lines, slowest = set(), 0.0
        while view.thread.is_alive():
            t = time.monotonic()
            self.root.update()
            slowest = max(slowest, time.monotonic() - t)
            lines.add(view.line)
            time.sleep(0.05)
            self.assertLess(time.monotonic() - t0, 300)
        # the window never froze for the work's length (tens of seconds here): one Tk update may still wait a
        # moment for the GIL the worker holds, longer on a loaded 2-core machine
        self.assertLess(slowest, 2.0)
        self.assertTrue(any(line.startswith(view.doing) and line.endswith(" s)") for line in lines), lines)
        for _ in range(50):  # the next poll closes the progress window
            if not view.window.winfo_exists():
                break
            self.root.update()
            time.sleep(0.05)
        self.assertFalse(view.window.winfo_exists())
        return view.result

    def one_figure(self, views, name: str):
        figs = [v for v in views if isinstance(v, FigureView)]
        self.assertEqual(len(figs), 1, [type(v).__name__ for v in views])
        self.shown(figs[0], name)
        return figs[0].figure

    # ------------------------------------------------------------------------------------------ train
    def test_train_vae_viewer(self):
        v = self.viewer(TomoDrgnTrainVAEViewer, self.train)
        fig = self.one_figure(v._showLoss(), "train_loss")
        recon, kl = fig.axes[:2]
        self.assertEqual(recon.get_xlabel(), "epoch")
        self.assertIn("reconstruction loss", recon.get_ylabel())
        self.assertIn("KL", kl.get_ylabel())
        self.assertEqual(len(recon.lines[0].get_xdata()), 3)  # one point per epoch

        fig = self.one_figure(v._showLatent(), "train_latent")
        self.assertEqual(n_points(fig.axes[0]), N_PARTICLES)
        self.assertIn("PC1", fig.axes[0].get_xlabel())
        # coloured by a star column: a colour bar named after it
        choices = v._colorChoices()
        v.colorBy.set(choices.index("_rlnDefocusU @ first tilt"))
        fig = v._showLatent()[0].figure
        self.assertIn("_rlnDefocusU @ first tilt", [ax.get_ylabel() for ax in fig.axes])

        (background,) = v._showConvergence()
        self.assertIsInstance(background, BackgroundView)
        views = self.shown_in_background(background)
        fig = self.one_figure(views, "train_convergence")
        self.assertEqual(len(fig.axes), 5)
        msg = [x for x in views if isinstance(x, MessageView)][0].getMessage()
        self.assertTrue(msg.startswith(("converged since epoch", "not yet converged")), msg)

    def test_train_nn_viewer(self):
        v = self.viewer(TomoDrgnTrainNNViewer, self.nn)
        fig = self.one_figure(v._showLoss(), "nn_loss")
        self.assertIn("reconstruction loss", fig.axes[0].get_ylabel())
        fig = self.one_figure(v._showMap(), "nn_map")
        self.assertEqual(len(fig.axes), 1)
        self.assertEqual(fig.axes[0].images[0].get_array().shape, (16, 50))  # XY | XZ | YZ of a 16 px box, 1 px apart

    # ------------------------------------------------------------------------------------------ analyze
    def test_analyze_latent(self):
        v = self.viewer(TomoDrgnAnalyzeViewer, self.ana)
        fig = self.one_figure(v._showLatent(), "analyze_latent")
        ax = fig.axes[0]
        self.assertEqual(n_points(ax), N_PARTICLES)
        self.assertRegex(ax.get_xlabel(), r"PC1 \(\d+\.\d % of variance\)")
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        sizes = np.bincount(v.latentSpace().labels)
        self.assertEqual(legend, [f"cluster {j} ({sizes[j]})" for j in range(2)])
        # density
        v.plotType.set(1)
        fig = v._showLatent()[0].figure
        self.assertTrue(any(isinstance(c, PolyCollection) for c in fig.axes[0].collections))
        self.assertIn("particles per bin", [a.get_ylabel() for a in fig.axes])
        v.plotType.set(0)
        # by tomogram: three tomograms of 20 particles, named in the legend
        v.colorBy.set(v._colorChoices().index("tomogram"))
        fig = v._showLatent()[0].figure
        legend = sorted(t.get_text() for t in fig.axes[0].get_legend().get_texts())
        self.assertEqual(len(legend), 3)
        self.assertTrue(all(t.endswith("(20)") for t in legend), legend)
        # metadata panels
        fig = self.one_figure(v._showControls(), "analyze_controls")
        panels = [ax for ax in fig.axes if any(isinstance(c, PathCollection) for c in ax.collections)]
        self.assertGreater(len(panels), 3)
        self.assertEqual({n_points(ax) for ax in panels}, {N_PARTICLES})
        # no UMAP at zdim 2: a message, no empty window
        v.embedding.set(1)
        views = v._showLatent()
        self.assertIsInstance(views[0], MessageView)
        self.assertIn("no UMAP", views[0].getMessage())

    def test_analyze_clusters_and_volumes(self):
        v = self.viewer(TomoDrgnAnalyzeViewer, self.ana)
        fig = self.one_figure(v._showOccupancy(), "analyze_occupancy")
        bars = fig.axes[0].patches
        self.assertEqual(int(round(sum(b.get_height() for b in bars))), N_PARTICLES)
        self.assertEqual(fig.axes[0].get_ylabel(), "particles")

        fig = self.one_figure(v._showClusterVolumes(), "analyze_cluster_volumes")  # no ChimeraX here: slices
        sizes = np.bincount(v.latentSpace().labels)
        self.assertEqual([ax.get_title() for ax in fig.axes],
                         [f"cluster {j} ({sizes[j]} particles)" for j in range(2)])
        fig = self.one_figure(v._showTraversal(), "analyze_pc1")
        self.assertEqual(len(fig.axes), 3)
        self.assertTrue(all(ax.get_title().startswith("PC1 = ") for ax in fig.axes))
        v.pcNumber.set(3)
        self.assertIsInstance(v._showTraversal()[0], MessageView)

        v.cluster.set(1)
        v.maxImages.set(4)
        fig = self.one_figure(v._showImages(), "analyze_cluster_images")
        self.assertEqual(len(fig.axes), min(4, int(sizes[1])))
        self.assertTrue(all("0°" in ax.get_title() for ax in fig.axes))  # the lowest-dose tilt is the 0° one
        fig = self.one_figure(v._showLoss(), "analyze_loss")
        self.assertEqual(len(fig.axes), 2)

    def test_analyze_mapback(self):
        v = self.viewer(TomoDrgnAnalyzeViewer, self.ana)
        tomos = v._tomograms()
        self.assertEqual(len(tomos), 3)
        v.tomogram.set(1)
        self.assertTrue(v.mapbackScript().endswith(".cxc") and os.path.isfile(v.mapbackScript()))
        fig = self.one_figure(v._showMapback(), "analyze_mapback")  # no ChimeraX here: the positions
        self.assertEqual(n_points(fig.axes[0]), 20)
        self.assertEqual(fig.axes[0].get_xlabel(), "x (nm)")
        self.assertIn(tomos[1], fig._suptitle.get_text())

    def test_select_by_drawing(self):
        """A lasso drawn with mouse events around cluster 0 launches a select run with exactly its particles."""
        from scipy.spatial import ConvexHull

        v = self.viewer(TomoDrgnAnalyzeViewer, self.ana)
        v.waitForRuns = True
        win = v._showSelect()[0]
        win.show()
        self.root.update()
        latent = v.latentSpace()
        rows = np.flatnonzero(latent.labels == 0)
        pts = win.xy[rows]
        hull = pts[ConvexHull(pts).vertices]
        hull = hull + 0.02 * (hull - hull.mean(0))  # just outside the cluster's points
        canvas = win.canvas
        to_px = win.ax.transData.transform
        path = np.vstack([hull, hull[:1]])
        dense = np.vstack([a + (b - a) * t for a, b in zip(path[:-1], path[1:]) for t in np.linspace(0, 1, 8)])
        x, y = to_px(dense[0])
        MouseEvent("button_press_event", canvas, x, y, button=1)._process()
        for p in dense[1:]:
            x, y = to_px(p)
            MouseEvent("motion_notify_event", canvas, x, y, button=1)._process()
        MouseEvent("button_release_event", canvas, x, y, button=1)._process()
        self.root.update()
        np.testing.assert_array_equal(win.selected, rows)
        self.screen.screenshot(str(self.shots / "select_window.png"), str(win.window.winfo_id()))
        msg = win.create()
        self.assertIn(f"keep {len(rows)} of {N_PARTICLES} particles", msg)
        sel = self.proj.getProtocol(v.lastSelection.getObjId())
        self.assertTrue(sel.isFinished(), sel.getErrorMessage())
        chosen = {latent.ids[r] for r in rows}
        self.assertEqual({p.getParticleId() for p in sel.outputParticles}, chosen)
        self.assertTrue(os.path.isfile(sel.exportedStar()))
        # the rectangle tool: an empty corner selects nothing, and nothing is created from it
        win._tool.set("rectangle")
        win._set_tool()
        lo = win.xy.min(0) - 1.0
        self.assertEqual(len(win.select_rectangle(lo[0] - 1, lo[1] - 1, lo[0], lo[1])), 0)
        self.assertIn("Nothing selected", win.create())
        win.window.destroy()

        # the particles viewer on that selection
        pv = self.viewer(TomoDrgnParticlesViewer, sel)
        pv.maxImages.set(3)
        fig = self.one_figure(pv._showImages(), "select_images")
        self.assertEqual(len(fig.axes), 3)

    def test_volumes_in_chimerax(self):
        """With ChimeraX installed (CHIMERAX_PATH), volumes go to it as one script laying them out side by side.

        ChimeraX is not installed here: a stand-in program records the command line it is started with.
        """
        import stat
        import time

        from tomodrgn_scipion.viewers.views import ChimeraXView

        fake = self.shots / "bin" / "ChimeraX"
        fake.parent.mkdir(exist_ok=True)
        record = self.shots / "chimerax_args.txt"
        fake.write_text(f'#!/bin/sh\necho "$@" > {record}\n')
        fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
        os.environ["CHIMERAX_PATH"] = str(fake.parent)
        try:
            v = self.viewer(TomoDrgnAnalyzeViewer, self.ana)
            v.volumeDisplay.set(0)
            views = v._showClusterVolumes()
        finally:
            del os.environ["CHIMERAX_PATH"]
        self.assertEqual(len(views), 1)
        self.assertIsInstance(views[0], ChimeraXView)
        script = views[0].script
        text = script.read_text().splitlines()
        opened = [line for line in text if line.startswith("open ")]
        self.assertEqual(len(opened), 2)
        self.assertTrue(all(os.path.isabs(line.split('"')[1]) and os.path.isfile(line.split('"')[1]) for line in opened))
        self.assertIn('rename #2 "cluster 1 (', "\n".join(text))
        self.assertIn("tile", text)
        views[0].show()
        for _ in range(100):
            if record.is_file():
                break
            time.sleep(0.05)
        self.assertEqual(record.read_text().strip(), str(script.resolve()))
        # a script written by hand opens with absolute paths too
        out = volumes_script([self.ana.kmeansDir("vol_000.mrc")], ["a"], self.shots / "one.cxc")
        self.assertIn(f'open "{Path(self.ana.kmeansDir("vol_000.mrc")).resolve()}"', out.read_text())

    # ------------------------------------------------------------------------------------------ maps
    def test_backproject_viewer(self):
        v = self.viewer(TomoDrgnBackprojectViewer, self.bp)
        fig = self.one_figure(v._showFsc(), "backproject_fsc")
        ax = fig.axes[0]
        self.assertTrue(any(np.allclose(line.get_ydata(), 0.143) for line in ax.lines), "no 0.143 line")
        self.assertEqual(ax.get_xlabel(), "spatial frequency (1/Å)")
        self.assertRegex(ax.get_title(), r"FSC = 0\.143 at \d+\.\d Å")
        res = float(ax.get_title().split("at ")[-1].split(" Å")[0])
        self.assertAlmostEqual(res, self.bp.resolution.get(), delta=0.051)
        # the marked crossing, against a linear interpolation of the table done here
        table = np.genfromtxt(self.bp.mapPath("_fsc", ".csv"), delimiter=",", names=True)
        f, c = table["frequency_1_per_A"], table["fsc"]
        j = 1 + int(np.flatnonzero(c[1:] < 0.143)[0])
        crossing = f[j - 1] + (c[j - 1] - 0.143) / (c[j - 1] - c[j]) * (f[j] - f[j - 1])
        vertical = [line for line in ax.lines if np.ptp(line.get_xdata()) == 0]
        self.assertEqual(len(vertical), 1)
        self.assertAlmostEqual(float(vertical[0].get_xdata()[0]), crossing, places=6)
        self.assertAlmostEqual(res, 1 / crossing, delta=0.051)
        fig = self.one_figure(v._showHalves(), "backproject_maps")
        self.assertEqual([a.get_title() for a in fig.axes], ["map", "half map 1", "half map 2"])

    def test_generate_and_particles_viewers(self):
        v = self.viewer(TomoDrgnGenerateViewer, self.gen)
        fig = self.one_figure(v._showVolumes(), "generate_volumes")
        self.assertEqual([a.get_title() for a in fig.axes], ["z point 0: z = (0.00, 0.00)", "z point 1: z = (1.00, 1.00)"])
        v = self.viewer(TomoDrgnParticlesViewer, self.imp)
        fig = self.one_figure(v._showTilts(), "import_tilts")
        self.assertEqual(n_points(fig.axes[0]), self.imp.outputParticles.getSize() * 7)  # 7 tilts of -45..45 by 15
        self.assertIn("dose", fig.axes[0].get_ylabel())

    # ------------------------------------------------------------------------------------------ forms
    def test_viewers_are_found_for_every_protocol(self):
        from pyworkflow.plugin import Domain
        from pyworkflow.viewer import DESKTOP_TKINTER

        import tomodrgn_scipion.protocols as protocols

        for name in [n for n in protocols.__all__ if n != "TomoDrgnProtBase"]:
            found = Domain.findViewers(getattr(protocols, name).__name__, DESKTOP_TKINTER)
            self.assertTrue(any(v.__module__.startswith("tomodrgn_scipion.viewers") for v in found), name)

    def test_forms_open_and_messages_when_not_run(self):
        """Each viewer's form opens on the screen; on a protocol that has not run, a message, no window."""
        for cls, prot in [(TomoDrgnTrainVAEViewer, self.train), (TomoDrgnAnalyzeViewer, self.ana),
                          (TomoDrgnBackprojectViewer, self.bp), (TomoDrgnTrainNNViewer, self.nn),
                          (TomoDrgnGenerateViewer, self.gen), (TomoDrgnParticlesViewer, self.imp)]:
            v = cls(project=self.proj, protocol=prot)
            name = cls.__name__
            self.root.after(1500, lambda n=name: self._capture_and_close(n))
            v.visualize(prot, windows=None)
            # the form was on the screen (a screenshot of it too, where ImageMagick's import is installed)
            self.assertTrue(name in self._opened or not self.screen.available(), name)

        fresh = self.proj.newProtocol(TomoDrgnProtBackproject)
        _link(fresh, self.imp)
        self.proj.saveProtocol(fresh)
        v = self.viewer(TomoDrgnBackprojectViewer, fresh)
        for key, fn in v._getVisualizeDict().items():
            views = fn(key)
            self.assertTrue(views and all(isinstance(x, MessageView) for x in views), key)
        ana = self.proj.newProtocol(TomoDrgnProtAnalyze, ksample=2)
        ana.inputTraining.set(self.train)
        self.proj.saveProtocol(ana)
        v = self.viewer(TomoDrgnAnalyzeViewer, ana)
        for key, fn in v._getVisualizeDict().items():
            if key == "displayLoss":
                continue  # the training's loss exists already
            views = fn(key)
            self.assertTrue(views and all(isinstance(x, MessageView) for x in views), key)
        train = self.proj.newProtocol(TomoDrgnProtTrainVAE, zdim=2)  # e.g. just launched: no epoch yet
        _link(train, self.imp)
        self.proj.saveProtocol(train)
        v = self.viewer(TomoDrgnTrainVAEViewer, train)
        for key, fn in v._getVisualizeDict().items():
            views = fn(key)
            self.assertTrue(views and all(isinstance(x, MessageView) for x in views), key)
        sel = self.proj.newProtocol(TomoDrgnProtSelect)
        self.proj.saveProtocol(sel)
        self.assertIsInstance(self.viewer(TomoDrgnParticlesViewer, sel)._showImages()[0], MessageView)

    def _capture_and_close(self, name: str) -> None:
        import tkinter as tk

        for w in self.root.winfo_children():
            if isinstance(w, tk.Toplevel) and w.winfo_viewable():
                w.update()
                self._opened.append(name)
                self.screen.screenshot(str(self.shots / f"form_{name}.png"), str(w.winfo_id()))
                w.destroy()
        self.root.quit()  # ends the form's main loop
