"""TensorFlow jobs (Keras 3, MultiWorkerMirroredStrategy) on a real multi-node local Ray cluster,
in the tensorflow runtime venv, recorded in a real MLflow store."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ray.util.state import list_actors

import trainer
from trainer.api import parse_progress
from trainer.scheduling.fingerprint import fingerprint
from trainer.tracking.runs import client, metrics_frame, tracking_uri

pytestmark = [pytest.mark.integration, pytest.mark.tensorflow]

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "digits" / "tensorflow.yaml"
TRAINER = str(Path(sys.executable).parent / "trainer")


def _steps(job, key):
    frame = metrics_frame(job.tracking_uri, job.run_id)
    return frame[frame.key == key].step.tolist()


def _train_workers(address, job):
    """RayTrainWorker actors of this job (alive or dead), from Ray's own state API."""
    ray_job_id = job._jobs().info(job.id).job_id
    return [a for a in list_actors(address=address, filters=[("class_name", "=", "RayTrainWorker")],
                                   detail=True, limit=1000, raise_on_missing_output=False)
            if a.job_id == ray_job_id]


def test_tensorflow_digits_end_to_end(cluster, tmp_path):
    """2 MultiWorkerMirroredStrategy workers reach >= 0.95; the run holds every epoch once, the
    params, the dataset and a Keras model that `trainer convert --from keras` turns into ONNX."""
    proc = subprocess.run([TRAINER, "submit", str(EXAMPLE), "--wait", "--output", "json"], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)
    assert summary["status"] == "SUCCEEDED"
    assert summary["test_accuracy"] >= 0.95

    job = trainer.Job.get(summary["job_id"], cluster.dashboard_url)
    run = client(job.tracking_uri).get_run(job.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["epochs"] == "12" and run.data.params["trainer.workers"] == "2"
    assert run.data.tags["trainer.framework"] == "tensorflow"
    for key in ("loss", "accuracy", "epoch"):
        assert _steps(job, key) == list(range(12)), key
    (dataset,) = [d.dataset for d in run.inputs.dataset_inputs]
    expected = fingerprint("package://sklearn.datasets/data/digits.csv.gz", REPO)
    assert dataset.digest == expected.digest[:32]
    # Both workers ran on the cpu node, in the tensorflow runtime's interpreter.
    workers = _train_workers(cluster.dashboard_url, job)
    cpu_node = next(n for n in trainer.cluster_status()["nodes"] if n["accelerator"] == "cpu")
    assert len(workers) == 2 and {w.node_id for w in workers} == {cpu_node["node_id"]}
    assert "Started training worker group of size 2" in job.logs()

    # The model: an MLflow tensorflow-flavor model with data/model.keras, plus calibration data.
    import mlflow

    mlflow.set_tracking_uri(job.tracking_uri)  # runs:/ model artifacts resolve through the global URI
    mlc = client(job.tracking_uri)
    model_files = {a.path for a in mlc.list_artifacts(job.run_id, "model/data")}
    assert "model/data/model.keras" in model_files
    artifacts = {a.path for a in mlc.list_artifacts(job.run_id, "calibration")}
    assert artifacts == {"calibration/inputs.npy", "calibration/labels.npy"}
    # ... which the keras converter frontend reads: numerical parity with ONNX Runtime.
    conv = subprocess.run([TRAINER, "convert", f"runs:/{job.run_id}/model", "--from", "keras", "--to", "onnx",
                           "--atol", "1e-4", "--out", str(tmp_path / "converted"), "--output", "json"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "MLFLOW_TRACKING_URI": job.tracking_uri})
    assert conv.returncode == 0, conv.stderr[-2000:]
    report = json.loads(conv.stdout)
    (row,) = report["rows"]
    assert report["status"] == "PASSED" and report["inputs"][0]["shape"] == [None, 8, 8, 1]
    assert row["max_abs_diff"] <= 1e-4 and row["top1_agreement"] == 1.0
    assert report["native_accuracy"] >= 0.9


def test_tensorflow_killed_worker_resumes_from_last_checkpoint(cluster):
    epochs = 16
    job = trainer.submit(EXAMPLE, set=[f"config.epochs={epochs}"])
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and not [s for s in _steps(job, "epoch") if s >= 2]:
        assert not job.status().is_terminal, job.logs()[-3000:]
        time.sleep(1)
    alive = [w for w in _train_workers(cluster.dashboard_url, job) if w.state == "ALIVE"]
    assert len(alive) == 2
    os.kill(alive[1].pid, signal.SIGKILL)

    assert job.wait(timeout=900).value == "SUCCEEDED", job.logs()[-3000:]
    # A new worker group was started (Ray's state API, not our logs) ...
    assert len(_train_workers(cluster.dashboard_url, job)) >= 4
    # ... that resumed from a checkpoint, not from scratch: rank 0's progress lines go back only
    # to the epoch after the last checkpoint ...
    events = {e["time"]: e["step"] for e in map(parse_progress, job.logs().splitlines()) if e}
    printed = [events[t] for t in sorted(events)]
    restart = next(i for i in range(1, len(printed)) if printed[i] <= printed[i - 1])
    assert 0 < printed[restart] <= printed[restart - 1], printed
    # ... and MLflow shows every epoch exactly once.
    for key in ("epoch", "loss", "accuracy"):
        assert _steps(job, key) == list(range(epochs)), key
    assert job.final_metrics()["test_accuracy"] >= 0.95


def test_tensorflow_run_local_reexecutes_in_the_runtime(trainer_home):
    """`trainer run --local` from the main venv (no tensorflow here) runs under the tensorflow
    runtime's interpreter, with the default strategy, and records the run the same way."""
    assert "tensorflow" not in sys.modules
    proc = subprocess.run([TRAINER, "run", str(EXAMPLE), "--local", "--output", "json"], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{\n"):])
    assert summary["test_accuracy"] >= 0.95
    run = client(tracking_uri()).get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["trainer.ray_address"] == "local"
    assert run.data.tags["trainer.framework"] == "tensorflow"
    assert "tensorflow" not in sys.modules


def test_gpu_tensorflow_job_is_refused_up_front_with_the_reason(trainer_home):
    """The tensorflow runtime's lock pins tensorflow-cpu: a GPU job would silently train on CPU."""
    started = time.monotonic()
    proc = subprocess.run([TRAINER, "submit", str(EXAMPLE), "--set", "resources.gpus_per_worker=1",
                           "--set", "resources.accelerator=A100"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0
    message = proc.stderr.strip()
    assert len(message.splitlines()) == 1, message
    assert "tensorflow runner: gpus_per_worker=1" in message and "pins tensorflow-cpu" in message
    assert time.monotonic() - started < 30
