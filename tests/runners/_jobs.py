"""What the framework job tests share: reading a job back from MLflow and from Ray's state API,
and the fault drill (kill a training worker mid-run, check it resumed and nothing repeats)."""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ray.util.state import list_actors

import trainer
from trainer.api import parse_progress
from trainer.data import fingerprint
from trainer.tracking.runs import client, metrics_frame

REPO = Path(__file__).resolve().parents[2]
TRAINER = str(Path(sys.executable).parent / "trainer")


def steps(job, key):
    """The steps MLflow holds for one metric of the job's run, in order."""
    frame = metrics_frame(job.tracking_uri, job.run_id)
    return frame[frame.key == key].step.tolist()


def train_workers(address, job):
    """RayTrainWorker actors of this job (alive or dead), from Ray's own state API."""
    ray_job_id = job._jobs().info(job.id).job_id
    return [a for a in list_actors(address=address, filters=[("class_name", "=", "RayTrainWorker")],
                                   detail=True, limit=1000, raise_on_missing_output=False)
            if a.job_id == ray_job_id]


def submit_example_and_check_run(cluster, spec, framework: str, workers: int, epochs: int = 12,
                                  kill_at_epoch: int | None = None):
    """`trainer submit SPEC --wait` as a user runs it; then the run must hold what every job's run
    holds: >= 0.95, params, job tags, every epoch exactly once, the dataset's digest, and the
    workers on the cpu node (never the head). Returns (job, MLflow run) for framework checks.

    With `kill_at_epoch`, one training worker is SIGKILLed once that epoch is in MLflow (see
    kill_a_worker): the same job then also proves the resume (check_resumed), and its run must
    still hold all of the above - one job instead of two, each ~20 s of fixed Ray cost (issue 28)."""
    before = {j["job_id"] for j in trainer.list_jobs(cluster.dashboard_url)}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([TRAINER, "submit", str(spec), "--wait", "--output", "json"], cwd=REPO,
                                stdout=out, stderr=err, text=True)
        try:
            if kill_at_epoch is not None:
                kill_a_worker(cluster, submitted_by(cluster, proc, before), workers, kill_at_epoch)
            returncode = proc.wait(timeout=900)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    assert returncode == 0, stderr[-2000:]
    summary = json.loads(stdout)
    assert summary["status"] == "SUCCEEDED"
    assert summary["test_accuracy"] >= 0.95
    import yaml

    convert = yaml.safe_load(Path(spec).read_text()).get("convert")
    if convert:   # the summary gives the conversion per target: verdict, figure, size, where
        conversion = summary["conversion"]
        assert conversion["status"] == "PASSED" and conversion["report"].endswith("/report.md")
        assert [t["target"] for t in conversion["targets"]] == convert["targets"]
        for t in conversion["targets"]:
            assert t["verdict"] == "pass" and t["size_bytes"] > 0 and Path(t["path"]).is_file(), t
            assert t["uri"].endswith(t["path"][len(conversion["output"]):]) and t["figure"]

    job = trainer.Job.get(summary["job_id"], cluster.dashboard_url)
    run = client(job.tracking_uri).get_run(job.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["epochs"] == str(epochs) and run.data.params["trainer.workers"] == str(workers)
    assert run.data.tags["trainer.job_id"] == job.id and run.data.tags["trainer.framework"] == framework
    for key in ("loss", "accuracy"):
        assert steps(job, key) == list(range(epochs)), key
    assert "epoch" not in run.data.metrics      # the step, not a curve of its own
    (dataset,) = [d.dataset for d in run.inputs.dataset_inputs]
    expected = fingerprint("package://sklearn.datasets/data/digits.csv.gz", REPO)
    assert dataset.digest == expected.digest[:32]
    ran = train_workers(cluster.dashboard_url, job)
    cpu_node = next(n for n in trainer.cluster_status()["nodes"] if n["accelerator"] == "cpu")
    groups = 1 if kill_at_epoch is None else 2      # one kill: exactly one new worker group
    assert len(ran) == groups * workers and {w.node_id for w in ran} == {cpu_node["node_id"]}
    return job, run


def submitted_by(cluster, proc: subprocess.Popen, before: set[str], timeout: float = 300) -> "trainer.Job":
    """The job a running `trainer submit` created: the one job not in `before`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = [j["job_id"] for j in trainer.list_jobs(cluster.dashboard_url) if j["job_id"] not in before]
        if new:
            (job_id,) = new
            return trainer.Job.get(job_id, cluster.dashboard_url)
        assert proc.poll() is None, f"trainer submit exited {proc.returncode} before its job was listed"
        time.sleep(0.5)
    raise AssertionError(f"no new job listed {timeout:.0f} s after trainer submit")


def convert_and_check_parity(job, frontend: str, input_shape: list, tmp_path) -> None:
    """The run's calibration samples are logged, and `trainer convert runs:/<id>/model --from
    FRONTEND --to onnx` turns its model into ONNX with numerical parity (atol 1e-4, top-1 1.0)."""
    artifacts = {a.path for a in client(job.tracking_uri).list_artifacts(job.run_id, "calibration")}
    assert artifacts == {"calibration/inputs.npy", "calibration/labels.npy"}
    conv = subprocess.run([TRAINER, "convert", f"runs:/{job.run_id}/model", "--from", frontend, "--to", "onnx",
                           "--atol", "1e-4", "--out", str(tmp_path / "converted"), "--output", "json"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "MLFLOW_TRACKING_URI": job.tracking_uri})
    assert conv.returncode == 0, conv.stderr[-2000:]
    report = json.loads(conv.stdout)
    (row,) = report["rows"]
    assert report["status"] == "PASSED" and report["inputs"][0]["shape"] == input_shape
    assert row["max_abs_diff"] <= 1e-4 and row["top1_agreement"] == 1.0
    assert report["native_accuracy"] >= 0.9


def kill_a_worker(cluster, job, workers: int, at_epoch: int = 2) -> None:
    """SIGKILL one training worker of the job once epoch `at_epoch` is in MLflow."""
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and not [s for s in steps(job, "loss") if s >= at_epoch]:
        assert not job.status().is_terminal, job.logs()[-3000:]
        time.sleep(1)
    alive = [w for w in train_workers(cluster.dashboard_url, job) if w.state == "ALIVE"]
    assert len(alive) == workers
    os.kill(alive[-1].pid, signal.SIGKILL)


def check_resumed(cluster, job, epochs: int, workers: int) -> None:
    """After kill_a_worker, the job succeeded from a new worker group that resumed from a
    checkpoint, with every epoch in MLflow exactly once and >= 0.95."""
    assert job.wait(timeout=900).value == "SUCCEEDED", job.logs()[-3000:]
    # A new worker group was started (Ray's state API, not our logs) ...
    assert len(train_workers(cluster.dashboard_url, job)) >= 2 * workers
    # ... that resumed from a checkpoint, not from scratch: rank 0 printed its first epoch once.
    # (The steps need not go back: a kill right after a checkpoint resumes at the next epoch.)
    events = {e["time"]: e["step"] for e in map(parse_progress, job.logs().splitlines()) if e}
    printed = [events[t] for t in sorted(events)]
    assert printed and printed.count(min(printed)) == 1, printed
    # ... and MLflow shows every epoch exactly once.
    for key in ("loss", "accuracy"):
        assert steps(job, key) == list(range(epochs)), key
    assert job.final_metrics()["test_accuracy"] >= 0.95


def kill_a_worker_and_check_resume(cluster, spec, epochs: int, workers: int) -> None:
    """SIGKILL one training worker once epoch 2 is in MLflow; the job must still succeed, from a
    new worker group that resumed from a checkpoint, with every epoch in MLflow exactly once."""
    job = trainer.submit(spec, set=[f"config.epochs={epochs}", "convert=null"])
    kill_a_worker(cluster, job, workers)
    check_resumed(cluster, job, epochs, workers)
