"""The client's repair of a job's MLflow run against a real SQLite store: a cancel is
authoritative, whatever the driver wrote on its way out (Job._close_run); and on a real cluster, no
run is left RUNNING by a submission that did not complete (Ctrl-C) or a driver that died
(trainer.api.reconcile_runs, `trainer list`)."""
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainer.api import Job
from trainer.state import JobState
from trainer.tracking.runs import client, run_status

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    return uri, client(uri).create_experiment("t", artifact_location=(folder / "art").as_uri())


@pytest.mark.parametrize("driver_wrote, ray_state, expected", [
    ("FAILED", JobState.CANCELLED, "KILLED"),     # the driver's finally ran first: the cancel wins
    ("RUNNING", JobState.CANCELLED, "KILLED"),    # the driver was SIGKILLed before its finally
    ("KILLED", JobState.CANCELLED, "KILLED"),
    ("RUNNING", JobState.FAILED, "FAILED"),       # a driver killed some other way
    ("FAILED", JobState.FAILED, "FAILED"),
    ("FINISHED", JobState.SUCCEEDED, "FINISHED"),
])
def test_close_run(store, driver_wrote, ray_state, expected):
    uri, experiment = store
    mlc = client(uri)
    run_id = mlc.create_run(experiment).info.run_id
    if driver_wrote != "RUNNING":
        mlc.set_terminated(run_id, status=driver_wrote)
    Job(id="j", address="http://127.0.0.1:1", run_id=run_id, tracking_uri=uri)._close_run(ray_state)
    assert run_status(uri, run_id) == expected


# ---------------------------------------------------------------- runs left RUNNING (real cluster)

def _tiny_project(root):
    root.mkdir(exist_ok=True)
    (root / "train.py").write_text("def train(ctx):\n    ctx.report({'epoch': 0, 'loss': 1.0})\n")
    (root / "job.yaml").write_text("name: repair\nframework: torch\nentrypoint: train.py:train\n"
                                   "resources: {accelerator: cpu, cpus_per_worker: 1}\n")
    return root / "job.yaml"


@pytest.mark.integration
def test_ctrl_c_after_the_run_exists_ends_it_failed(cluster, tmp_path):
    """Ctrl-C at the worst moment: the run is open, the Ray job not submitted yet."""
    import re
    import signal

    import trainer
    from trainer.scheduling.ray_jobs import RayJobs
    from trainer.tracking.runs import TAG_CLOSED_BY_CLIENT, tracking_uri

    said = []

    def progress(line):
        said.append(line)
        if line.startswith("submitting "):
            signal.raise_signal(signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        trainer.submit(_tiny_project(tmp_path), progress=progress)
    job_id, run_id = re.match(r"submitting (\S+) \(MLflow run (\w+);", said[-1]).groups()
    run = client(tracking_uri()).get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags[TAG_CLOSED_BY_CLIENT] == f"the submission of {job_id} did not complete: KeyboardInterrupt: " \
                                                  f"interrupted"
    assert RayJobs(cluster.dashboard_url).find(job_id) is None


@pytest.mark.integration
def test_reconcile_closes_runs_whose_ray_job_never_existed_or_ended(cluster, tmp_path):
    """A client killed between opening the run and submitting (no Ray job ever), and a driver
    killed before closing its run (Ray job over, run still RUNNING): `reconcile_runs` and
    `trainer list` close both, saying why; a run whose submission may still be uploading is left."""
    import trainer
    from trainer.api import reconcile_runs
    from trainer.spec import load_spec
    from trainer.tracking.runs import TAG_CLOSED_BY_CLIENT, start_run, tracking_uri

    uri = tracking_uri()
    spec, _ = load_spec(_tiny_project(tmp_path))
    ghost = start_run(spec, "repair-never-submitted", uri, cluster.dashboard_url, None)
    assert ghost not in {c["run_id"] for c in reconcile_runs()}      # young: it may still be uploading
    assert run_status(uri, ghost) == "RUNNING"
    closed = {c["run_id"]: c for c in reconcile_runs(grace_s=0)}
    assert closed[ghost]["status"] == "FAILED" and run_status(uri, ghost) == "FAILED"
    assert client(uri).get_run(ghost).data.tags[TAG_CLOSED_BY_CLIENT].startswith(
        "no Ray job repair-never-submitted on http://127.0.0.1:")

    job = trainer.submit(tmp_path / "job.yaml")
    while not job._jobs().state(job.id).is_terminal:    # Ray's state only: no client repair on this path
        time.sleep(1)
    assert job._jobs().state(job.id).value == "SUCCEEDED", job.logs()[-3000:]
    client(uri).update_run(job.run_id, status="RUNNING")   # as if the driver died before closing it
    listed = subprocess.run([sys.executable, "-m", "trainer.cli", "list", "--output", "json"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert {"job_id": job.id, "status": "SUCCEEDED"}.items() <= \
        next(j for j in json.loads(listed.stdout) if j["job_id"] == job.id).items()
    assert run_status(uri, job.run_id) == "FINISHED"
    assert client(uri).get_run(job.run_id).data.tags[TAG_CLOSED_BY_CLIENT] == \
        f"Ray job {job.id} ended SUCCEEDED with its run open"
