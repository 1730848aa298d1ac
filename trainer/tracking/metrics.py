"""A batched, non-blocking channel from training code to MLflow.

`ctx.report` must be cheap enough to call every step, so values are appended to an in-memory
buffer and a background thread sends them with `log_batch`. Values are *committed* together with
checkpoints: a report between two checkpoints is held back until the next persisted checkpoint
(or the end of training) commits it, and the commit reaches MLflow *before* the checkpoint is
persisted. After a worker failure the group resumes from the last checkpoint and replays the steps
after it; a restarted channel drops any (key, step) MLflow already has (a crash between the
flush and the checkpoint, or a checkpoint uploaded but never registered by Ray, so the group
resumes from an older one), so every step lands exactly once. That needs the replayed steps to be
the steps they were the first time: the context restores the report counter behind the default
step with the checkpoint (trainer.context, trainer.checkpoints).

With no restart possible (`failure.max_failures` 0) nothing can be replayed, so values need no
checkpoint to be committed; the context then makes a *live* channel (`live()`): the same bounds,
one full `log_batch` (MAX_BATCH values) or LIVE_S seconds. Committing each report instead costs a
queue handoff per report and a store write per second for as long as training runs (each write
reads the run back and updates its latest metrics: ~10 ms of CPU however few values it carries),
which made tracking +7% CPU on a 2 ms training step. What a live channel holds is final (the
context sends it even when the job fails); only a process killed outright loses it, at most
LIVE_S seconds' worth (committing each report lost up to the sender's one-second pacing).

Holding values back is also bounded: when `max_pending_values` values are waiting, or the oldest
has waited `max_pending_s` seconds, they are committed without a checkpoint (the sender thread
checks the age, so a long silent stretch of training commits too). A job that never passes
`checkpoint=` would otherwise keep every value in memory until the end and lose them all in a
crash. The trade-off: a value committed this way may belong to a step that a restarted group
replays (it resumes from an older checkpoint, or from scratch). Exactly-once still holds - the
restarted channel's `resume()` drops every (key, step) MLflow already has - as long as a replay
reports the same steps; what the run then shows for those steps is the value of the attempt that
first reached them, not the replay's (the same when training is deterministic, not otherwise).

Nothing of MLflow is imported or contacted on the training thread: the process's one MLflow
import thread (trainer.tracking.preload) imports it (seconds) and the sender thread then opens the
store and, after a restart, reads what the run already holds, while the first steps train.
A channel that cannot reach its store says so at the first commit.
"""
from __future__ import annotations

import queue
import threading
import time

from trainer import telemetry
from trainer.tracking import preload

FLUSH_INTERVAL_S = 1.0
MAX_BATCH = 1000  # MLflow's log_batch limit for metrics
MAX_PENDING_VALUES = 10_000   # held back at most this many values ...
MAX_PENDING_S = 30.0          # ... or this long, whichever comes first (see the module docstring)
LIVE_S = 2.0                  # max_failures 0: how long a value waits for the sender, at most
_RESUME = object()            # queued by resume(): the sender reads the run's steps before what follows


