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
from trainer.protocol import STOP_WAIT_S, parse_event, timing_from_logs
from trainer.tracking.runs import client
from trainer.tracking.sweeps import trial_runs

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SWEEP = REPO / "examples" / "digits" / "sweep.yaml"
TRAINER = str(Path(sys.executable).parent / "trainer")


EPOCHS = 4
# Four trials, two at a time (two worker-group waves; the example's eight take four). The seed is
# chosen so that ASHA's verdict does not hang on which trial reports first: it draws lr 0.064 and
# 0.090 for trials 0 and 1 (accuracy 0.4-0.8 after one epoch) and 2.8e-4 and 2.1e-4 for trials 2
# and 3 (0.089, chance, after every epoch), which start only when trial 0 or 1 has ended: both are
# below their rung's cutoff whatever the order, and the first trial to reach a rung always goes on.
TRIALS, SEED = 4, 317


def cli(*args: str):
    """A trainer command, in this process (the CLI's imports are paid once)."""
    from typer.testing import CliRunner

    from trainer.cli import app

    return CliRunner().invoke(app, list(args))


def worker_starts(log: str) -> list[dict]:
    return [e for e in map(parse_event, log.splitlines()) if e and e.get("event") == "worker_start"]


@pytest.fixture(scope="module")
def unreported_metric(cluster):
    """The sweep of test_a_metric_the_function_never_reports_fails_the_sweep, on the T4 node:
    `sweep` submits it first when that test is selected, so that it runs beside the module's
    sweep (its ~20 s of fixed start overlaps the other's) instead of after it."""
    return trainer.submit(SWEEP, set=["sweep.metric=val_acc", "sweep.trials=1", "sweep.concurrency=1",
                                      "config.epochs=2", "convert=null", "register=null",
                                      "resources.accelerator=T4"])


@pytest.fixture(scope="module")
def sweep(cluster, oci_registry, tmp_path_factory, request):
    """THE sweep of this module: the digits example (TRIALS trials, 2 at a time, ASHA) from `trainer
    submit SPEC --wait` as a user runs it (stdout a pipe: CI), with the first trial's training
    worker SIGKILLed as soon as it says it started, and `trainer status` read while it runs.
    Several tests read what it left (one sweep costs minutes: it is run once)."""
    import os
    import signal

    if any(item.originalname == "test_a_metric_the_function_never_reports_fails_the_sweep"
           for item in request.session.items):
        request.getfixturevalue("unreported_metric")
    started = time.monotonic()
    stderr = tmp_path_factory.mktemp("sweep") / "stderr"
    with open(stderr, "w") as err:
        proc = subprocess.Popen([TRAINER, "submit", str(SWEEP), "--set", f"config.epochs={EPOCHS}",
                                 "--set", f"sweep.trials={TRIALS}", "--set", f"sweep.seed={SEED}", "--wait"],
                                cwd=REPO, stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        first = proc.stdout.readline()
        assert first.startswith("submitted "), first + stderr.read_text()[-3000:]
        job = trainer.Job.get(first.split()[1], cluster.dashboard_url)
        victim = None
        deadline = time.monotonic() + 600
        while victim is None and time.monotonic() < deadline:
            assert not job.status().is_terminal, job.logs()[-3000:]
            victim = next(iter(worker_starts(job.logs())), None)
            if victim is None:
                time.sleep(0.2)
        assert victim is not None, job.logs()[-3000:]
        os.kill(victim["pid"], signal.SIGKILL)
        running = cli("status", job.id, "--output", "json")
        out, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-2000:] + stderr.read_text()[-3000:]
    print(f"sweep of {TRIALS} trials took {time.monotonic() - started:.0f} s")
    return {"job": job, "stdout": first + out, "victim": victim, "running": running}


