"""PyTorch jobs on a real multi-node local Ray cluster, recorded in a real MLflow store."""
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ray.util.state import list_actors

import trainer
from _jobs import kill_a_worker_and_check_resume, steps, submit_example_and_check_run, train_workers
from trainer.promotion.registration import run_data_digest
from trainer.protocol import ENV_DATA_DIGEST, parse_event, parse_progress, timing_from_logs
from trainer.tracking.runs import client, global_store

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "digits" / "torch.yaml"
TRAINER = str(Path(sys.executable).parent / "trainer")


@pytest.fixture(scope="module")
def digits(cluster):
    """The README's main command, once: its job also serves the checks that hold for any local job."""
    return submit_example_and_check_run(cluster, EXAMPLE, "torch", workers=2)


def test_digits_end_to_end(digits):
    """The README's main command: 2 DDP workers, >= 0.95, everything recorded in MLflow."""
    job, run = digits
    # The final model is logged and loads; calibration samples are there for conversion.
    import mlflow.pytorch
    import torch

    with global_store(job.tracking_uri):     # runs:/ model URIs resolve through the global store
        model = mlflow.pytorch.load_model(f"runs:/{job.run_id}/model")
    assert model(torch.zeros(3, 1, 8, 8)).shape == (3, 10)
    artifacts = {a.path for a in client(job.tracking_uri).list_artifacts(job.run_id, "calibration")}
    assert artifacts == {"calibration/inputs.npy", "calibration/labels.npy"}
    # The CLI's JSON views agree.
    listed = json.loads(subprocess.run([TRAINER, "list", "--output", "json"], capture_output=True, text=True,
                                       timeout=60, check=True).stdout)
    assert {"job_id": job.id, "status": "SUCCEEDED", "run_id": job.run_id}.items() <= \
        next(j for j in listed if j["job_id"] == job.id).items()
    status = json.loads(subprocess.run([TRAINER, "cluster", "status", "--output", "json"], capture_output=True,
                                       text=True, timeout=60, check=True).stdout)
    labels = sorted(n["labels"].get("ray.io/accelerator-type", "head") for n in status["nodes"])
    assert labels == ["A100", "T4", "cpu", "head"]
    head = next(n for n in status["nodes"] if n["is_head"])
    assert head["cpus"] == 0 and head["gpus"] == 0


def test_a_local_job_connects_before_mlflow_and_starts_no_idle_actors(digits, cluster):
    """What a job's start costs that is ours (issue 28; tests/runners/test_job_start.py): the
    driver connects to Ray before MLflow is imported and checks the data against the digest the
    run records, a job on the local cluster starts no Ray Train PreemptionWatcher, and no job
    starts Ray Train's DatasetManager (trainer's jobs take no Ray datasets)."""
    job, run = digits
    info = job._jobs().info(job.id)
    # The digest the driver checked the data against is the one the run records.
    recorded = run_data_digest(client(job.tracking_uri), run)
    assert recorded and info.runtime_env["env_vars"][ENV_DATA_DIGEST] == recorded
    # MLflow was ready only after the driver had connected to Ray: it was not on the way there.
    log = job.logs()
    timing = timing_from_logs(log)
    assert timing["entrypoint"] < timing["connected"] < timing["mlflow_imported"], timing
    # Ray Train's actors of this job: its workers and their helpers, no PreemptionWatcher and no
    # DatasetManager (trainer.runners.base.without_dataset_manager).
    mine = [a for a in list_actors(address=cluster.dashboard_url, detail=True, limit=10000,
                                   raise_on_missing_output=False) if a.job_id == info.job_id]
    classes = {a.class_name for a in mine}
    assert "RayTrainWorker" in classes and "TrainController" in classes, classes
    assert "SynchronizationActor" in classes, classes
    assert "PreemptionWatcher" not in classes and "DatasetManager" not in classes, classes
    # Its last epoch's line and its workers' end reached the log before the driver ended, though
    # it ended right after fit() (trainer.runners.forwarded): Ray forwards worker lines
    # asynchronously.
    last = int(run.data.params["epochs"]) - 1
    assert last in {e["step"] for e in map(parse_progress, log.splitlines()) if e}, log[-3000:]
    assert any(e["event"] == "worker_end" for e in map(parse_event, log.splitlines()) if e), log[-3000:]
    assert "had not reached this log" not in log and timing["lines_in"] <= timing["closed"], log[-3000:]


@pytest.mark.extended
def test_placement_follows_the_accelerator_label(cluster):
    """Extended tier (issue 28): tests/runners/test_resume_faults.py::
    test_placement_follows_the_accelerator_label checks the same on a job the default tier runs
    anyway (the torch-epoch drill, `resources.accelerator=A100`: every worker on the A100 node)."""
    job = trainer.submit(EXAMPLE, set=["resources.accelerator=A100", "workers=1", "config.epochs=2", "convert=null"])
    assert job.wait(timeout=600).value == "SUCCEEDED", job.logs()[-3000:]
    nodes = {n["accelerator"]: n["node_id"] for n in trainer.cluster_status()["nodes"] if not n["is_head"]}
    workers = train_workers(cluster.dashboard_url, job)
    assert workers and {w.node_id for w in workers} == {nodes["A100"]}


