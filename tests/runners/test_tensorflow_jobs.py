"""TensorFlow jobs (Keras 3, MultiWorkerMirroredStrategy) on a real multi-node local Ray cluster,
in the tensorflow runtime venv, recorded in a real MLflow store."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from _jobs import check_resumed, convert_and_check_parity, submit_example_and_check_run
from trainer.tracking.runs import client, global_store, tracking_uri

pytestmark = [pytest.mark.integration, pytest.mark.tensorflow]

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "digits" / "tensorflow.yaml"
TRAINER = str(Path(sys.executable).parent / "trainer")


@pytest.fixture(scope="module")
def digits(cluster, tmp_path_factory):
    """One digits job serves both tests below (issue 28: each job costs ~20 s of fixed Ray
    overhead): `trainer submit --wait` as a user runs it, with one worker SIGKILLed once epoch 2
    is in MLflow. Its run must still hold everything an unharmed run holds."""
    return submit_example_and_check_run(cluster, EXAMPLE, "tensorflow", workers=2, kill_at_epoch=2)


def test_tensorflow_digits_end_to_end(digits, tmp_path):
    """2 MultiWorkerMirroredStrategy workers reach >= 0.95; the run holds every epoch once, the
    params, the dataset and a Keras model that `trainer convert --from keras` turns into ONNX."""
    job, run = digits
    assert "Started training worker group of size 2" in job.logs()

    # The model: an MLflow tensorflow-flavor model with data/model.keras, plus calibration data.
    with global_store(job.tracking_uri):     # runs:/ model artifacts resolve through the global store
        mlc = client(job.tracking_uri)
        model_files = {a.path for a in mlc.list_artifacts(job.run_id, "model/data")}
        assert "model/data/model.keras" in model_files
        # ... which the keras converter frontend reads: numerical parity with ONNX Runtime.
        convert_and_check_parity(job, "keras", [None, 8, 8, 1], tmp_path)


def test_tensorflow_killed_worker_resumes_from_last_checkpoint(digits, cluster):
    """The default tier's TensorFlow resume: a MultiWorkerMirroredStrategy group that lost a worker
    (in the `digits` job) is restarted and resumes from its checkpoint (the TensorFlow fault drill
    of test_resume_faults.py, the extended tier, kills at each checkpoint phase too)."""
    job, _ = digits
    check_resumed(cluster, job, epochs=12, workers=2)


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