def test_digits_sweep_end_to_end(sweep, cluster, tmp_path):
    """TRIALS trials, 2 at a time, ASHA: some stopped early, every trial a child run, the best one's
    model converted (parity) and registered."""
    job = sweep["job"]
    summary = job.summary()
    assert summary["status"] == "SUCCEEDED"
    mlc = client(job.tracking_uri)
    parent = mlc.get_run(job.run_id)
    assert parent.info.status == "FINISHED"
    assert json.loads(parent.data.params["sweep.space.lr"]) == {"loguniform": [0.0001, 0.1]}
    assert json.loads(parent.data.params["sweep.scheduler"]) == {"asha": {"grace_period": 1, "reduction_factor": 2}}

    trials = trial_runs(job.tracking_uri, job.run_id)
    assert [t["trial"] for t in trials] == list(range(TRIALS))
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

    # Nothing of it stays reserved on the cluster: its driver releases what its job holds when the
    # trials are over (trainer.runners.sweep), the next job's what was left after that.
    from ray.util.state import list_placement_groups

    from trainer.scheduling.ray_jobs import RayJobs

    ours = RayJobs(job.address).info(job.id).job_id
    held = lambda: [pg.placement_group_id for pg in list_placement_groups(  # noqa: E731
        address=job.address, filters=[("creator_job_id", "=", ours)], limit=1000) if pg.state != "REMOVED"]
    left = held()
    if left:
        # Registered after the driver's release (a controller Tune tore down as it started its
        # worker group; seen in one CI run): the next job's driver releases it first thing.
        print(f"the sweep left {left} reserved; released by the next job: ", end="")
        _, next_job = ray_job(cluster, tmp_path, "orphans")
        print(next_job["orphans"])
        assert set(left) <= set(next_job["orphans"])
        assert held() == []


def test_a_killed_trial_worker_loses_no_trial(sweep):
    """The trial whose worker was SIGKILLed as it started: Ray Train started a new worker group for
    it (failure.max_failures, as for a job) unless ASHA had stopped it by then; no trial failed,
    and every trial's run holds each epoch it reached exactly once."""
    job, victim = sweep["job"], sweep["victim"]
    log = job.logs()
    number = int(victim["train_run"].rsplit("_", 1)[1])
    trials = {t["trial"]: t for t in trial_runs(job.tracking_uri, job.run_id)}
    groups = {e["group"] for e in worker_starts(log) if e["train_run"] == victim["train_run"]}
    assert len(groups) >= 2 or trials[number]["outcome"] == "stopped early", (victim, trials[number])
    mlc = client(job.tracking_uri)
    for t in trials.values():
        assert t["outcome"] in ("completed", "stopped early"), t
        steps = sorted(m.step for m in mlc.get_metric_history(t["run_id"], "loss"))
        assert steps == list(range(EPOCHS if t["outcome"] == "completed" else len(steps))), t


def test_status_and_logs_of_a_sweep_while_it_runs_and_from_its_record(sweep):
    """`trainer status` while the sweep ran (its trials from MLflow) and after (a table at 80
    columns; from the MLflow record when the cluster cannot be reached); `trainer logs --trial N`
    shows trial N's workers' lines only, and plain `logs` the driver's."""
    from trainer.protocol import parse_progress

    job = sweep["job"]
    running = json.loads(sweep["running"].stdout)
    assert running["status"] == "RUNNING" and running["sweep"]["total"] == TRIALS, running
    assert running["sweep"]["trials"] and {t["state"] for t in running["sweep"]["trials"]} <= {
        "running", "completed", "stopped early"}, running

    table = cli("status", job.id)
    assert table.exit_code == 0, table.output
    assert max(len(line) for line in table.stdout.splitlines()) <= 80, table.stdout
    trials = trial_runs(job.tracking_uri, job.run_id)
    away = cli("status", job.id, "--output", "json", "--address", "http://127.0.0.1:9")   # no cluster there
    assert away.exit_code == 0, away.output
    recorded = json.loads(away.stdout)
    assert recorded["source"] == "MLflow record" and recorded["status"] == "SUCCEEDED"
    assert [(t["trial"], t["state"]) for t in recorded["sweep"]["trials"]] == [
        (t["trial"], t["outcome"]) for t in trials]
    mlc = client(job.tracking_uri)
    for t, run in zip(recorded["sweep"]["trials"], trials):
        reached = max(m.step for m in mlc.get_metric_history(run["run_id"], "accuracy"))
        assert t["epoch"] == reached and (t["state"] != "completed" or reached == EPOCHS - 1), (t, reached)
        assert t["value"] == pytest.approx(run["metrics"]["accuracy"])
        assert set(t["params"]) == {"lr", "width", "batch_size"}
        assert t["state"] in table.stdout

    for address in ([], ["--address", "http://127.0.0.1:9"]):
        for t in trials:     # the stopped ones too: killed mid-epoch, their last lines are waited for
            shown = cli("logs", job.id, "--trial", str(t["trial"]), "-v", *address)
            assert shown.exit_code == 0, shown.output
            events = [e for e in map(parse_progress, shown.stdout.splitlines()) if e]
            history = {m.value for m in mlc.get_metric_history(t["run_id"], "accuracy")}
            assert events and {e["metrics"]["accuracy"] for e in events if "accuracy" in e["metrics"]} == history
    driver = cli("logs", job.id)
    assert driver.exit_code == 0 and "best: trial" in driver.stdout
    # Every ended trial's last lines reached the driver before it ended (trainer.runners.forwarded).
    raw = job.logs()
    assert "had not reached this log" not in raw, raw[-3000:]
    timing = timing_from_logs(raw)
    print(f"Tune returned, then {timing['converted'] - timing['fit_done']:.1f} s to the best trial's conversion, "
          f"then {timing['lines_in'] - timing['converted']:.2f} s to the last lines")
    assert "RayTrainWorker" not in driver.stdout and "TRAINER_PROGRESS" not in driver.stdout
    assert cli("logs", job.id, "--trial", "99").exit_code == 2


