"""Done means (issue 24): a job that fails at its 5th epoch, then its cluster brought down and
Ray's temp dir deleted; `trainer inspect` (and `status`, `logs`) still tell it all from MLflow.

The cluster is this test's own, in its own $TRAINER_HOME (the session's `cluster` fixture is
shared by the whole suite and must stay up), driven through the CLI in other processes as a
user would."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SPEC = "tests/record/jobs/tiny.yaml"


def cli(env, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", "trainer.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def clis(env, *calls, timeout=300) -> list[subprocess.CompletedProcess]:
    """Independent CLI calls at once (each is seconds of imports), their results in order."""
    procs = [subprocess.Popen([sys.executable, "-m", "trainer.cli", *args], cwd=REPO, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for args in calls]
    outputs = [p.communicate(timeout=timeout) for p in procs]
    return [subprocess.CompletedProcess(p.args, p.returncode, out, err) for p, (out, err) in zip(procs, outputs)]


@pytest.mark.integration
@pytest.mark.slow
def test_inspect_tells_a_failed_job_after_its_cluster_is_gone(tmp_path):
    home = tmp_path / "home"
    env = {**os.environ, "TRAINER_HOME": str(home), "RAY_AUTH_TOKEN_PATH": str(home / "cluster" / "auth_token")}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("TRAINER_ADDRESS", None)
    up = cli(env, "cluster", "up", "--node", "cpu:1")
    try:
        assert up.returncode == 0, up.stderr[-2000:]
        done = cli(env, "submit", SPEC, "--set", "config.epochs=8", "--set", "config.fail_after_epochs=5",
                   "--wait", "-o", "json", timeout=600)
    finally:
        down = cli(env, "cluster", "down", timeout=180)
    assert down.returncode == 0, down.stderr[-2000:]
    assert done.returncode == 5, done.stderr[-3000:]
    job_id = json.loads(done.stdout)["job_id"]
    temp_dir = (home / "cluster" / "ray").resolve()        # a link to a short path (Ray's socket names)
    assert (temp_dir / "session_latest").exists()
    shutil.rmtree(temp_dir)

    # What is read back once the cluster is gone, all from MLflow: read at once.
    shown, table, status, logs = clis(env, ("inspect", job_id, "-n", "200", "-o", "json"), ("inspect", job_id),
                                      ("status", job_id), ("logs", job_id))
    assert shown.returncode == 0, shown.stderr[-2000:]
    info = json.loads(shown.stdout)
    assert info["status"] == "FAILED"
    f = info["failure"]
    assert f["type"] == "ValueError" and f["message"] == "loss check failed after epoch 5"
    assert f["where"].startswith("tests/record/jobs/tiny_torch.py:") and f["rank"] == 0 and f["node"]
    assert info["steps"]["loss"] == 5                   # the 5 epochs, each one step of `loss`
    kinds = [e["event"] for e in info["timeline"]]
    for kind in ("submitted", "driver_started", "group_started", "group_ended", "ended"):
        assert kind in kinds, kinds
    assert kinds[0] == "submitted" and kinds[-1] == "ended"
    assert [g["ranks"] for g in info["groups"]] == [[0]]
    assert info["where"]["nodes"][0]["node"] == f["node"]
    assert info["cost"]["cpu_seconds"] > 0 and info["code_digest"]
    assert any("epoch 5: loss" in line for line in info["log_tail"])
    assert any("ValueError: loss check failed after epoch 5" in line for line in info["log_tail"])

    assert table.returncode == 0 and "tiny_torch.py:" in table.stdout and "group_started" in table.stdout

    assert status.returncode == 0, status.stderr[-2000:]
    assert status.stdout.startswith("FAILED") and "does not know job" in status.stderr
    assert logs.returncode == 0, logs.stderr[-2000:]
    assert "epoch 5: loss" in logs.stdout and "TRAINER_EVENT" not in logs.stdout
    assert "from its MLflow" in status.stderr or "MLflow run recorded" in logs.stderr
