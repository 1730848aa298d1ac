"""`trainer status` and `trainer logs` on a sweep, without a cluster: the trials' states as a real
MLflow store holds them (a running trial, a completed one, the epoch each reached), the table at
80 columns, and a sweep's log sorted by trial from its workers' start events."""
import json

import pytest

from trainer.api import sweep_log, sweep_status
from trainer.cli._output import Printer
from trainer.cli.jobs import render_trials
from trainer.errors import UsageError
from trainer.protocol import event_line, sweep_line
from trainer.tracking import sweeps
from trainer.tracking.sweeps import split_log

SWEEP = {"metric": "accuracy", "mode": "max", "trials": 3, "concurrency": 2, "seed": 0, "scheduler": "none",
         "space": {"lr": {"loguniform": [1e-4, 0.1]}, "width": {"choice": [2, 4]}}}


def start(pid, trial, ip=None):
    where = f"pid={pid}" + (f", ip={ip}" if ip else "")
    return f"(RayTrainWorker {where}) " + event_line("worker_start", 1.0, rank=0, pid=pid,
                                                     train_run=f"sw-20261206-0000-ab12-3f2a1_{trial:05d}")


def test_a_sweeps_log_is_sorted_by_trial_from_its_workers_start_events():
    log = "\n".join([
        "sweep sw: 3 trials, 2 at a time",
        "(RayTrainWorker pid=11) loading data",              # before its start event: waits for it
        start(11, 0),
        start(12, 1, ip="10.0.0.2"),
        "(RayTrainWorker pid=11) epoch 0 trial zero",
        "(RayTrainWorker pid=12, ip=10.0.0.2) epoch 0 trial one",
        "(RayTrainWorker pid=12, ip=10.0.0.3) another host's pid 12: not trial 1's",
        "(TrainController pid=30) Attempting to start training worker group",
        sweep_line({"total": 3, "running": 2, "done": 0, "stopped": 0, "failed": 0}),
        start(13, 0),                                         # trial 0 restarted: a new worker group
        "(RayTrainWorker pid=13) epoch 1 trial zero again",
        "best: trial 0",
    ])
    parts = split_log(log)
    assert [line.split(") ", 1)[-1] for line in parts[0] if "TRAINER_" not in line] == [
        "loading data", "epoch 0 trial zero", "epoch 1 trial zero again"]
    assert [line for line in parts[1] if "TRAINER_" not in line] == [
        "(RayTrainWorker pid=12, ip=10.0.0.2) epoch 0 trial one"]
    assert parts[None][0] == "sweep sw: 3 trials, 2 at a time" and "best: trial 0" in parts[None]
    # A worker that never said its trial: the driver's part, last (its lines waited for an event).
    assert parts[None][-1] == "(RayTrainWorker pid=12, ip=10.0.0.3) another host's pid 12: not trial 1's"
    assert not any("trial zero" in line or "trial one" in line for line in parts[None])

    assert "epoch 0 trial one" in sweep_log(log, 1, "sw") and "trial zero" not in sweep_log(log, 1, "sw")
    assert "trial one" not in sweep_log(log, None, "sw")
    with pytest.raises(UsageError, match=r"trial 2 of sweep sw has no lines .* trials with lines: 0, 1"):
        sweep_log(log, 2, "sw")


@pytest.fixture
def store(tmp_path):
    from trainer.tracking.runs import client

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlc = client(uri)
    parent = mlc.create_run(mlc.create_experiment("sw")).info.run_id
    sweeps.record_sweep(uri, parent, SWEEP)
    return uri, parent


