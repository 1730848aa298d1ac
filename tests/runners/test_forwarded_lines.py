"""The driver waits, bounded, until the workers' last lines have passed through its stdout (Ray
forwards them asynchronously): a completed trial's ends, a stopped trial's last step, a job's
last checkpoint's progress line. Lines are written the way Ray's log thread writes them: from
another thread, to whatever `sys.stdout` is then. The real path runs in tests/sweeps'
4-trial sweep (`trainer logs SWEEP --trial N` == the trial's MLflow history)."""
import sys
import threading
import time
from types import SimpleNamespace

import pytest

from trainer.protocol import event_line, progress_line
from trainer.runners import job, sweep
from trainer.runners.forwarded import Ended, ForwardedLines, Printed, Reported

SWEEP_ID = "sw-20261206-0000-ab12"
TRIAL_ID = "3f2a1_{:05d}"


def worker(pid: int, event: str, trial: int | None, rank: int = 0, group: str = "pg1") -> str:
    run = f"{SWEEP_ID}-{TRIAL_ID.format(trial)}" if trial is not None else "job-1"
    return f"(RayTrainWorker pid={pid}, ip=10.0.0.2) " + event_line(event, 1.0, rank=rank, pid=pid, group=group,
                                                                     train_run=run)


def progress(pid: int, metrics: dict) -> str:
    return f"(RayTrainWorker pid={pid}, ip=10.0.0.2) " + progress_line(int(metrics.get("epoch", 0)), metrics, 2.0)


@pytest.fixture
def watch():
    """Installed in the test's body (pytest puts its own sys.stdout back between phases)."""
    lines = ForwardedLines()
    yield lines
    lines.close()


def ray_prints(lines: list[str], after_s: float = 0.2) -> threading.Thread:
    """Ray's `ray_print_logs` thread: prints forwarded lines, later, to the current sys.stdout."""
    def run():
        time.sleep(after_s)
        for line in lines:
            print(line, file=sys.stdout)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_the_driver_waits_for_a_completed_trials_last_lines_from_another_thread(watch):
    watch.install()
    expected = [Ended(f"{SWEEP_ID}-{TRIAL_ID.format(3)}", 2, "trial 3")]
    print(worker(11, "worker_start", 3), file=sys.stdout)
    print(worker(12, "worker_start", 3, rank=1), file=sys.stdout)
    thread = ray_prints([progress(11, {"epoch": 3.0, "accuracy": 0.9}),
                         worker(12, "worker_end", 3, rank=1), worker(11, "worker_end", 3)])
    started = time.monotonic()
    assert watch.wait_for(expected, timeout=20) == []
    thread.join()
    assert time.monotonic() - started < 15          # it returned on the line, not at the bound


def test_a_restarted_trial_counts_the_end_of_its_last_worker_group_only(watch):
    expected = [Ended(f"{SWEEP_ID}-{TRIAL_ID.format(0)}", 1, "trial 0")]
    watch.feed(worker(11, "worker_start", 0, group="pg1"))       # SIGKILLed: never ends
    watch.feed(worker(13, "worker_start", 0, group="pg2"))
    watch.feed(worker(21, "worker_end", 1, group="pg2"))         # another trial's end
    assert watch.wait_for(expected, timeout=0.05) == expected
    watch.feed(worker(13, "worker_end", 0, group="pg2"))
    assert watch.wait_for(expected, timeout=0.05) == []


def test_a_stopped_trial_is_waited_for_until_the_progress_line_of_its_last_result(watch, capsys):
    result = {"epoch": 0.0, "loss": 2.3, "accuracy": 0.0891, "training_iteration": 1, "time_total_s": 9.5}
    expected = [Reported(2, result, "trial 2")]
    watch.feed(worker(31, "worker_start", 2))
    watch.feed(worker(41, "worker_start", 1))
    watch.feed(progress(41, {"epoch": 0.0, "loss": 2.3, "accuracy": 0.0891}))   # trial 1's: not it
    assert watch.wait_for(expected, timeout=0.2) == expected
    assert "warning: after 0.2 s the last lines of trial 2 had not reached this log" in capsys.readouterr().err
    watch.feed(progress(31, {"epoch": 0.0, "loss": 2.3, "accuracy": 0.0891}))
    assert watch.wait_for(expected, timeout=0.05) == []
    assert capsys.readouterr().err == ""


