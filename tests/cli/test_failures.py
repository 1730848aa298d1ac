"""A failed job says what failed in the user's terms: exception type and message, the file:line of
the user's own code, the rank and node, the last epoch reported - on the terminal, in
`status --output json` and on the MLflow run (tags + failure/failure.json). `run --local` here;
a 2-worker Ray job (the failing rank is 1) in the integration test."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from trainer.cli import app
from trainer.tracking.runs import client

TRAINER = str(Path(sys.executable).parent / "trainer")
TRAIN = """\
import time


def train(ctx):
    import torch.distributed as dist

    for epoch in range(5):
        if ctx.world_size > 1:
            dist.barrier()              # ranks in step, as DDP keeps them
        if epoch == 2 and ctx.rank == ctx.config["bad_rank"] and rank0_reported(ctx, epoch):
            raise ValueError(f"bad batch shape (32, 7) at epoch {epoch}")
        ctx.report({"epoch": epoch, "loss": 1.0 / (epoch + 1)})


def rank0_reported(ctx, epoch):
    # Rank 0 reports to MLflow from a sender thread that first imports MLflow (seconds); a peer's
    # crash kills rank 0 abruptly. Another rank fails only once rank 0's reports are in MLflow, so
    # what the run holds is decided, not raced.
    if ctx.rank == 0:
        return True
    from mlflow import MlflowClient

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        steps = [m.step for m in MlflowClient(ctx._tracking_uri).get_metric_history(ctx.run_id, "loss")]
        if len(steps) >= epoch:
            return True
        time.sleep(0.2)
    return True
