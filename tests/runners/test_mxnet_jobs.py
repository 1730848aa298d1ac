"""MXNet jobs (Gluon, one worker: the runner refuses more, see trainer/runners/mxnet.py) on a real
multi-node local Ray cluster, in the mxnet runtime venv, recorded in a real MLflow store."""
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _jobs import convert_and_check_parity, kill_a_worker_and_check_resume, submit_example_and_check_run
from trainer.tracking.runs import client

pytestmark = [pytest.mark.integration, pytest.mark.mxnet]

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "digits" / "mxnet.yaml"
TRAINER = str(Path(sys.executable).parent / "trainer")


def test_mxnet_digits_end_to_end(cluster, tmp_path):
    """One Gluon worker in the mxnet runtime reaches >= 0.95; the run holds every epoch once, the
    params, the dataset and a symbol+params model that `trainer convert --from mxnet` turns into
    ONNX with numerical parity."""
    job, run = submit_example_and_check_run(cluster, EXAMPLE, "mxnet", workers=1)
    assert "mxnet kvstore dist_sync" not in job.logs()

    # The model: MXNet's native symbol + params (no MLflow flavor exists), plus calibration data.
    mlc = client(job.tracking_uri)
    assert {a.path for a in mlc.list_artifacts(job.run_id, "model")} == {
        "model/model-symbol.json", "model/model-0000.params"}
    # ... which the mxnet converter frontend reads: numerical parity with ONNX Runtime.
    convert_and_check_parity(job, "mxnet", [None, 1, 8, 8], tmp_path)


def test_mxnet_multi_worker_is_refused_up_front():
    """workers: 2 is refused by preflight (exit 3, the reason), before any cluster, run or job."""
    from trainer.tracking.runs import tracking_uri

    mlc = client(tracking_uri())
    before = {e.experiment_id: len(mlc.search_runs([e.experiment_id])) for e in mlc.search_experiments()}
    started = time.monotonic()
    proc = subprocess.run([TRAINER, "submit", str(EXAMPLE), "--set", "workers=2"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - started
    assert proc.returncode == 3, proc.stderr
    assert elapsed < 5, elapsed
    assert "multi-worker training is not supported" in proc.stderr and "use workers: 1" in proc.stderr
    assert "init 1 first" in proc.stderr  # the observed reason, not a generic one
    after = {e.experiment_id: len(mlc.search_runs([e.experiment_id])) for e in mlc.search_experiments()}
    assert after == before  # no MLflow run was created


def test_mxnet_killed_worker_resumes_from_last_checkpoint(cluster):
    kill_a_worker_and_check_resume(cluster, EXAMPLE, epochs=12, workers=1)