def test_unplaceable_accelerator_fails_fast_with_inventory(cluster):
    started = time.monotonic()
    proc = subprocess.run([TRAINER, "submit", str(EXAMPLE), "--set", "resources.accelerator=H100"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - started
    assert proc.returncode == 3, proc.stderr
    assert elapsed < 15, elapsed      # refused by preflight: no wait for a placement (minutes)
    message = proc.stderr.strip()
    assert "no node is labelled ray.io/accelerator-type=H100" in message
    for node in ("A100(cpus=1", "T4(cpus=1", "cpu(cpus=2", "head(cpus=0"):
        assert node in message
    assert not any(j["status"] == "PENDING" for j in trainer.list_jobs())


def test_too_many_workers_for_the_labelled_nodes(cluster):
    with pytest.raises(trainer.TrainerError, match="the 1 T4 node\\(s\\) fit only 1 worker"):
        trainer.submit(EXAMPLE, set=["resources.accelerator=T4", "workers=2"])


@pytest.mark.extended
def test_killed_worker_resumes_from_last_checkpoint(cluster):
    """A worker of the digits example SIGKILLed once epoch 2 is in MLflow: the job succeeds from a
    new worker group resumed from a checkpoint, every epoch once, >= 0.95. Extended tier (issue
    28): the default tier proves the same on torch, at every kill point, with
    tests/runners/test_resume_faults.py::test_every_epoch_once_after_kills_at_random_points
    (both torch drills: success, a new group per kill, every epoch once on its true step) and
    test_killed_runs_log_the_same_values (the restored model and optimizer give the very values of
    a run killed elsewhere) and test_corrupt_checkpoint_falls_back_to_the_previous (the job log
    names the checkpoint the new group resumed from)."""
    kill_a_worker_and_check_resume(cluster, EXAMPLE, epochs=25, workers=2)



@pytest.fixture(scope="module")
def jobs_to_cancel(cluster):
    """Two jobs that train until cancelled, submitted at once (each job's start is mostly waiting on
    Ray's processes: two starting together cost little more than one): the example's 2 workers on
    the cpu node for `trainer cancel`, one worker on the A100 node for Ray's own stop. 100000
    epochs outlast any wait here (an epoch takes more than 3 ms)."""
    both = {"cli": trainer.submit(EXAMPLE, set=["config.epochs=100000", "convert=null"]),
            "ray": trainer.submit(EXAMPLE, set=["config.epochs=100000", "convert=null", "workers=1",
                                                "resources.accelerator=A100"])}
    yield both
    for job in both.values():
        if not job.status().is_terminal:
            job.cancel()


def _training(job) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not steps(job, "loss"):
        time.sleep(1)
    assert steps(job, "loss"), job.logs()[-3000:]


def test_cancel_stops_the_job_and_frees_the_cluster(cluster, jobs_to_cancel):
    job = jobs_to_cancel["cli"]
    _training(job)
    proc = subprocess.run([TRAINER, "cancel", job.id, "--output", "json"], capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["status"] == "CANCELLED", job.logs()[-3000:]
    assert job.status().value == "CANCELLED"
    assert client(job.tracking_uri).get_run(job.run_id).info.status == "KILLED"
    # The driver ended once its run was closed, not at the supervisor's SIGKILL STOP_WAIT_S later.
    from trainer.protocol import STOP_WAIT_S, timing_from_logs
    from trainer.scheduling.ray_jobs import RayJobs

    closed = timing_from_logs(job.logs())["closed"]
    ended = RayJobs(cluster.dashboard_url).info(job.id).end_time / 1000
    assert ended - closed < float(STOP_WAIT_S) * 2 / 3, f"the driver ended {ended - closed:.1f} s after closing its run"
    # The workers are gone and their CPUs come back: the cluster stays usable.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        cpu = next(n for n in trainer.cluster_status()["nodes"] if n["accelerator"] == "cpu")
        alive = [w for w in train_workers(cluster.dashboard_url, job) if w.state == "ALIVE"]
        if cpu["cpus_free"] == cpu["cpus"] and not alive:
            break
        time.sleep(2)
    assert cpu["cpus_free"] == cpu["cpus"] and not alive
    status = subprocess.run([TRAINER, "status", job.id], capture_output=True, text=True, timeout=60)
    assert status.stdout.strip() == "CANCELLED"


def test_a_cancelled_driver_never_ends_its_run_failed(cluster, jobs_to_cancel):
    """Ray's stop_job SIGTERMs the driver, whose `finally` closes the run: it must write KILLED
    (RUNNING only if it was SIGKILLed first), and the client's repair ends it KILLED either way."""
    from trainer.scheduling.ray_jobs import RayJobs
    from trainer.tracking.runs import run_status

    job = jobs_to_cancel["ray"]
    _training(job)
    jobs = RayJobs(cluster.dashboard_url)
    jobs.stop(job.id)
    while not jobs.state(job.id).is_terminal:  # Ray's state only: no client repair on this path
        time.sleep(0.5)
    assert run_status(job.tracking_uri, job.run_id) in ("KILLED", "RUNNING")
    assert job.status().value == "CANCELLED"
    assert run_status(job.tracking_uri, job.run_id) == "KILLED"


def test_run_local_gives_the_same_accuracy_band_without_ray(trainer_home):
    result = trainer.run_local(EXAMPLE)
    assert result.metrics["test_accuracy"] >= 0.95
    run = client(result.tracking_uri).get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["trainer.ray_address"] == "local"