"""


def _project(root: Path, workers: int, bad_rank: int, cpus_per_worker: float = 1) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text("")
    (root / "train.py").write_text(TRAIN)
    (root / "job.yaml").write_text(f"name: boom\nframework: torch\nentrypoint: train.py:train\nworkers: {workers}\n"
                                   f"resources: {{accelerator: cpu, cpus_per_worker: {cpus_per_worker}}}\n"
                                   f"config: {{epochs: 5, bad_rank: {bad_rank}}}\nfailure: {{max_failures: 0}}\n")
    return root / "job.yaml"


def _check_run(uri: str, run_id: str, rank) -> None:
    run = client(uri).get_run(run_id)
    assert run.info.status == "FAILED"
    tags = run.data.tags
    assert tags["trainer.failure.type"] == "ValueError"
    assert tags["trainer.failure.where"] == "train.py:11" and tags["trainer.failure.epoch"] == "1"
    assert tags.get("trainer.failure.rank") == (None if rank is None else str(rank))
    assert "ValueError: bad batch shape (32, 7) at epoch 2" in tags["trainer.failure"]
    assert "Outcome: **failed**" in tags["mlflow.note.content"]
    # The step is the epoch: loss has a step per epoch reported, and there is no `epoch` curve.
    # (On Ray, rank 0 passed epoch 2 when rank 1 raised: its report may have landed before the
    # group was stopped.)
    assert "epoch" not in run.data.metrics
    steps = [m.step for m in client(uri).get_metric_history(run_id, "loss")]
    assert steps == [0, 1] if rank is None else steps in ([0, 1], [0, 1, 2]), steps


def test_run_local_failure_in_the_users_terms(tmp_path, monkeypatch):
    spec = _project(tmp_path / "project", workers=1, bad_rank=0)
    monkeypatch.setenv("TRAINER_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(spec.parent)
    result = CliRunner().invoke(app, ["run", str(spec), "--local"], env={"COLUMNS": "80"})
    assert result.exit_code == 5, result.output
    out = result.output
    assert "failed: ValueError: bad batch shape (32, 7) at epoch 2" in out
    assert "at train.py:11 in train(): raise ValueError(" in out and "last epoch reported: 1" in out
    assert "error: training failed: ValueError: bad batch shape (32, 7) at epoch 2 (at train.py:11" in out
    assert "TRAINER_PROGRESS" not in out and "TRAINER_FAILURE" not in out
    uri = f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}"
    (run,) = client(uri).search_runs([client(uri).get_experiment_by_name("boom").experiment_id])
    _check_run(uri, run.info.run_id, rank=None)


def test_driver_failure_names_the_lowest_failed_rank_from_ray_trains_error(tmp_path):
    """What `trainer.fit()` raises: Ray Train's WorkerGroupError with the workers' exceptions, each
    carrying the record its worker attached (or, when none, rebuilt from the exception)."""
    from ray.train.v2.api.exceptions import WorkerGroupError

    from trainer.runners.job import _FAILURE_ATTR, driver_failure, failure_record

    try:
        exec(compile("def f():\n    raise KeyError('label')\nf()\n", str(tmp_path / "user.py"), "exec"), {})
    except KeyError as e:
        marked = e
    setattr(marked, _FAILURE_ATTR, failure_record(marked, tmp_path, rank=1, node="n1", epoch=3))
    bare = RuntimeError("no record")
    got = driver_failure(WorkerGroupError("2 workers failed", {3: bare, 1: marked}), tmp_path)
    assert (got["type"], got["where"], got["rank"], got["node"], got["epoch"]) == ("KeyError", "user.py:2", 1, "n1", 3)
    assert got["failed_ranks"] == [1, 3] and got["others"][0]["type"] == "RuntimeError"
    from trainer.errors import ParityError

    assert driver_failure(ParityError("parity failed for onnx-int8"), tmp_path)["stage"] == "conversion"


def _retry_project(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "pyproject.toml").write_text("")
    (root / "train.py").write_text("def train(ctx):\n    raise KeyError('label column missing')\n")
    (root / "job.yaml").write_text("name: retry\nframework: torch\nentrypoint: train.py:train\nworkers: 1\n"
                                   "resources: {accelerator: cpu, cpus_per_worker: 1}\nfailure: {max_failures: 2}\n")
    return root / "job.yaml"


def _trainer(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.Popen:
    return subprocess.Popen([TRAINER, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _done(proc: subprocess.Popen, timeout: float = 120) -> subprocess.CompletedProcess:
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture(scope="module")
def submitted(cluster, tmp_path_factory):
    """The two integration tests' jobs, `submit --wait` each in its own process, at once on the
    session cluster (each job is ~20 s of fixed Ray overhead, mostly waiting): the boom job's 2
    workers (half a CPU each) and the retry job's one (a CPU) fit the cpu node together."""
    root = tmp_path_factory.mktemp("failures")
    # Both may be the first clients of a fresh store: trainer.tracking.runs.client serialises that.
    boom = _project(root / "project", workers=2, bad_rank=1, cpus_per_worker=0.5)
    retry = _retry_project(root / "retry")
    env = {**os.environ, "COLUMNS": "80"}
    procs = {"boom": _trainer("submit", str(boom), "--wait", env=env, cwd=boom.parent),
             "retry": _trainer("submit", "job.yaml", "--wait", env=env, cwd=retry.parent)}
    yield procs
    for proc in procs.values():     # a test not selected (or failed early): its job still ends here
        if proc.returncode is None:
            proc.communicate(timeout=600)


