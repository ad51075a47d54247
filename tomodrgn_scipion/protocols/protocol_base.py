"""What every protocol of the plugin shares: running ``tomodrgn-scipion`` through ``runJob`` (so Scipion's
GPU selection, queues and hosts.conf apply), GPU arguments, citations, and the sets it creates."""
from __future__ import annotations

import os
import shlex
from typing import Iterable

import pyworkflow as pw
import pyworkflow.protocol.params as params
import pyworkflow.utils as pwutils
from pwem.protocols import EMProtocol

from .. import Plugin
from ..constants import CITE_CRYODRGN, CITE_TOMODRGN
from ..objects import TomoDrgnParticles


#: The particle sets our protocols take: ours, and scipion-em-reliontomo's 2D-stack pseudo-subtomograms.
PARTICLE_CLASSES = "TomoDrgnParticles, RelionSetOfPseudoSubtomograms"


def particle_key(item) -> str:
    """The name that identifies a particle in its star file: ``_rlnGroupName`` (ours) or
    ``_rlnTomoParticleName`` (reliontomo's items)."""
    get = getattr(item, "getParticleId", None) or getattr(item, "getRelionParticleName")
    return get()


def particle_cluster(item) -> "int | None":
    """The k-means cluster an analyze run gave a particle of either class (None before analysis)."""
    from ..convert.relion5 import item_cluster

    return item_cluster(item)


def relion_or_own_args(prot, parts) -> list[object]:
    """``--datadir`` and contrast options for the particle input of a protocol.

    Our sets: their data folder (or the star's) and ``--uninvert-data`` when protein-dark. reliontomo's
    pseudo-subtomograms: RELION writes image paths relative to its project folder, which is Scipion's
    project folder (the working directory of the run), and ``--uninvert-data`` when the form says the
    images are protein-dark.
    """
    from ..convert.relion5 import is_relion_set

    if is_relion_set(parts):
        args: list[object] = ["--datadir", os.getcwd()]
        if prot.relionProteinDark.get():
            args.append("--uninvert-data")
        return args
    args = ["--datadir", parts.getDataDir() or os.path.dirname(os.path.abspath(parts.getStar()))]
    if parts.isProteinDark():
        args.append("--uninvert-data")
    return args


def input_errors(parts) -> list[str]:
    """Form errors of the particle input of either class (empty when fine)."""
    from ..convert.relion5 import is_relion_set, validate_relion_set

    if parts is None:
        return ["Choose the particles."]
    if is_relion_set(parts):
        return validate_relion_set(parts)
    return []


def add_relion_contrast_param(form) -> None:
    """Contrast of reliontomo's particles (ours carry it from their import)."""
    form.addParam("relionProteinDark", params.BooleanParam, default=False, expertLevel=params.LEVEL_ADVANCED,
                  label="reliontomo particles: protein-dark?",
                  help="Only for reliontomo's pseudo-subtomograms. No (default): protein-light images, which the "
                       "method inverts. Yes: protein-dark (--uninvert-data).")


def quote(args: Iterable[object]) -> str:
    """Shell-quoted arguments of one command line."""
    return " ".join(shlex.quote(str(a)) for a in args)


#: Help of the GPU list of the protocols that run on one GPU.
ONE_GPU_HELP = ("The GPU to use, as nvidia-smi numbers it. This protocol runs on one GPU: of several listed, the "
                "first (only the training protocols use several). Under a queue, the first GPU of the job.")
#: Help of the GPU list of the training protocols.
SEVERAL_GPUS_HELP = ("The GPUs to train on, as nvidia-smi numbers them: 0, '0 1 2' or 0-3. Several: one training "
                     "process per GPU (torch DistributedDataParallel); the batch size stays the batch over all of "
                     "them. Under a queue, the job asks for as many GPUs as are listed and trains on the ones the "
                     "queue gives it. See docs/multigpu.md.")