def test_status_shows_each_trial_running_or_ended_with_the_epoch_it_reached(store, capsys):
    from mlflow.entities import Metric

    from trainer.tracking.runs import client

    uri, parent = store
    mlc = client(uri)
    done = sweeps.start_trial_run(uri, parent, "sw", "3f2a1_00000", {"lr": 0.0123456, "width": 4, "epochs": 4})
    running = sweeps.start_trial_run(uri, parent, "sw", "3f2a1_00001", {"lr": 0.05, "width": 2, "epochs": 4})
    mlc.log_batch(done, metrics=[Metric("accuracy", 0.5 + s / 10, 0, s) for s in range(4)])
    mlc.log_batch(running, metrics=[Metric("accuracy", 0.4, 0, 0), Metric("accuracy", 0.45, 0, 1)])
    sweeps.end_trial(uri, done, sweeps.COMPLETED, "ran to its end")

    status = sweep_status(parent, tracking_uri=uri)
    assert status["total"] == 3 and status["metric"] == "accuracy"
    assert [(t["trial"], t["state"], t["value"], t["epoch"]) for t in status["trials"]] == [
        (0, "completed", pytest.approx(0.8), 3), (1, "running", pytest.approx(0.45), 1)]
    assert status["trials"][0]["params"] == {"lr": 0.0123456, "width": 4}     # the sampled ones only
    json.dumps(status)                                                      # --output json

    render_trials(Printer("table"), status, "sw-20261206-0000-ab12")
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 80, out
    assert "completed" in out and "running" in out and "lr=0.0123 width=4" in out
    assert "1 of 3 trials not started yet" in out

    run = mlc.create_run(mlc.get_run(parent).info.experiment_id).info.run_id      # a job's run
    assert sweep_status(run, tracking_uri=uri) is None


def test_a_trial_run_reopened_after_its_outcome_was_recorded_is_closed_again(store):
    """A worker of a trial ASHA stopped may still be saving its model (MLflow's `start_run`
    leaves the run RUNNING) after the driver closed the run: the driver's end settles it."""
    from trainer.tracking.runs import client

    uri, parent = store
    stopped = sweeps.start_trial_run(uri, parent, "sw", "3f2a1_00000", {"lr": 0.01})
    running = sweeps.start_trial_run(uri, parent, "sw", "3f2a1_00001", {"lr": 0.02})
    sweeps.end_trial(uri, stopped, sweeps.STOPPED, "ASHA stopped it")
    client(uri).update_run(stopped, status="RUNNING")          # what log_model's start_run leaves
    assert sweeps.settle_trials(uri, parent) == 1
    assert client(uri).get_run(stopped).info.status == "FINISHED"
    assert client(uri).get_run(running).info.status == "RUNNING"     # no outcome yet: not this one's to close


def test_a_sweeps_driver_runs_without_ray_folding_its_trials_alike_lines():
    from trainer.protocol import job_runtime_env

    sweep = job_runtime_env(json.dumps({"name": "s", "sweep": SWEEP}), job_id="s", tracking_uri="file:/x")
    job = job_runtime_env(json.dumps({"name": "j", "sweep": None}), job_id="j", tracking_uri="file:/x")
    assert sweep["env_vars"]["RAY_DEDUP_LOGS"] == "0" and "RAY_DEDUP_LOGS" not in job["env_vars"]


def test_a_trial_whose_train_run_returned_mid_training_is_never_recorded_completed(store):
    """A cancel: Tune stops the sweep's trials, and a trial's Train run can then return without
    an error mid-training (the cancel test saw a 500-epoch trial recorded FINISHED/completed).
    Only the function's own return (rank 0's mark) makes a trial completed; the trial's close
    and the driver's cancel close can come in either order and still leave it KILLED/cancelled."""
    import time

    from trainer.errors import JobError
    from trainer.runners.sweep import end_after_fit
    from trainer.tracking.runs import client

    uri, parent = store
    driver_first = sweeps.start_trial_run(uri, parent, "sw", "3f2a1_00000", {"lr": 0.01})
    trial_first = sweeps.start_trial_run(uri, parent, "sw", "3f2a1_00001", {"lr": 0.02})
    finished = sweeps.start_trial_run(uri, parent, "sw", "3f2a1_00002", {"lr": 0.03})
    sweeps.mark_function_returned(uri, finished)        # its function returned before the cancel
    end_after_fit(uri, finished, "3f2a1_00002")
    cancelled_at = time.time()

    with pytest.raises(JobError, match="trial 1 ended before its function returned"):
        end_after_fit(uri, trial_first, "3f2a1_00001")
    assert client(uri).get_run(trial_first).info.status == "RUNNING"     # left to the driver
    sweeps.settle_trials(uri, parent)
    assert sweeps.close_open_trials(uri, parent, "sweep sw ended KILLED", cancelled_at=cancelled_at) == 2
    with pytest.raises(JobError, match="trial 0 ended before its function returned"):
        end_after_fit(uri, driver_first, "3f2a1_00000")                  # after the driver's close

    trials = sweeps.trial_runs(uri, parent)
    assert [(t["trial"], t["status"], t["outcome"]) for t in trials] == [
        (0, "KILLED", "cancelled"), (1, "KILLED", "cancelled"), (2, "FINISHED", "completed")]