@pytest.mark.integration
def test_ray_job_failure_in_the_users_terms(submitted):
    proc = _done(submitted["boom"], timeout=600)
    assert proc.returncode == 5, proc.stdout + proc.stderr
    out, err = proc.stdout, proc.stderr
    assert "failed: ValueError: bad batch shape (32, 7) at epoch 2" in out
    assert "at train.py:11 in train(): raise ValueError(" in out
    assert "rank 1 on node " in out and "last epoch reported: 1" in out
    assert "error: job boom-" in err and "FAILED: ValueError: bad batch shape (32, 7) at epoch 2" in err
    # Quiet: our lines only. Ray's client logs (working_dir packaging, uploads) and MLflow's are
    # in the log file, whose path is printed under the error.
    for noise in ("Uploading package", "Creating a file package", "packaging.py", "INFO", "WARNING"):
        assert noise not in out + err, noise
    log = Path(err.split("details: ")[1].split()[0])
    assert "Uploading package gcs://" in log.read_text()
    job_id = err.split("error: job ")[1].split()[0]
    # The reads of the ended job are independent: at once (each CLI call is seconds of imports).
    reads = [_trainer("status", job_id, "--output", "json"),
             _trainer("status", job_id, env={**os.environ, "COLUMNS": "80"}),
             _trainer("wait", job_id), _trainer("logs", job_id), _trainer("logs", job_id, "-v")]
    status_json, shown, waited, logs, raw = [_done(p) for p in reads]
    for done in (status_json, logs, raw):
        done.check_returncode()
    status = json.loads(status_json.stdout)
    failure = status["failure"]
    assert status["status"] == "FAILED" and (failure["type"], failure["where"], failure["rank"], failure["epoch"]) == \
        ("ValueError", "train.py:11", 1, 1)
    _check_run(status["tracking_uri"], status["run_id"], rank=1)
    # `status` reports (exit 0 once it read the state); `wait` judges (exit 5 unless SUCCEEDED).
    assert shown.returncode == 0 and shown.stdout.startswith("FAILED\n"), shown.stdout + shown.stderr
    assert "failed: ValueError: bad batch shape (32, 7) at epoch 2" in shown.stdout
    assert "browse the run: trainer ui" in shown.stderr         # no MLflow UI runs: how to open one
    assert waited.returncode == 5 and "FAILED" in waited.stdout, waited.stdout + waited.stderr
    # The log for a person: the user's and our lines, no protocol lines, no Ray/MLflow log lines,
    # no colour codes into a pipe; -v shows it raw.
    logs, raw = logs.stdout, raw.stdout
    assert f"job {job_id}: 2 torch worker(s) on cpu nodes" in logs and "ValueError: bad batch shape" in logs
    for noise in ("TRAINER_FAILURE", "TRAINER_TIMING", "\x1b[", "INFO worker.py", "(TrainController"):
        assert noise not in logs, noise
    assert "TRAINER_TIMING" in raw and "INFO worker.py" in raw
    # With the MLflow UI running, status and list show the run's page.
    from trainer.tracking import server

    subprocess.run([TRAINER, "ui"], capture_output=True, text=True, timeout=180, check=True)
    try:
        reads = [_trainer("status", job_id, "-o", "json"), _trainer("status", job_id), _trainer("list", "-o", "json")]
        page_json, shown, listed = [_done(p) for p in reads]
        for done in (page_json, shown, listed):
            done.check_returncode()
        page = json.loads(page_json.stdout)["mlflow_url"]
        assert page.startswith(server.find().url) and page.endswith(f"/runs/{status['run_id']}?workflowType=machine_learning")
        assert f"run page: {page}" in shown.stdout
        assert {j["job_id"]: j.get("mlflow_url") for j in json.loads(listed.stdout)}[job_id] == page
    finally:
        server.stop()


@pytest.mark.integration
def test_retries_say_which_attempt_and_why(submitted):
    """A deterministic bug with failure.max_failures 2: Ray Train restarts the group twice; the job
    log and the terminal of `submit --wait` say "attempt 2 of 3: <reason>" and "attempt 3 of 3"."""
    proc = _done(submitted["retry"], timeout=600)
    assert proc.returncode == 5, proc.stdout + proc.stderr
    assert "attempt 2 of 3: KeyError: 'label column missing'" in proc.stdout, proc.stdout
    assert "attempt 3 of 3: KeyError: 'label column missing'" in proc.stdout
    assert "attempt 4" not in proc.stdout
    job_id = proc.stderr.split("error: job ")[1].split()[0]
    logs = _done(_trainer("logs", job_id))
    logs.check_returncode()
    logs = logs.stdout
    assert [ln.split(") ", 1)[-1] for ln in logs.splitlines() if "attempt " in ln] == [
        "trainer: attempt 2 of 3: KeyError: 'label column missing'",
        "trainer: attempt 3 of 3: KeyError: 'label column missing'"], logs
