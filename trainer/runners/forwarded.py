"""The workers' lines in the job's log before its driver ends.

A job's log is its driver's stdout. Ray forwards what the workers print asynchronously: each
node's log monitor tails the worker's output file (polling every 0.1 s), publishes batches to
the GCS, and the driver's `ray_print_logs` thread polls them and prints them to `sys.stdout`
(ray/_private/worker.py: `print_logs` -> `print_to_stdstream` -> `print_worker_logs`, which
looks `sys.stdout` up on each call). A driver that exits as soon as `fit()` returns loses what
is still on that path: under load, the last epoch's progress line of the last trial or job to
finish (`trainer logs SWEEP --trial N` then lacked an epoch MLflow has).

So the driver watches its own stdout (`ForwardedLines`, a tee installed before `fit()`) and,
before it ends, waits (bounded: END_WAIT_S, then one warning line, never a hang) until what
it expects has passed through it (the drivers say what: job.last_lines, sweep.last_lines):
- `Ended`: every rank of a Train run that returned (a completed trial's, a one-worker job's)
  printed its `worker_end` event (trainer.tracking.record.announce_worker), a worker's last
  line: one process's lines reach the driver in the order it printed them (one log monitor
  reads its file in order);
- `Printed`: a trial's progress line of a given step, the last its MLflow run has, for a trial
  ASHA stopped (its actor is killed: it prints no end). Its worker trains on while Tune decides,
  so that step can be later than the last result Tune got; rank 0 prints the line of a report
  with an epoch or a checkpoint before its metrics go to MLflow (trainer.context), so the line
  exists wherever the step does (a sweep's metric comes with its checkpoints: Tune reads it there);
- `Reported`: the progress line of a given result, recognised by its metrics (a progress line
  carries the metrics the report gave Ray): the last checkpoint's of a job (whose workers' alike
  end lines Ray's log deduplication may hold back, see job.last_lines), the last result Tune got
  from a stopped trial when the sweep has no MLflow run to read its last step from.

Why the driver's stdout and not a Ray hook: Ray offers no public one. The dispatcher the
`ray_print_logs` thread emits to (`ray._private.ray_logging.global_worker_stdstream_dispatcher`)
is private and says nothing about whether the line was written; the job's log is what passed
through `sys.stdout`, so that is what is watched, with the parser `trainer logs --trial` uses.
"""
from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field

from trainer.protocol import parse_event, parse_progress
from trainer.tracking.record import WORKER_END, WORKER_START, LineTee
from trainer.tracking.sweeps import TrialLines

# A line printed by a worker reaches the driver within a second on a quiet machine; the bound
# covers a loaded one (load 8 on 2 cores) and keeps a driver whose lines never come from hanging.
END_WAIT_S = 5.0


@dataclass(frozen=True)
class Ended:
    """Every rank (0 .. workers-1) of Train run `train_run` printed its `worker_end`: the one of
    the last worker group in which the rank started, when it was restarted."""
    train_run: str
    workers: int
    name: str           # how the warning names it: "the job", "trial 3"


@dataclass(frozen=True)
class Printed:
    """Trial `trial`'s progress line of step `step` (or of a later one)."""
    trial: int
    step: int
    name: str


@dataclass(frozen=True)
class Reported:
    """The progress line of the report whose metrics are `metrics` (a Tune result, a Train
    result's last checkpoint's): trial `trial`'s, or with None any worker's (a job's)."""
    trial: int | None
    metrics: dict = field(hash=False)
    name: str


class ForwardedLines:
    """What of the workers' lines has passed through this driver's stdout: each Train run's
    (rank, group) starts and ends, and each trial's progress lines. `install()` before the
    workers start, `wait_for(...)` before the driver ends, `close()` after."""

    def __init__(self):
        self._cond = threading.Condition()
        self._trials = TrialLines()
        self._started: dict[tuple[str, int], str] = {}      # (train run, rank) -> its last group
        self._ended: set[tuple[str, int, str]] = set()      # (train run, rank, group)
        self._progress: dict[int | None, list[dict]] = {}   # trial (None: any) -> its progress events
        self._tee: LineTee | None = None
        self._real = None

    def install(self) -> "ForwardedLines":
        if self._tee is None:
            self._real = sys.stdout
            self._tee = sys.stdout = LineTee(sys.stdout, self.feed)
        return self

    def close(self) -> None:
        """Put back the stream `install` found (when nothing replaced the tee since)."""
        if self._tee is not None and sys.stdout is self._tee:
            sys.stdout = self._real
        self._tee = None

    def feed(self, line: str) -> None:
        """One line of the driver's stdout."""
        event = parse_event(line)
        with self._cond:
            placed = self._trials.feed(line)
            if event is not None and event.get("event") in (WORKER_START, WORKER_END):
                key = (str(event.get("train_run")), event.get("rank"))
                if event["event"] == WORKER_START:
                    self._started[key] = str(event.get("group"))
                else:
                    self._ended.add((*key, str(event.get("group"))))
            progress = parse_progress(line)
            if progress is not None:
                self._progress.setdefault(None, []).append(progress)
            for trial, held in placed:
                progress = parse_progress(held) if trial is not None else None
                if progress is not None:
                    self._progress.setdefault(trial, []).append(progress)
            self._cond.notify_all()

    def _seen(self, expected) -> bool:
        if isinstance(expected, Ended):
            for rank in range(expected.workers):
                group = self._started.get((expected.train_run, rank))
                if group is None or (expected.train_run, rank, group) not in self._ended:
                    return False
            return True
        seen = self._progress.get(expected.trial, [])
        if isinstance(expected, Printed):
            return any(p.get("step", -1) >= expected.step for p in seen)
        return any((metrics := p.get("metrics")) and all(expected.metrics.get(k) == v for k, v in metrics.items())
                   for p in seen)

    def wait_for(self, expected: list, timeout: float = END_WAIT_S) -> list:
        """Wait until every expectation (Ended, Printed, Reported) has passed through this stream, at
        most `timeout` seconds; returns those that had not. One warning line on stderr names
        them (the log may lack their last lines)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                missing = [e for e in expected if not self._seen(e)]
                left = deadline - time.monotonic()
                if not missing or left <= 0:
                    break
                self._cond.wait(left)
        if missing:
            print(f"warning: after {timeout:g} s the last lines of {', '.join(e.name for e in missing)} had not "
                  f"reached this log from Ray; they may be missing here (MLflow has the metrics)",
                  file=sys.stderr, flush=True)
        return missing