def visible_devices(gpus: list[int], inherited: "str | None") -> str:
    """``CUDA_VISIBLE_DEVICES`` for a command that runs on the GPUs ``gpus``.

    Parameters
    ----------
    gpus : list of int
        GPU numbers: the devices themselves when Scipion runs without ``CUDA_VISIBLE_DEVICES``, else
        positions in it (as torch would number them).
    inherited : str or None
        Scipion's own ``CUDA_VISIBLE_DEVICES`` (set by a queue's job or by an allocation Scipion was started
        in; entries are numbers or GPU UUIDs), None when unset.

    Returns
    -------
    str
        The devices, comma-separated; the command's ranks see them as cuda:0..len(gpus)-1.

    Raises
    ------
    ValueError
        A GPU beyond those that ``inherited`` makes visible.
    """
    if inherited is None:
        return ",".join(str(g) for g in gpus)
    seen = [d.strip() for d in inherited.split(",") if d.strip()]
    beyond = [g for g in gpus if g >= len(seen)]
    if beyond and not seen:
        raise ValueError(f"GPU {beyond[0]}: Scipion sees no GPU (CUDA_VISIBLE_DEVICES is empty).")
    if beyond:
        raise ValueError(f"GPU {beyond[0]}: Scipion sees {len(seen)} GPU(s) (CUDA_VISIBLE_DEVICES={inherited}), "
                         f"numbered 0-{len(seen) - 1}.")
    return ",".join(seen[g] for g in gpus)


#: What the protocol tree, run boxes and form headers show before each protocol's ``_label``.
LABEL_PREFIX = "tomoDRGN - "


class TomoDrgnLabel:
    """Readable names: "tomoDRGN - train VAE" where Scipion would show "tomodrgn_scipion - train VAE", whose
    package name fills a narrow tree panel so that every entry looks the same."""

    @classmethod
    def getClassLabel(cls, prependPackageName: bool = True) -> str:
        """``_label``, after "tomoDRGN - " unless ``prependPackageName`` is False."""
        label = cls.__dict__.get("_label", cls.__name__)
        return f"{LABEL_PREFIX}{label}" if prependPackageName else label


