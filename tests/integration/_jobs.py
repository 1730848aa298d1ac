"""What the framework job tests share: reading a job back from MLflow and from Ray's state API,
and the fault drill (kill a training worker mid-run, check it resumed and nothing repeats)."""
import os
import signal
import time

from ray.util.state import list_actors

import trainer
from trainer.api import parse_progress
from trainer.tracking.runs import metrics_frame


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


def kill_a_worker_and_check_resume(cluster, spec, epochs: int, workers: int) -> None:
    """SIGKILL one training worker once epoch 2 is in MLflow; the job must still succeed, from a
    new worker group that resumed from a checkpoint, with every epoch in MLflow exactly once."""
    job = trainer.submit(spec, set=[f"config.epochs={epochs}", "convert=null"])
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and not [s for s in steps(job, "epoch") if s >= 2]:
        assert not job.status().is_terminal, job.logs()[-3000:]
        time.sleep(1)
    alive = [w for w in train_workers(cluster.dashboard_url, job) if w.state == "ALIVE"]
    assert len(alive) == workers
    os.kill(alive[-1].pid, signal.SIGKILL)

    assert job.wait(timeout=900).value == "SUCCEEDED", job.logs()[-3000:]
    # A new worker group was started (Ray's state API, not our logs) ...
    assert len(train_workers(cluster.dashboard_url, job)) >= 2 * workers
    # ... that resumed from a checkpoint, not from scratch: rank 0's progress lines go back only
    # to the epoch after the last checkpoint ...
    events = {e["time"]: e["step"] for e in map(parse_progress, job.logs().splitlines()) if e}
    printed = [events[t] for t in sorted(events)]
    restart = next(i for i in range(1, len(printed)) if printed[i] <= printed[i - 1])
    assert 0 < printed[restart] <= printed[restart - 1], printed
    # ... and MLflow shows every epoch exactly once.
    for key in ("epoch", "loss", "accuracy"):
        assert steps(job, key) == list(range(epochs)), key
    assert job.final_metrics()["test_accuracy"] >= 0.95
