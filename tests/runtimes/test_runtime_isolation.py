"""A job's workers run in its framework's runtime and import only that framework: a torch job
never loads tensorflow, a tensorflow job never loads torch (checked inside the Ray worker)."""
import pytest
import yaml

import trainer
from trainer.tracking.runs import client

pytestmark = pytest.mark.integration

PROBE = '''
import importlib.util
import sys


def train(ctx):
    ctx.report({"step": 0, "tf_loaded": float("tensorflow" in sys.modules),
                "torch_loaded": float("torch" in sys.modules),
                "keras_loaded": float("keras" in sys.modules),
                # which runtime the worker runs in: what its interpreter can import at all
                "tf_installed": float(importlib.util.find_spec("tensorflow") is not None),
                "torch_installed": float(importlib.util.find_spec("torch") is not None)})
'''


def _submit_probe(folder, framework):
    project = folder / framework
    project.mkdir()
    (project / "pyproject.toml").write_text('[project]\nname = "probe"\nversion = "0"\n')
    (project / "probe.py").write_text(PROBE)
    spec = {"name": f"probe-{framework}", "framework": framework, "entrypoint": "probe.py:train",
            "workers": 1, "resources": {"accelerator": "cpu", "cpus_per_worker": 1},
            "tracking": {"experiment": "runtime-isolation"}}
    (project / "job.yaml").write_text(yaml.safe_dump(spec))
    return trainer.submit(project / "job.yaml")


@pytest.fixture(scope="module")
def probes(cluster, tmp_path_factory):
    """Both probe jobs at once (the cpu node holds two 1-CPU workers): half the wall time."""
    folder = tmp_path_factory.mktemp("probes")
    jobs = {fw: _submit_probe(folder, fw) for fw in ("torch", "tensorflow")}
    metrics = {}
    for fw, job in jobs.items():
        assert job.wait(timeout=600).value == "SUCCEEDED", job.logs()[-3000:]
        metrics[fw] = client(job.tracking_uri).get_run(job.run_id).data.metrics
    return metrics


def test_torch_job_does_not_import_tensorflow(probes):
    metrics = probes["torch"]
    assert metrics["torch_loaded"] == 1.0  # the probe sees imports: TorchTrainer set up torch
    assert metrics["tf_loaded"] == 0.0
    assert metrics["keras_loaded"] == 0.0
    assert metrics["torch_installed"] == 1.0


@pytest.mark.tensorflow
def test_tensorflow_job_does_not_import_torch(probes):
    metrics = probes["tensorflow"]
    assert metrics["tf_loaded"] == 1.0  # TensorflowTrainer's backend and the strategy need it
    assert metrics["torch_loaded"] == 0.0
    assert (metrics["tf_installed"], metrics["torch_installed"]) == (1.0, 0.0)  # the tensorflow runtime