def test_a_stopped_trial_is_waited_for_until_the_progress_line_of_its_last_step_in_mlflow(watch):
    """Tune got epoch 1's result and ASHA stopped the trial, but its worker had gone on to epoch
    2 and put it in MLflow before it was killed: the log must show epoch 2 too."""
    expected = [Printed(2, 2, "trial 2")]
    watch.feed(worker(31, "worker_start", 2))
    watch.feed(worker(41, "worker_start", 1))
    watch.feed(progress(31, {"epoch": 1.0, "accuracy": 0.5}))        # the result Tune got
    watch.feed(progress(41, {"epoch": 2.0, "accuracy": 0.7}))        # another trial's epoch 2
    assert watch.wait_for(expected, timeout=0.05) == expected
    watch.feed(progress(31, {"epoch": 2.0, "accuracy": 0.6}))
    assert watch.wait_for(expected, timeout=0.05) == []


def test_a_job_waits_for_its_last_checkpoints_progress_line_and_the_bound_is_kept(watch):
    watch.install()
    expected = job.last_lines("job-1", 2, SimpleNamespace(metrics={"epoch": 3.0, "accuracy": 0.95}))
    assert expected == [Reported(None, {"epoch": 3.0, "accuracy": 0.95}, "the job")]
    watch.feed(progress(51, {"epoch": 2.0, "accuracy": 0.93}))
    started = time.monotonic()
    assert watch.wait_for(expected, timeout=0.3) == expected
    assert 0.3 <= time.monotonic() - started < 10
    thread = ray_prints([progress(51, {"epoch": 3.0, "accuracy": 0.95})], after_s=0.1)
    assert watch.wait_for(expected, timeout=20) == []
    thread.join()


def test_which_lines_each_driver_expects(monkeypatch):
    monkeypatch.delenv("RAY_DEDUP_LOGS", raising=False)
    # One worker: its end is never folded into another's. Several: Ray's deduplication may hold
    # all but one worker_end back, so only the progress line is waited for, unless it is off.
    assert job.last_lines("job-1", 1, SimpleNamespace(metrics={"a": 1.0}))[1:] == [Ended("job-1", 1, "the job")]
    assert job.last_lines("job-1", 2, SimpleNamespace(metrics=None)) == []
    monkeypatch.setenv("RAY_DEDUP_LOGS", "0")
    assert job.last_lines("job-1", 2, SimpleNamespace(metrics=None)) == [Ended("job-1", 2, "the job")]

    trials = {TRIAL_ID.format(0): {"trial": 0, "outcome": "completed", "result": {"accuracy": 0.9}},
              TRIAL_ID.format(1): {"trial": 1, "outcome": "stopped early", "result": {"accuracy": 0.1}},
              TRIAL_ID.format(2): {"trial": 2, "outcome": "failed", "result": {"accuracy": 0.1}},
              TRIAL_ID.format(3): {"trial": 3, "outcome": "stopped early"}}         # stopped before a result
    # Without MLflow's last steps: a stopped trial's last result Tune got.
    assert sweep.last_lines(trials, SWEEP_ID, 2, {}) == [Ended(f"{SWEEP_ID}-{TRIAL_ID.format(0)}", 2, "trial 0"),
                                                         Reported(1, {"accuracy": 0.1}, "trial 1")]
    # With them: its last step in MLflow, which its worker may have reached after that result.
    assert sweep.last_lines(trials, SWEEP_ID, 2, {1: 2, 3: 0})[1:] == [Printed(1, 2, "trial 1"),
                                                                      Printed(3, 0, "trial 3")]


def test_close_puts_the_stream_back():
    before = sys.stdout
    lines = ForwardedLines().install()
    assert sys.stdout is not before
    print("through the tee")
    lines.close()
    assert sys.stdout is before