class MetricsChannel:
    def __init__(self, tracking_uri: str, run_id: str, *, max_pending_values: int | None = MAX_PENDING_VALUES,
                 max_pending_s: float | None = MAX_PENDING_S):
        """`max_pending_values` / `max_pending_s`: commit on their own when this many values wait
        or the oldest has waited this long (None: only `commit`/`flush`/`close` commit)."""
        self._uri = tracking_uri
        self._client = None               # made by the sender thread (importing mlflow takes seconds)
        self._run_id = run_id
        self._max_values = max_pending_values
        self._max_s = max_pending_s
        self._lock = threading.Lock()     # `_pending` is taken by the training thread and the sender
        self._pending: list = []          # (key, value, timestamp ms, step)
        self._pending_since = 0.0         # monotonic time of the oldest pending value
        self._logged_up_to: dict[str, int] = {}   # sender thread only
        self._queue: queue.Queue = queue.Queue()
        self._error: BaseException | None = None
        self._urgent = threading.Event()  # someone waits for the sender (flush, close): don't pace
        preload.start()                   # the sender's client() waits for it
        self._thread = threading.Thread(target=self._loop, name="trainer-metrics", daemon=True)
        self._thread.start()

    @classmethod
    def live(cls, tracking_uri: str, run_id: str) -> "MetricsChannel":
        """A channel for a job that cannot restart: values go out in full batches, or after
        LIVE_S seconds, with no commit from the training thread (see the module docstring)."""
        return cls(tracking_uri, run_id, max_pending_values=MAX_BATCH, max_pending_s=LIVE_S)

    def resume(self) -> None:
        """After a restart: skip the steps MLflow already holds for each key. The sender thread
        reads them before it sends anything committed after this call."""
        self._queue.put(_RESUME)

    def add(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        values = [(k, float(v), now, step) for k, v in metrics.items()]
        if not values:
            return
        with self._lock:
            if not self._pending:
                self._pending_since = time.monotonic()
            self._pending.extend(values)
            full = self._max_values is not None and len(self._pending) >= self._max_values
        if full:
            self.commit()

    def flush(self) -> None:
        """Commit and wait until MLflow has everything (used right before a checkpoint)."""
        self.commit()
        self._urgent.set()
        self._queue.join()
        if self._error is not None:
            raise RuntimeError(f"MLflow metric logging failed: {self._error}") from self._error

    def commit(self) -> None:
        """Hand everything reported so far to the sender thread."""
        if self._error is not None:
            raise RuntimeError(f"MLflow metric logging failed: {self._error}") from self._error
        pending = self._take_pending()
        if pending:
            self._queue.put(pending)

    def _take_pending(self) -> list:
        with self._lock:
            pending, self._pending = self._pending, []
        return pending

    def _overdue(self) -> list:
        """The sender thread's half of the time bound: the pending values, when the oldest has
        waited `max_pending_s`."""
        if self._max_s is None:
            return []
        with self._lock:
            if not self._pending or time.monotonic() - self._pending_since < self._max_s:
                return []
            pending, self._pending = self._pending, []
        return pending

    def close(self, commit: bool = True) -> None:
        """Send what is committed (and, by default, what is pending) and stop the thread."""
        if commit:
            self.commit()
        self._queue.put(None)
        self._urgent.set()
        self._thread.join()
        if self._error is not None:
            raise RuntimeError(f"MLflow metric logging failed: {self._error}") from self._error

    # ------------------------------------------------------------------ the sender thread
    def _connect(self) -> None:
        try:
            from trainer.tracking.runs import client

            self._client = client(self._uri)
        except BaseException as e:  # surfaced to the training loop on the next commit
            self._error = e

    def _read_logged_steps(self) -> None:
        if self._error is not None:
            return
        try:
            for key in self._client.get_run(self._run_id).data.metrics:
                steps = [m.step for m in self._client.get_metric_history(self._run_id, key)]
                self._logged_up_to[key] = max(steps, default=-1)
        except BaseException as e:
            self._error = e

    def _send(self, values: list) -> None:
        if not values or self._error is not None:
            return
        from mlflow.entities import Metric

        metrics = [Metric(k, v, ts, step) for k, v, ts, step in values if step > self._logged_up_to.get(k, -1)]
        try:
            for i in range(0, len(metrics), MAX_BATCH):
                self._client.log_batch(self._run_id, metrics=metrics[i:i + MAX_BATCH], synchronous=True)
        except BaseException as e:
            self._error = e

    def _loop(self) -> None:
        """Send what is committed, at most once per FLUSH_INTERVAL_S unless flush/close waits:
        a report committed every step (max_failures 0) must not become one store write per
        step - SQLite's write and MLflow's Python around it would take the GIL from training."""
        self._connect()
        done = False
        last_send = -FLUSH_INTERVAL_S
        while not done:
            pause = last_send + FLUSH_INTERVAL_S - time.monotonic()
            if pause > 0:
                self._urgent.wait(pause)
            self._urgent.clear()
            items = []
            try:
                items.append(self._queue.get(timeout=FLUSH_INTERVAL_S))
                while True:
                    items.append(self._queue.get_nowait())
            except queue.Empty:
                pass
            batch: list = []
            started = time.monotonic()
            try:
                for item in items:
                    if item is None:
                        done = True
                    elif item is _RESUME:
                        self._send(batch)
                        batch = []
                        self._read_logged_steps()
                    else:
                        batch.extend(item)
                if not done:
                    batch.extend(self._overdue())
                if batch:
                    self._send(batch)
                    telemetry.tracking_flushed(time.monotonic() - started, ok=self._error is None)
                    last_send = time.monotonic()
                telemetry.tracking_pending(len(self._pending))   # a len() needs no lock
            finally:
                for _ in items:
                    self._queue.task_done()