class TomoDrgnProtBase(TomoDrgnLabel, EMProtocol):
    """Base of the tomoDRGN protocols: not shown in the protocol tree."""

    _label = None  # abstract: no entry in the GUI
    _possibleOutputs = {}
    #: Shown by Scipion's protocol tree and forms: a new plugin, tested on simulated and sample data.
    _devStatus = pw.BETA

    # ------------------------------------------------------------------------------------ form helpers
    @staticmethod
    def _addGpuParams(form, default_gpu: bool = True, several: bool = False) -> None:
        """Scipion's GPU switch and GPU list (hidden: the GUI shows them in its run section, with this help).

        ``several``: the protocol runs on every listed GPU (training); otherwise on the first.
        """
        form.addHidden(params.USE_GPU, params.BooleanParam, default=default_gpu,
                       label="Use GPU?", help="Run on a CUDA GPU when torch sees one; otherwise on the CPU.")
        form.addHidden(params.GPU_LIST, params.StringParam, default="0", label="GPU IDs",
                       help=SEVERAL_GPUS_HELP if several else ONE_GPU_HELP)

    @staticmethod
    def _addVolumeParams(form) -> None:
        """How generated volumes are rendered (eval_vol's options), in a section of their own."""
        form.addSection(label="Volumes")
        form.addParam("downsample", params.IntParam, default=0, expertLevel=params.LEVEL_ADVANCED,
                      label="Box size (px)", help="Render at this even box, at most the training box (the "
                                                   "pixel size grows accordingly); 0: the training box.")
        form.addParam("lowpass", params.FloatParam, default=0.0, expertLevel=params.LEVEL_ADVANCED,
                      label="Low-pass filter (A)", help="Resolution of a low-pass filter; 0: none.")
        form.addParam("flip", params.BooleanParam, default=False, expertLevel=params.LEVEL_ADVANCED,
                      label="Flip handedness?", help="Mirror along z.")
        form.addParam("invert", params.BooleanParam, default=False, expertLevel=params.LEVEL_ADVANCED,
                      label="Invert contrast?")

    def _volumeArgs(self) -> list[object]:
        """Command-line options of the parameters of :meth:`_addVolumeParams`."""
        args: list[object] = []
        if self.downsample.get():
            args += ["--downsample", self.downsample.get()]
        if self.lowpass.get():
            args += ["--lowpass", self.lowpass.get()]
        if self.flip.get():
            args.append("--flip")
        if self.invert.get():
            args.append("--invert")
        return args

    def gpuIds(self) -> list[int]:
        """The GPUs of this run, numbered as its command sees them.

        Outside a queue, the form's list (nvidia-smi's numbers). Under a queue, pyworkflow books ``GPU_COUNT``
        GPUs for the job (the length of the form's list, unless the queue's parameters set it) and the queue
        engine chooses them: the job sees them as 0..GPU_COUNT-1 (pyworkflow renumbers a queued run's GPUs
        the same way, ``anonimizeGPUs``).
        """
        if self.useQueue():
            return list(range(int(self.getSubmitDict()["GPU_COUNT"])))
        return self.getGpuList()

    def _deviceArgs(self) -> list[str]:
        """One GPU: ``--device auto:N`` (the first listed GPU when the command's torch sees CUDA, else the
        CPU), or ``--device cpu``."""
        if not self.usesGpu():
            return ["--device", "cpu"]
        gpus = self.gpuIds()
        return ["--device", f"auto:{gpus[0]}" if gpus else "auto"]

    def _environ(self) -> pwutils.Environ:
        """The plugin's environment for a command; with a GPU, also ``CUDA_DEVICE_ORDER`` from Scipion's
        configuration (``PCI_BUS_ID`` by default: GPU numbers as nvidia-smi shows them) unless already set."""
        env = Plugin.getEnviron()
        if self.usesGpu():
            env.setdefault("CUDA_DEVICE_ORDER", getattr(pw.Config, "CUDA_DEVICE_ORDER", "PCI_BUS_ID"))
        return env

    def _gpuErrors(self, several: bool = False) -> list[str]:
        """Form errors of the GPU list (none when it is fine or the CPU is used); ``several``: the protocol
        runs one process on each listed GPU."""
        if not self.usesGpu():
            return []
        try:
            gpus = self.getGpuList()
        except ValueError:
            return [f"GPU IDs '{self.gpuList.get()}': expected GPU numbers such as 0, '0 1 2' or 0-3."]
        if not several or len(gpus) < 2:
            return []
        twice = sorted({g for g in gpus if gpus.count(g) > 1})
        if twice:
            return [f"GPU IDs '{self.gpuList.get()}': GPU {twice[0]} is listed twice (one process per GPU)."]
        if not self.useQueue():  # a queued job's GPUs are only known in the job
            try:
                visible_devices(gpus, os.environ.get("CUDA_VISIBLE_DEVICES"))
            except ValueError as e:
                return [str(e)]
        return []

    # ------------------------------------------------------------------------------------ running
    def _runCli(self, subcommand: str, args: Iterable[object], env: "pwutils.Environ | None" = None) -> None:
        """Run one ``tomodrgn-scipion`` command in ``env`` (default: :meth:`_environ`); its output goes to the
        run's log."""
        self.runJob(Plugin.getProgram(subcommand), quote(args), env=self._environ() if env is None else env,
                    numberOfMpi=1, numberOfThreads=1)

    def _createParticleSet(self, suffix: str = "") -> TomoDrgnParticles:
        """A new, empty particle set in this run's folder."""
        path = self._getPath(f"tomodrgn_particles{suffix}.sqlite")
        pwutils.cleanPath(path)
        return TomoDrgnParticles(filename=path)

    # ------------------------------------------------------------------------------------ info
    def _citations(self) -> list[str]:
        return [CITE_TOMODRGN, CITE_CRYODRGN]

    @staticmethod
    def _exists(path: str) -> bool:
        return bool(path) and os.path.exists(path)
