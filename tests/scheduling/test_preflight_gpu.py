"""Preflight's GPU check: a GPU job needs a runtime whose lock declares a gpu variant (its image's
GPU build); every framework is checked alike, before anything is submitted."""
import pytest

from trainer.errors import PreflightError
from trainer.runtimes import lock as lock_module
from trainer.scheduling.preflight import check_spec
from trainer.spec import load_spec

GPU = {"accelerator": "A100", "gpus_per_worker": 1, "cpus_per_worker": 1}


def spec(framework, **resources):
    return load_spec({"name": "j", "framework": framework, "entrypoint": "train.py:train",
                      "resources": resources or {"accelerator": "cpu"}})[0]


@pytest.fixture
def project(tmp_path):
    (tmp_path / "train.py").write_text("def train(ctx):\n    pass\n")
    return tmp_path


@pytest.mark.parametrize("framework", ["torch", "tensorflow", "mxnet"])
def test_gpu_jobs_pass_for_every_runtime_with_a_gpu_build(framework, project):
    """The runtimes' locks declare gpu variants (images install tensorflow[and-cuda], mxnet-cu117,
    torch's CUDA build): GPU TensorFlow and MXNet jobs are no longer refused."""
    assert "gpu" in lock_module.lock_variants(framework)
    check_spec(spec(framework, **GPU), project)


def test_a_runtime_without_a_gpu_variant_refuses_gpu_jobs_only(project, tmp_path, monkeypatch):
    cpu_only = tmp_path / "requirements.lock"
    cpu_only.write_text("tensorflow_cpu==2.21.0\nray==2.60.0\n")
    monkeypatch.setattr(lock_module, "lock_path", lambda name: cpu_only)
    with pytest.raises(PreflightError) as err:
        check_spec(spec("tensorflow", **GPU), project)
    assert str(err.value) == ("tensorflow runner: gpus_per_worker=1: the tensorflow runtime has no GPU build "
                              "(images/tensorflow/requirements.lock declares no gpu variant); use gpus_per_worker: 0")
    check_spec(spec("tensorflow"), project)     # a CPU job on the same runtime is fine
