"""One job handle contract for both backends, one rule for closing a run, and a summary that shows
every metric the job reported."""
import logging
import typing

import pytest

from trainer.api import Job, K8sJob
from trainer.api.handle import JobHandle, close_run
from trainer.api.handle import run_summary
from trainer.state import JobState

CONTRACT = ("status", "wait", "logs", "cancel", "metrics", "failure", "summary")


@pytest.mark.parametrize("name", CONTRACT)
def test_both_handles_return_the_same_types(name):
    ray = typing.get_type_hints(getattr(Job, name)).get("return")
    k8s = typing.get_type_hints(getattr(K8sJob, name)).get("return")
    assert ray == k8s == typing.get_type_hints(getattr(JobHandle, name)).get("return"), name


def test_both_handles_are_job_handles():
    assert isinstance(Job(id="j", address="http://127.0.0.1:8265"), JobHandle)
    assert isinstance(K8sJob(name="j", namespace="ml"), JobHandle)
    assert typing.get_type_hints(JobHandle.wait)["return"] is JobState
    assert typing.get_type_hints(JobHandle.logs)["return"] is str


def _run(tmp_path, monkeypatch, metrics=()):
    from trainer.spec import load_spec
    from trainer.tracking import runs

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec, _ = load_spec({"name": "digits", "framework": "torch", "entrypoint": "train.py:train"})
    run_id = runs.start_run(spec, "digits-x", uri, "http://127.0.0.1:8265", None)
    for step, values in enumerate(metrics):
        for key, value in values.items():
            runs.client(uri).log_metric(run_id, key, value, step=step)
    return uri, run_id


def test_closing_a_run_follows_the_one_rule(tmp_path, monkeypatch):
    from trainer.tracking.runs import client

    uri, run_id = _run(tmp_path, monkeypatch)
    assert close_run(uri, run_id, JobState.SUCCEEDED, "driver gone") is True
    run = client(uri).get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["trainer.closed_by_client"] == "driver gone"
    # Closed already: left alone, except that a cancel is authoritative.
    assert close_run(uri, run_id, JobState.FAILED, "again") is False
    assert close_run(uri, run_id, JobState.CANCELLED, "cancelled") is True
    assert client(uri).get_run(run_id).info.status == "KILLED"


def test_a_run_that_cannot_be_closed_is_said_and_logged(tmp_path, monkeypatch, caplog, request):
    said = []
    logger = logging.getLogger("trainer.api.handle")   # routed to trainer.log once the CLI ran: listen here
    logger.addHandler(caplog.handler)
    request.addfinalizer(lambda: logger.removeHandler(caplog.handler))
    # Nothing listens on port 9: the store does not answer.
    assert close_run("http://127.0.0.1:9", "r1", JobState.FAILED, "x", said.append) is False
    assert said and "MLflow run r1 could not be closed as FAILED" in said[0] and "trainer list" in said[0]
    assert "r1" in caplog.text and "left open" in caplog.text
    # A store that answers but fails the call (no such run): said and logged too, never swallowed.
    uri, _ = _run(tmp_path, monkeypatch)
    said.clear()
    assert close_run(uri, "0" * 32, JobState.FAILED, "x", said.append) is False
    assert said and "could not be closed" in said[0]


def test_the_summary_shows_every_metric_by_its_own_name(tmp_path, monkeypatch):
    uri, run_id = _run(tmp_path, monkeypatch, [{"val_acc": 0.5, "f1": 0.4, "loss": 1.0},
                                                {"val_acc": 0.91234567, "f1": 0.8, "loss": 0.25}])
    out = run_summary(uri, run_id)
    assert out["metrics"] == {"f1": 0.8, "loss": 0.25, "val_acc": 0.9123}
    assert out["loss"] == 0.25      # the headline ones stay at the top level too


def test_metrics_that_cannot_be_read_are_a_tracking_error(tmp_path, monkeypatch):
    """MLflow's own exception (no such run) becomes ours at the boundary: `trainer status` prints a
    line instead of a traceback."""
    from trainer.api.handle import last_metrics
    from trainer.errors import TrackingError

    uri, _ = _run(tmp_path, monkeypatch)
    with pytest.raises(TrackingError, match="cannot read the metrics of MLflow run 0+ in sqlite"):
        last_metrics(uri, "0" * 32)


class _FakeTail:
    """Ray's log tail as Job.follow sees it: chunks that cut lines anywhere, lagging the log."""

    def __init__(self, chunks, failed=None):
        self.chunks, self.failed, self.closed = list(chunks), failed, False

    def take(self):
        return self.chunks.pop(0) if self.chunks else ""

    def close(self):
        self.closed = True


def _fake_jobs(log: str, states: list, tail: _FakeTail):
    class FakeRayJobs:
        reads = 0

        def state(self, job_id):
            return states.pop(0) if len(states) > 1 else states[0]

        def logs(self, job_id):
            FakeRayJobs.reads += 1
            return log

        def tail(self, job_id):
            return tail

    return FakeRayJobs


def test_follow_takes_lines_from_the_tail_and_the_rest_from_one_read_at_the_end(monkeypatch):
    """Lines cut across chunks come out whole; the log is read once, at the end, for what the
    tail had not delivered (a line without its newline included); the driver's timing line makes
    the state polls fast (END_POLL_S), so the end is noticed at once."""
    from trainer.api import jobs as jobs_module
    from trainer.protocol import TIMING_PREFIX

    timing = TIMING_PREFIX + '{"closed": 1}'
    log = f"job j: 1 torch worker(s)\nepoch 1\n{timing}\nlast words"
    tail = _FakeTail(["job j: 1 to", "rch worker(s)\nep", "", "och 1\n" + timing[:5], timing[5:] + "\n"])
    fake = _fake_jobs(log, [JobState.RUNNING] * 5 + [JobState.SUCCEEDED], tail)
    slept = []
    monkeypatch.setattr(Job, "_jobs", lambda self: fake())
    monkeypatch.setattr(jobs_module.time, "sleep", slept.append)
    lines = list(Job(id="j", address="http://127.0.0.1:8265").follow(poll_s=0.25))
    assert lines == log.split("\n")
    assert fake.reads == 1 and tail.closed
    assert slept == [0.25] * 4 + [jobs_module.END_POLL_S]


def test_follow_reads_the_log_at_every_poll_where_the_tail_cannot_be_opened(monkeypatch):
    from trainer.api import jobs as jobs_module

    tail = _FakeTail(["a\nb"], failed="WSServerHandshakeError: 400, message='Invalid response status'")
    fake = _fake_jobs("a\nb\nc\n", [JobState.RUNNING] * 3 + [JobState.FAILED], tail)
    monkeypatch.setattr(Job, "_jobs", lambda self: fake())
    monkeypatch.setattr(jobs_module.time, "sleep", lambda s: None)
    assert list(Job(id="j", address="http://127.0.0.1:8265").follow()) == ["a", "b", "c"]
    assert fake.reads == 3 and tail.closed
