"""`trainer logs` for a person: a real captured job log (two torch workers on one host, where
Ray forwarded rank 0's progress line twice) through `LogFilter`, plus lines in the formats our
dependencies print (MLflow, absl, Python warnings) and a user's legitimately repeated lines."""
from pathlib import Path

from trainer.protocol import LogFilter

SAMPLE = (Path(__file__).parent / "data" / "job_log_torch_2workers.txt").read_text()
W = "\x1b[36m(RayTrainWorker pid=28614)\x1b[0m "
P = 'TRAINER_PROGRESS {"step": %d, "metrics": {"loss": 0.5}, "time": 1796522437.%d}'
EXTRA = "\n".join([
    "2026/12/06 01:59:30 WARNING mlflow.utils.git_utils: Failed to import Git (the Git executable is probably not "
    "on your PATH), so Git SHA is not available.",
    W + "2026/12/06 01:59:31 INFO mlflow.tracking.fluent: Autologging successfully enabled for pytorch.",
    W + "WARNING:absl:You are saving your model as an HDF5 file via `model.save()`.",
    W + "W1206 01:59:32.123456 28614 placer.cc:54] device placement",
    W + "/work/main/.venv/lib/python3.11/site-packages/torch/nn/modules/loss.py:12: UserWarning: Using a target size",
    W + "  return F.mse_loss(input, target, reduction=self.reduction)",
    "[2026-12-06 02:00:27,326 W 28026 28193] core_worker.cc:2465: a Ray warning",
    # rank 0 of a user's code: "epoch done" every epoch (never a duplicate), progress forwarded twice
    W + P % (1, 1), W + P % (1, 1), W + "epoch done", W + "epoch done",
    W + P % (2, 2), W + "epoch done", W + P % (2, 2), W + "epoch done",
    # the same text from another worker is its own line
    "\x1b[36m(RayTrainWorker pid=28695, ip=10.0.0.3)\x1b[0m epoch done",
    'TRAINER_TIMING {"entrypoint": 1.0}',
    'TRAINER_FAILURE {"rank": 0, "type": "ValueError"}',
])


def shown(text, **kw):
    return LogFilter(**kw).text(text)


def test_real_log_keeps_our_lines_and_drops_the_rest():
    out = shown(SAMPLE + EXTRA)
    assert "job fault-tiny-20261206-015840-9221: 2 torch worker(s) on cpu nodes" in out
    assert "Running entrypoint for job" in out
    for gone in ("TRAINER_PROGRESS", "TRAINER_TIMING", "TRAINER_FAILURE", "\x1b[", "INFO worker.py",
                 "INFO job_manager.py", "TrainController", "PlacementGroupCleaner", "Reporting training result",
                 "Moving model to device", "WARNING mlflow", "WARNING:absl", "placer.cc", "UserWarning",
                 "F.mse_loss", "core_worker.cc:2465: a Ray warning"):
        assert gone not in out, gone
    # rank 1's own line, and every error line, stay
    assert "rpc_client.h:204: Failed to connect to GCS" in out


def test_duplicates_only_from_a_source_shown_forwarded_twice():
    out = shown(EXTRA).splitlines()
    # rank 0 printed "epoch done" twice, each forwarded twice: it shows twice
    rank0 = [ln for ln in out if ln == "(RayTrainWorker pid=28614) epoch done"]
    assert len(rank0) == 2
    assert "(RayTrainWorker pid=28695, ip=10.0.0.3) epoch done" in out
    # a source never seen forwarded twice keeps its repeated lines, and driver lines are never deduped
    plain = "\n".join([W + "step", W + "step", W + "step", "driver says", "driver says"])
    assert shown(plain).splitlines() == ["(RayTrainWorker pid=28614) step"] * 3 + ["driver says"] * 2


def test_ansi_kept_for_a_terminal():
    out = shown(W + "hello", keep_ansi=True)
    assert out == W + "hello\n"
    assert shown(W + "hello") == "(RayTrainWorker pid=28614) hello\n"
