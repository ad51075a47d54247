"""GPUs from Scipion: the training protocols' command line and environment for the form's GPU lists, the same
under a SLURM queue read from templates/hosts.conf.slurm-gpu by pyworkflow's own parser, the GPU help of the
single-GPU protocols, and the "Load images" choice of runs saved before it existed."""
import contextlib
import os
import sqlite3
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("tomo")

from pyworkflow.protocol.constants import GPU_LIST  # noqa: E402
from pyworkflow.protocol.hosts import HostConfig  # noqa: E402
from pyworkflow.protocol.launch import analyzeFormattingTypeError  # noqa: E402

from tomodrgn_scipion.method.phantom import two_state_phantom  # noqa: E402
from tomodrgn_scipion.method.simulate import SimulationConfig, simulate  # noqa: E402
from tomodrgn_scipion.protocols import (TomoDrgnProtAnalyze, TomoDrgnProtImportParticles,  # noqa: E402
                                        TomoDrgnProtTrainNN, TomoDrgnProtTrainVAE)
from tomodrgn_scipion.protocols.protocol_base import visible_devices  # noqa: E402
from tomodrgn_scipion.protocols.protocol_train import LOAD_AUTO, LOAD_DISK, LOAD_MEMORY  # noqa: E402
from tomodrgn_scipion.tests.project_test import ProjectTest  # noqa: E402

HOSTS = Path(__file__).resolve().parents[2] / "templates" / "hosts.conf.slurm-gpu"


@contextlib.contextmanager
def environ(**values):
    """Scipion's own environment with these variables (None: unset), restored afterwards."""
    old = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def option(args: list, flag: str):
    """The value after ``flag`` in a command line (None when absent)."""
    args = [str(a) for a in args]
    return args[args.index(flag) + 1] if flag in args else None


