"""A batched, non-blocking channel from training code to MLflow.

`ctx.report` must be cheap enough to call every step, so values are appended to an in-memory
buffer and a background thread sends them with `log_batch`. Values are *committed* together with
checkpoints: a report between two checkpoints is held back until the next persisted checkpoint
(or the end of training) commits it. After a worker failure the group resumes from the last
checkpoint and replays the uncommitted steps, so MLflow never sees a step twice or misses one.
"""
from __future__ import annotations

import queue
import threading
import time

FLUSH_INTERVAL_S = 1.0
MAX_BATCH = 1000  # MLflow's log_batch limit for metrics


class MetricsChannel:
    def __init__(self, tracking_uri: str, run_id: str):
        from mlflow.entities import Metric

        from trainer.tracking.runs import client

        self._metric = Metric
        self._client = client(tracking_uri)
        self._run_id = run_id
        self._pending: list = []
        self._queue: queue.Queue = queue.Queue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="trainer-metrics", daemon=True)
        self._thread.start()

    def add(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self._pending.extend(self._metric(k, float(v), now, step) for k, v in metrics.items())

    def commit(self) -> None:
        """Hand everything reported so far to the sender thread."""
        if self._error is not None:
            raise RuntimeError(f"MLflow metric logging failed: {self._error}") from self._error
        if self._pending:
            self._queue.put(self._pending)
            self._pending = []

    def close(self, commit: bool = True) -> None:
        """Send what is committed (and, by default, what is pending) and stop the thread."""
        if commit:
            self.commit()
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise RuntimeError(f"MLflow metric logging failed: {self._error}") from self._error

    def _loop(self) -> None:
        done = False
        while not done:
            batch = []
            try:
                item = self._queue.get(timeout=FLUSH_INTERVAL_S)
                while True:
                    if item is None:
                        done = True
                        break
                    batch.extend(item)
                    item = self._queue.get_nowait()
            except queue.Empty:
                pass
            try:
                for i in range(0, len(batch), MAX_BATCH):
                    self._client.log_batch(self._run_id, metrics=batch[i:i + MAX_BATCH], synchronous=True)
            except BaseException as e:  # surfaced to the training loop on the next commit
                self._error = e
