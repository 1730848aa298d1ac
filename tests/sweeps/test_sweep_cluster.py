"""Sweeps on the session's real local Ray cluster, recorded in a real MLflow store: the digits
example's sweep end to end (ASHA stops trials, parent + one child run per trial, the best trial
converted and registered as a job's model is), placement refused before anything runs, a metric
the function never reports, and cancel."""
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

import trainer
from trainer.tracking.runs import client
from trainer.tracking.sweeps import trial_runs

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SWEEP = REPO / "examples" / "digits" / "sweep.yaml"
TRAINER = str(Path(sys.executable).parent / "trainer")


@pytest.mark.slow
def test_digits_sweep_end_to_end(cluster, oci_registry):
    """8 trials, 2 at a time, ASHA: some stopped early, every trial a child run, the best one's
    model converted (parity) and registered, from `trainer submit SPEC --wait` as a user runs it."""
    started = time.monotonic()
    proc = subprocess.run([TRAINER, "submit", str(SWEEP), "--set", "config.epochs=3", "--wait", "--output", "json"],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    print(f"sweep of 8 trials took {time.monotonic() - started:.0f} s")
    assert summary["status"] == "SUCCEEDED"
    job = trainer.Job.get(summary["job_id"], cluster.dashboard_url)
    mlc = client(job.tracking_uri)
    parent = mlc.get_run(job.run_id)
    assert parent.info.status == "FINISHED"
    assert json.loads(parent.data.params["sweep.space.lr"]) == {"loguniform": [0.0001, 0.1]}
    assert json.loads(parent.data.params["sweep.scheduler"]) == {"asha": {"grace_period": 1, "reduction_factor": 2}}

    trials = trial_runs(job.tracking_uri, job.run_id)
    assert [t["trial"] for t in trials] == list(range(8))
    outcomes = [t["outcome"] for t in trials]
    assert set(outcomes) <= {"completed", "stopped early"}, trials
    assert outcomes.count("stopped early") >= 1, trials
    for t in trials:
        assert t["status"] == "FINISHED" and t["reason"]
        assert {"lr", "width", "batch_size", "epochs"} <= set(t["params"]) and "accuracy" in t["metrics"]
        assert 16 <= int(t["params"]["batch_size"]) <= 64 and int(t["params"]["width"]) in (2, 4, 8)
    stopped = [t for t in trials if t["outcome"] == "stopped early"]
    assert all("ASHA stopped it" in t["reason"] for t in stopped)
    assert all("test_accuracy" not in t["metrics"] for t in stopped)       # stopped before the end

    # The best completed trial: named on the parent, its metric the best of the completed ones.
    completed = [t for t in trials if t["outcome"] == "completed"]
    best = max(completed, key=lambda t: t["metrics"]["accuracy"])
    assert parent.data.tags["trainer.sweep.best_run_id"] == best["run_id"]
    assert parent.data.metrics["best_accuracy"] == pytest.approx(best["metrics"]["accuracy"])
    assert summary["sweep"]["best"]["run_id"] == best["run_id"]
    assert summary["sweep"]["outcomes"] == {o: outcomes.count(o) for o in set(outcomes)}
    assert {a.path for a in mlc.list_artifacts(job.run_id, "sweep")} == {"sweep/trials.png", "sweep/trials.json"}

    # Converted and registered exactly as a job's model: in the best trial's own run.
    assert summary["conversion"]["status"] == "PASSED"
    assert [t["target"] for t in summary["conversion"]["targets"]] == ["onnx"]
    assert any(a.path == "conversion/report.json" for a in mlc.list_artifacts(best["run_id"], "conversion"))
    versions = mlc.search_model_versions("name='digits-sweep'")
    assert [v.run_id for v in versions] == [best["run_id"]]
    assert summary["registered"]["model"] == "digits-sweep" and summary["registered"]["reference"]


def test_preflight_refuses_a_sweep_whose_trial_cannot_be_placed(cluster):
    """One trial is one job's worker group: a trial no node can hold is refused before submit."""
    started = time.monotonic()
    proc = subprocess.run([TRAINER, "submit", str(SWEEP), "--set", "resources.accelerator=H100"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert "no node is labelled ray.io/accelerator-type=H100" in proc.stderr
    assert time.monotonic() - started < 10
    with pytest.raises(trainer.TrainerError, match="fit only"):
        trainer.submit(SWEEP, set=["resources.accelerator=T4", "workers=2"])


def test_a_metric_the_function_never_reports_fails_the_sweep(cluster):
    job = trainer.submit(SWEEP, set=["sweep.metric=val_acc", "sweep.trials=2", "sweep.concurrency=1",
                                     "config.epochs=3", "convert=null", "register=null"])
    state = job.wait(timeout=600)
    assert state.value == "FAILED"
    failure = job.failure()
    assert "sweep.metric 'val_acc' is not among the metrics the function reports" in failure["summary"]
    assert "accuracy" in failure["summary"] and "loss" in failure["summary"]
    assert client(job.tracking_uri).get_run(job.run_id).info.status == "FAILED"


@pytest.mark.slow
def test_cancel_ends_every_trial_run_killed(cluster):
    job = trainer.submit(SWEEP, set=["config.epochs=500", "sweep.trials=2", "sweep.concurrency=2",
                                     "sweep.scheduler=none", "convert=null", "register=null"])
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:       # until both trials train (each has reported a value)
        trials = trial_runs(job.tracking_uri, job.run_id)
        if len(trials) == 2 and all(t["metrics"] for t in trials):
            break
        time.sleep(1)
    else:
        pytest.fail(f"the trials never started: {job.logs()[-2000:]}")
    assert job.cancel().value == "CANCELLED"
    mlc = client(job.tracking_uri)
    assert mlc.get_run(job.run_id).info.status == "KILLED"
    trials = trial_runs(job.tracking_uri, job.run_id)
    assert [(t["status"], t["outcome"]) for t in trials] == [("KILLED", "cancelled")] * 2


@pytest.mark.slow
def test_a_killed_trial_worker_resumes_and_no_trial_is_lost(cluster):
    """SIGKILL a trial's training worker mid-sweep: Ray Train restarts that trial's worker group
    from its checkpoint (failure.max_failures, as for a job); every trial completes, and the killed
    trial's run holds every epoch exactly once."""
    import os
    import signal

    from ray.util.state import list_actors

    epochs = 40
    job = trainer.submit(SWEEP, set=[f"config.epochs={epochs}", "sweep.trials=2", "sweep.concurrency=2",
                                     "sweep.scheduler=none", "failure.max_failures=1", "convert=null",
                                     "register=null"])

    def workers():
        ray_job_id = job._jobs().info(job.id).job_id      # set once the driver runs
        return [a for a in list_actors(address=cluster.dashboard_url, filters=[("class_name", "=", "RayTrainWorker")],
                                       detail=True, limit=1000, raise_on_missing_output=False)
                if a.job_id == ray_job_id]

    def losses(run_id):
        return [m.step for m in client(job.tracking_uri).get_metric_history(run_id, "loss")]

    deadline = time.monotonic() + 400
    victim = None
    while time.monotonic() < deadline and victim is None:
        assert not job.status().is_terminal, job.logs()[-3000:]
        victim = next((t for t in trial_runs(job.tracking_uri, job.run_id) if losses(t["run_id"])), None)
        time.sleep(0.5)
    assert victim is not None, job.logs()[-3000:]
    alive = [w for w in workers() if w.state == "ALIVE"]
    assert alive
    os.kill(alive[0].pid, signal.SIGKILL)

    assert job.wait(timeout=900).value == "SUCCEEDED", job.logs()[-3000:]
    trials = trial_runs(job.tracking_uri, job.run_id)
    assert [t["outcome"] for t in trials] == ["completed", "completed"], trials
    assert len(workers()) >= 3          # a new worker group for the killed trial
    for t in trials:
        assert sorted(losses(t["run_id"])) == list(range(epochs)), t
