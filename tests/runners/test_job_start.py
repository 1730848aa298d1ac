"""What a job's start costs that is ours (issue 28): the driver connects to Ray before it imports
MLflow, takes the data digest from its environment instead of reading the run, and a job on the
local cluster starts no Ray Train PreemptionWatcher (nothing drains the local cluster's nodes).
What a real job shows of these is checked on the README's main job, which the default tier runs
anyway: tests/runners/test_torch_jobs.py::test_a_local_job_connects_before_mlflow_and_starts_no_idle_actors."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from trainer.errors import JobError
from trainer.protocol import ENV_DATA_DIGEST
from trainer.runners.base import LOCAL_RAY_TRAIN_ENV
from trainer.runners.job import pinned_data
from trainer.spec import JobSpec

REPO = Path(__file__).resolve().parents[2]


def test_the_local_switch_is_ray_trains_own_and_reaches_the_controller():
    """LOCAL_RAY_TRAIN_ENV works only as long as Ray Train reads that variable in its controller
    and propagates it; a Ray upgrade that renames it must fail here, not silently bring the
    watcher back."""
    from ray.train.v2._internal.constants import ENABLE_PREEMPTION_WATCHER_ENV_VAR, ENV_VARS_TO_PROPAGATE

    assert LOCAL_RAY_TRAIN_ENV == {ENABLE_PREEMPTION_WATCHER_ENV_VAR: "0"}
    assert set(LOCAL_RAY_TRAIN_ENV) <= ENV_VARS_TO_PROPAGATE


def _data_spec(path: Path) -> JobSpec:
    return JobSpec.model_validate({"name": "pin", "framework": "torch", "entrypoint": "train.py:train",
                                   "data": {"path": str(path)}})


def test_the_driver_checks_the_data_against_the_digest_it_was_given_without_reading_the_run(tmp_path):
    """The digest in the driver's environment replaces reading the run before connecting: a run
    id that no store holds is never looked up (the lookup would raise), and changed data is still
    refused with the recorded digest."""
    from trainer.data import fingerprint

    data = tmp_path / "data"
    data.mkdir()
    (data / "a.csv").write_text("1,2\n")
    project = tmp_path / "project"
    project.mkdir()
    spec = _data_spec(data)
    digest = fingerprint(str(data), project).digest
    nowhere = f"sqlite:///{tmp_path}/empty.db"
    assert pinned_data(spec, project, "0" * 32, nowhere, digest) == str(data.resolve())
    (data / "a.csv").write_text("1,3\n")
    with pytest.raises(JobError, match="changed since the job was submitted"):
        pinned_data(spec, project, "0" * 32, nowhere, digest)


def test_the_digest_travels_with_the_run_it_was_recorded_in():
    """The driver trusts the digest in its environment as the run's: it is sent only with the run
    id (a driver that opens its own run computes and records the digest itself)."""
    from trainer.protocol import job_runtime_env

    env = job_runtime_env("{}", job_id="j", tracking_uri="sqlite:///x.db", run_id="r", data_digest="ab" * 32)
    assert env["env_vars"][ENV_DATA_DIGEST] == "ab" * 32
    alone = job_runtime_env("{}", job_id="j", tracking_uri="sqlite:///x.db", data_digest="ab" * 32)
    assert ENV_DATA_DIGEST not in alone["env_vars"]


def test_while_the_preload_thread_imports_mlflow_no_other_thread_imports_any_of_it(tmp_path):
    """Two threads importing MLflow at once can hand one a half-initialised module (it broke a
    sweep driver): while the preload thread is inside `import mlflow` (held there for a second),
    the other thread's first use of MLflow through trainer.tracking (here the process-wide store,
    which imports an MLflow submodule directly) waits for it instead of importing MLflow's
    submodules itself. In a fresh interpreter."""
    script = textwrap.dedent(f"""
        import json, sys, threading, time
        seen = []

        class Spy:
            def find_spec(self, name, path=None, target=None):
                if name == "mlflow" or name.startswith("mlflow."):
                    from trainer.tracking import preload
                    me = threading.current_thread().name
                    seen.append([me, name, preload._imported.is_set()])
                    if name == "mlflow.version" and me == preload.THREAD_NAME:
                        time.sleep(1.0)      # inside `import mlflow`: the window a race needs
                return None

        sys.meta_path.insert(0, Spy())
        from trainer.tracking import preload, runs

        preload.start()
        with runs.global_store("sqlite:///{tmp_path}/mlflow.db"):
            pass
        print(json.dumps(seen))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    from trainer.tracking.preload import THREAD_NAME

    assert seen[0][:2] == [THREAD_NAME, "mlflow"]
    early = [(who, name) for who, name, imported in seen if who != THREAD_NAME and not imported]
    assert early == [], early