def test_submit_wait_shows_a_sweeps_progress_one_line_per_change_at_80_columns(sweep):
    lines = sweep["stdout"].splitlines()
    progress = [line for line in lines if line.startswith("trials ")]
    print("\n".join(lines))
    assert progress and all(len(line) <= 80 for line in progress), progress
    assert "\r" not in sweep["stdout"]
    assert all(a != b for a, b in zip(progress, progress[1:]))
    assert progress[-1].startswith(f"trials {TRIALS}/{TRIALS}: 0 running") and "best accuracy" in progress[-1], progress


def test_preflight_refuses_a_sweep_whose_trial_cannot_be_placed(cluster):
    """One trial is one job's worker group: a trial no node can hold is refused before submit."""
    started = time.monotonic()
    proc = subprocess.run([TRAINER, "submit", str(SWEEP), "--set", "resources.accelerator=H100"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert "no node is labelled ray.io/accelerator-type=H100" in proc.stderr
    assert time.monotonic() - started < 20     # refused by preflight, not after a placement wait
    with pytest.raises(trainer.TrainerError, match="fit only"):
        trainer.submit(SWEEP, set=["resources.accelerator=T4", "workers=2"])


def test_a_metric_the_function_never_reports_fails_the_sweep(unreported_metric):
    job = unreported_metric
    state = job.wait(timeout=600)
    assert state.value == "FAILED"
    failure = job.failure()
    assert "sweep.metric 'val_acc' is not among the metrics the function reports" in failure["summary"]
    assert "accuracy" in failure["summary"] and "loss" in failure["summary"]
    assert client(job.tracking_uri).get_run(job.run_id).info.status == "FAILED"


# Trials that cannot end by themselves before the cancel and leave the 2 cores to the rest: an
# epoch is half a second asleep (the digits trials trained ~5 epochs a second, a checkpoint and an
# MLflow write each). When the second trial once never started, that was not the CPU: a placement
# group the module's digits sweep had left reserved held the cpu node's other CPU after that job
# ended (now released by its driver: trainer.runners.sweep.release_placement_groups).
SLOW_TRIAL = """import time


def train(ctx):
    for epoch in range(ctx.config["epochs"]):
        time.sleep(0.5)
        ctx.report({"epoch": epoch, "accuracy": ctx.config["lr"]}, checkpoint={"epoch": epoch})
"""
SLOW_SWEEP = """name: slow-sweep
framework: torch
entrypoint: train.py:train
workers: 1
resources: {accelerator: cpu, cpus_per_worker: 1}
config: {epochs: 100000, lr: 0.1}
checkpoint: {every_epochs: 1, keep: 2}
sweep:
  metric: accuracy
  mode: max
  trials: 2
  concurrency: 2
  seed: 0
  scheduler: none
  space: {lr: {uniform: [0.0, 1.0]}}
"""


@pytest.mark.slow
def test_cancel_ends_every_trial_run_killed(cluster, tmp_path):
    (tmp_path / "train.py").write_text(SLOW_TRIAL)
    (tmp_path / "job.yaml").write_text(SLOW_SWEEP)
    started = time.monotonic()
    job = trainer.submit(tmp_path / "job.yaml")
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:       # until both trials train (each has reported a value)
            trials = trial_runs(job.tracking_uri, job.run_id)
            if len(trials) == 2 and all(t["metrics"] for t in trials):
                break
            time.sleep(1)
        else:
            pytest.fail(f"the trials never started: {job.logs()[-2000:]}")
    except BaseException:
        job.cancel()     # nothing left training on the session's cluster
        raise
    training = time.monotonic()
    assert job.cancel().value == "CANCELLED"
    took = time.monotonic() - training
    mlc = client(job.tracking_uri)
    print(f"both trials trained {training - started:.0f} s after submit; the cancel took {took:.0f} s;"
          f" epochs: {[len(mlc.get_metric_history(t['run_id'], 'accuracy')) for t in trials]}")
    # The driver ends once its runs are closed (~2 s), not at the supervisor's SIGKILL.
    assert took < float(STOP_WAIT_S), job.logs()[-3000:]
    assert mlc.get_run(job.run_id).info.status == "KILLED"
    trials = trial_runs(job.tracking_uri, job.run_id)
    assert [(t["status"], t["outcome"]) for t in trials] == [("KILLED", "cancelled")] * 2, \
        ([(t["trial"], t["reason"], t["metrics"]) for t in trials], job.logs()[-6000:])


HOLDER = """
import json, pathlib, sys, time, ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from trainer.cluster.reservations import release_orphans
from trainer.runners.sweep import release_placement_groups

mode = sys.argv[2]
ray.init()
out = {}
if mode in ("hold", "release", "detached"):
    pg = placement_group([{"memory": 2**20}], lifetime="detached" if mode == "detached" else None)
    ray.get(pg.ready(), timeout=60)
    out["mine"] = pg.id.hex()
if mode == "release":
    out["released"] = release_placement_groups()
if mode in ("release", "orphans"):      # what the next job's driver does first
    out["orphans"] = release_orphans()
for pg_id in sys.argv[3:]:      # the test's own leftovers
    remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(pg_id)))
done = pathlib.Path(sys.argv[1])
done.with_suffix(".part").write_text(json.dumps(out))
done.with_suffix(".part").rename(done)     # whole when the test sees it
while mode == "hold":      # holds its group until the test stops this job
    time.sleep(1)
"""


def ray_job(cluster, folder: Path, mode: str, *args: str) -> tuple[str, dict]:
    """Run HOLDER as a plain Ray job on the session's cluster; its job id and what it wrote."""
    from ray.job_submission import JobSubmissionClient

    from trainer.cluster.auth import headers_for

    jobs = JobSubmissionClient(cluster.dashboard_url, headers=headers_for(cluster.dashboard_url))
    script, out = folder / "holder.py", folder / mode
    script.write_text(HOLDER)
    job_id = jobs.submit_job(entrypoint=" ".join([sys.executable, str(script), str(out), mode, *args]))
    deadline = time.monotonic() + 120
    while not out.exists():
        status = jobs.get_job_status(job_id)
        # `out` again: a job that does not hold writes it just before it ends
        assert out.exists() or (not status.is_terminal() and time.monotonic() < deadline), \
            (status, jobs.get_job_logs(job_id))
        time.sleep(0.5)
    return job_id, json.loads(out.read_text())


def test_placement_groups_are_released_by_their_sweep_or_the_next_job_only(cluster, tmp_path):
    """What a sweep's driver does once its trials are over (trainer.runners.sweep): every placement
    group its job still holds is removed; another job's, on the same cluster, is left alone. What
    every driver does first (trainer.cluster.reservations): a running job's group and an ended
    job's detached group are not orphans."""
    from ray.util.state import get_placement_group

    from trainer.scheduling.ray_jobs import RayJobs

    state = lambda pg_id: get_placement_group(pg_id, address=cluster.dashboard_url).state  # noqa: E731
    holding, held = ray_job(cluster, tmp_path, "hold")
    try:
        _, detached = ray_job(cluster, tmp_path, "detached")
        _, released = ray_job(cluster, tmp_path, "release", detached["mine"])
        assert released["released"] == [released["mine"]]
        assert state(released["mine"]) == "REMOVED"
        assert state(held["mine"]) == "CREATED"
        assert not {held["mine"], detached["mine"]} & set(released["orphans"]), released
    finally:
        RayJobs(cluster.dashboard_url).stop(holding)