class TestTrainGpus(ProjectTest):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tmp = Path(tempfile.mkdtemp(prefix="tomodrgn_gpu_"))
        simulate(list(two_state_phantom(8)), cls.tmp, SimulationConfig(
            n_particles=4, particles_per_tomogram=4, tilt_max=30.0, tilt_step=30.0, snr=3.0, seed=1))
        cls.imp = cls.newProtocol(TomoDrgnProtImportParticles, starFile=str(cls.tmp / "particles.star"))
        cls.launchProtocol(cls.imp)

    def _train(self, cls=TomoDrgnProtTrainVAE, **kw):
        prot = self.newProtocol(cls, **kw)
        prot.inputParticles.set(self.imp)
        prot.inputParticles.setExtended("outputParticles")
        return prot

    def test_gpu_lists(self):
        with environ(CUDA_VISIBLE_DEVICES=None, CUDA_DEVICE_ORDER=None):
            for cls in (TomoDrgnProtTrainVAE, TomoDrgnProtTrainNN):
                program, args, env = self._train(cls, gpuList="0").trainCommand()
                self.assertIn(cls.COMMAND, program)
                self.assertEqual(option(args, "--device"), "auto:0")  # one GPU: as before
                self.assertIsNone(option(args, "--num-gpus"))
                self.assertNotIn("CUDA_VISIBLE_DEVICES", env)
                self.assertEqual(env["CUDA_DEVICE_ORDER"], "PCI_BUS_ID")  # Scipion's default: nvidia-smi's numbers

                _, args, env = self._train(cls, gpuList="0 1").trainCommand()
                self.assertEqual((option(args, "--num-gpus"), option(args, "--device")), ("2", "cuda"))
                self.assertEqual(env["CUDA_VISIBLE_DEVICES"], "0,1")

                _, args, env = self._train(cls, gpuList="2 3").trainCommand()
                self.assertEqual((option(args, "--num-gpus"), option(args, "--device")), ("2", "cuda"))
                self.assertEqual(env["CUDA_VISIBLE_DEVICES"], "2,3")  # the ranks' cuda:0 and cuda:1

                _, args, env = self._train(cls, gpuList="0-2").trainCommand()  # pyworkflow's range syntax
                self.assertEqual((option(args, "--num-gpus"), env["CUDA_VISIBLE_DEVICES"]), ("3", "0,1,2"))

                _, args, env = self._train(cls, gpuList="0 1", useGpu=False).trainCommand()
                self.assertEqual(option(args, "--device"), "cpu")
                self.assertIsNone(option(args, "--num-gpus"))
                self.assertNotIn("CUDA_VISIBLE_DEVICES", env)
                self.assertNotIn("CUDA_DEVICE_ORDER", env)
                self.assertEqual(args.count("--device"), 1)

    def test_gpu_list_within_an_allocation(self):
        # Scipion started inside an allocation (salloc, a node's scheduler) that shows it GPUs 4-7: the form's
        # numbers count within them, as torch's cuda:N would
        with environ(CUDA_VISIBLE_DEVICES="4,5,6,7", CUDA_DEVICE_ORDER="FASTEST_FIRST"):
            _, args, env = self._train(gpuList="2 3").trainCommand()
            self.assertEqual(env["CUDA_VISIBLE_DEVICES"], "6,7")
            self.assertEqual(env["CUDA_DEVICE_ORDER"], "FASTEST_FIRST")  # the user's own setting stays
            _, args, env = self._train(gpuList="1").trainCommand()
            self.assertEqual((option(args, "--device"), env["CUDA_VISIBLE_DEVICES"]), ("auto:1", "4,5,6,7"))
            self.assertTrue(any("Scipion sees 4 GPU(s)" in e for e in self._train(gpuList="3 4").validate()))
        self.assertEqual(visible_devices([1, 0], "GPU-aa, GPU-bb"), "GPU-bb,GPU-aa")
        with self.assertRaisesRegex(ValueError, "sees no GPU"):
            visible_devices([0, 1], "")

    def test_form_errors(self):
        with environ(CUDA_VISIBLE_DEVICES=None):
            def errors(**kw):
                return " | ".join(self._train(**kw).validate())

            self.assertIn("GPU 1 is listed twice", errors(gpuList="1 0 1", batchSize=8))
            self.assertIn("expected GPU numbers", errors(gpuList="first"))
            self.assertIn("must be at least 3", errors(gpuList="0 1 2", batchSize=2))
            self.assertNotIn("GPU", errors(gpuList="0 1 2", batchSize=3))
            self.assertNotIn("GPU", errors(gpuList="0 0", useGpu=False))  # the CPU: the list does not matter

    def test_single_gpu_protocols(self):
        ana = self.newProtocol(TomoDrgnProtAnalyze, gpuList="2 3")
        self.assertEqual(ana._deviceArgs(), ["--device", "auto:2"])  # the first listed
        self.assertIn("of several listed, the first", ana.getParam(GPU_LIST).getHelp())
        self.assertIn("one training process per GPU", self._train().getParam(GPU_LIST).getHelp())

    def _queued(self, host: HostConfig, gpus: str):
        """A train VAE run on ``host``'s queue "gpu", as the form's queue dialog sets it."""
        prot = self._train(gpuList=gpus)
        self.proj.saveProtocol(prot)
        prot.setHostConfig(host)
        prot._useQueue.set(True)
        prot.setQueueParams(["gpu", {"CPUS_PER_TASK": "16", "JOB_MEMORY": "120G", "JOB_HOURS": "12"}])
        return prot

    def test_slurm_queue(self):
        if not HOSTS.is_file():
            self.skipTest(f"{HOSTS} not found (an installed package, not a checkout)")
        hosts = HostConfig.load(str(HOSTS))  # pyworkflow's parser: it exits on a malformed file
        host = hosts["localhost"]
        self.assertEqual(host.getQueueSystem().getName(), "SLURM")
        self.assertEqual(list(host.getQueueSystem().getQueues()), ["gpu"])
        for gpus, count, device in (("0 1 2", 3, "cuda"), ("5", 1, "auto:0")):
            prot = self._queued(host, gpus)
            self.assertTrue(prot.useQueueForProtocol())
            # what pyworkflow's launch gives the template (launch._submit fills it the same way)
            submit = dict(host.getQueuesDefault())
            submit.update(prot.getSubmitDict())
            submit["JOB_COMMAND"] = "pw_protocol_run.py ..."
            template = host.getSubmitTemplate()
            self.assertIsNone(analyzeFormattingTypeError(template, submit))
            script = template % submit
            self.assertIn(f"#SBATCH --gres=gpu:{count}\n", script)
            self.assertIn("#SBATCH --partition=gpu\n", script)
            self.assertIn("#SBATCH --cpus-per-task=16\n", script)
            self.assertIn("#SBATCH --time=12:00:00\n", script)
            self.assertEqual(host.getSubmitCommand() % submit, f"sbatch {submit['JOB_SCRIPT']}")
            self.assertEqual(host.getCheckCommand() % {"JOB_ID": 42}, "squeue -h -j 42")
            # in the job: as many ranks as GPUs booked, on the GPUs SLURM set in CUDA_VISIBLE_DEVICES
            slurm = ",".join(str(7 - g) for g in range(count))
            with environ(CUDA_VISIBLE_DEVICES=slurm):
                _, args, env = prot.trainCommand()
            self.assertEqual(option(args, "--device"), device)
            self.assertEqual(option(args, "--num-gpus"), str(count) if count > 1 else None)
            self.assertEqual(env["CUDA_VISIBLE_DEVICES"], slurm)
        with environ(CUDA_VISIBLE_DEVICES=None):  # the engine's variable, never one of Scipion's making
            self.assertNotIn("CUDA_VISIBLE_DEVICES", self._queued(host, "0 1 2").trainCommand()[2])
        # without the dialog's values the defaults fill the template
        prot.setQueueParams(["gpu", {}])
        submit = dict(host.getQueuesDefault())
        submit.update(prot.getSubmitDict())
        submit["JOB_COMMAND"] = "true"
        self.assertIn("#SBATCH --mem=64G\n", host.getSubmitTemplate() % submit)

    def test_load_images(self):
        for choice, flags in ((LOAD_AUTO, []), (LOAD_MEMORY, ["--no-lazy"]), (LOAD_DISK, ["--lazy"])):
            _, args, _ = self._train(loadImages=choice).trainCommand()
            self.assertEqual([a for a in args if a in ("--lazy", "--no-lazy")], flags)

    def test_old_project_lazy(self):
        """A run saved before "Load images": its Yes/No ``lazy`` row in the project database."""
        from pyworkflow.project import Project

        for old_value, expected, flag in (("True", LOAD_DISK, "--lazy"), ("False", LOAD_MEMORY, "--no-lazy")):
            prot = self._train(TomoDrgnProtTrainNN)
            self.proj.saveProtocol(prot)
            pid = prot.getObjId()
            db = os.path.join(self.proj.path, self.proj.dbPath)
            with contextlib.closing(sqlite3.connect(db)) as con, con:
                changed = con.execute("UPDATE Objects SET name=?, classname='Boolean', value=? WHERE name=?",
                                      (f"{pid}.lazy", old_value, f"{pid}.loadImages")).rowcount
            self.assertEqual(changed, 1)
            old = Project(self.proj.getDomain(), self.proj.path)
            old.load()
            loaded = old.getProtocol(pid)
            self.assertEqual(loaded.loadImages.get(), expected)
            self.assertIn(flag, [str(a) for a in loaded.trainCommand()[1]])
            # saved again, it has the new parameter only, with the same value
            old.saveProtocol(loaded)
            with contextlib.closing(sqlite3.connect(db)) as con:
                names = {r[0]: r[1] for r in con.execute("SELECT name, value FROM Objects WHERE name IN (?, ?)",
                                                         (f"{pid}.lazy", f"{pid}.loadImages"))}
            self.assertEqual(names, {f"{pid}.loadImages": str(expected)})

    def test_old_workflow_lazy(self):
        """A workflow exported before "Load images" (scipion3 template, Import workflow): its JSON ``lazy``."""
        import json

        for old_value, expected in ((True, LOAD_DISK), (False, LOAD_MEMORY)):
            path = self.tmp / f"old_workflow_{old_value}.json"
            path.write_text(json.dumps([{"object.className": "TomoDrgnProtTrainNN", "object.id": "7",
                                         "object.label": "old train", "lazy": old_value, "numEpochs": 3}]))
            loaded = self.proj.loadProtocols(filename=str(path))["7"]
            self.assertEqual((loaded.loadImages.get(), loaded.numEpochs.get()), (expected, 3))
            self.proj.getRunsGraph(refresh=True)
            exported = json.loads(self.proj.getProtocolsJson([loaded]))[0]
            self.assertNotIn("lazy", exported)
            self.assertEqual(exported["loadImages"], expected)

    def test_train_nn_on_two_cpu_ranks(self):
        """A real distributed run from Scipion: no GPU, and the form's extra options ask for 2 CPU ranks
        (--device cpu --num-gpus 2: gloo), as a GPU list of two asks for 2 GPU ranks."""
        from tomodrgn_scipion.method.stacks import read_volume

        nn = self._train(TomoDrgnProtTrainNN, useGpu=False, numEpochs=1, batchSize=2, decLayers=1, decDim=16,
                         learningRate=1e-3, extraParams="--num-gpus 2")
        self.launchProtocol(nn)
        log = open(nn.getStdoutLog()).read()
        self.assertIn("2 ranks (gloo)", log)
        data, _ = read_volume(nn.outputVolume.getFileName())
        self.assertEqual(data.shape, (8, 8, 8))
        self.assertIn("1 of 1 epochs", nn.summary()[0])
