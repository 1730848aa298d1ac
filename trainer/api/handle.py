"""What every job handle offers, whatever runs the job: a Ray job (`trainer.api.jobs.Job`) or a
KubeRay RayJob (`trainer.api.k8s.K8sJob`). The CLI drives both through this contract only.

And the one rule for closing a job's MLflow run from the client, which both handles use.
"""
from __future__ import annotations

import logging
from typing import Callable, Protocol, runtime_checkable

from trainer.api._common import say, store_reachable
from trainer.credentials import redact, redact_text
from trainer.errors import TrackingError, TrainerError, first_line, translate
from trainer.state import JobState

log = logging.getLogger(__name__)

# How many metrics the summary table shows before it points at MLflow (80 columns, one screen).
SUMMARY_TABLE_METRICS = 12


@runtime_checkable
class JobHandle(Protocol):
    """A submitted job and the MLflow run that records it."""

    run_id: str | None

    @property
    def job_id(self) -> str:
        """The id to name the job by (Ray submission id, or RayJob name)."""

    @property
    def logs_command(self) -> str:
        """The command that shows the job's full log."""

    def status(self) -> JobState:
        """The job's state now (its run is closed once it is terminal)."""

    def wait(self, timeout: float | None = None) -> JobState:
        """Block until the job ends; its terminal state. JobError after `timeout` seconds."""

    def logs(self) -> str:
        """The job's output as text (several pods: each under a `==> pod <==` header)."""

    def cancel(self) -> JobState:
        """Stop the job; its state afterwards."""

    def metrics(self):
        """Every metric the job logged, as a pandas DataFrame (key, step, value, timestamp)."""

    def failure(self) -> dict | None:
        """What failed, in the user's terms, or None."""

    def summary(self, state: JobState | None = None, started: float | None = None) -> dict:
        """State, run, the last value of each metric, the conversion outcome, and what failed."""


def close_run(uri: str | None, run_id: str | None, state: JobState, reason: str,
              warn: Callable[[str], None] | None = None) -> bool:
    """End a job's MLflow run from the client as `state` says, when its driver could not (cancelled,
    killed, or it never reached MLflow): the one rule for both handles. A run still RUNNING is
    closed; a cancel is authoritative (the driver may have ended the run FAILED on its way out).

    Never silent: a run left open because the store does not answer, or a close that failed, is
    logged (trainer.log) with the run, the store and why, and said through `warn` when given (the
    job's state is right either way; `trainer list` repairs the run later). True when closed here.
    """
    if not (uri and run_id):
        return False
    # MLflow would retry an unanswering server for minutes: check first.
    if not store_reachable(uri):
        _left_open(run_id, uri, state, "the store does not answer", warn)
        return False
    from trainer.tracking.runs import close_run as close, run_status

    try:
        current = run_status(uri, run_id)
        if current == "RUNNING" or (state is JobState.CANCELLED and current != "KILLED"):
            close(uri, run_id, state.mlflow_status, reason)
            return True
    except TrainerError as e:
        log.warning("closing MLflow run %s in %s as %s failed", run_id, redact(uri), state.mlflow_status,
                    exc_info=True)
        _left_open(run_id, uri, state, first_line(e), warn)
    return False


def _left_open(run_id: str, uri: str, state: JobState, why: str, warn) -> None:
    log.warning("MLflow run %s in %s left open (job %s): %s", run_id, redact(uri), state.value, why)
    say(warn, f"warning: MLflow run {run_id} could not be closed as {state.mlflow_status} ({why}); "
              f"`trainer list` closes it once {redact(uri)} answers")


def last_metrics(uri: str, run_id: str) -> dict[str, float]:
    """The last value of every metric the run logged, by the user's own names, rounded for reading."""
    from trainer.tracking.runs import client

    with translate(TrackingError, f"cannot read the metrics of MLflow run {run_id} in {redact(uri)}",
                   redact=redact_text):
        metrics = client(uri).get_run(run_id).data.metrics
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in sorted(metrics.items())}


# Kept at the summary's top level too, as before `metrics` held every one (scripts read them there).
SUMMARY_METRICS = ("test_accuracy", "accuracy", "loss")


def run_summary(uri: str, run_id: str) -> dict:
    """From a run: its page in a running MLflow UI, the last value of every metric it logged
    (`metrics`, by the user's own names; the headline ones also at the top level), the cost
    its driver recorded (`cost`: CPU- and GPU-seconds, priced with a price table), the
    conversion outcome (`trainer.runners.job.conversion_summary`), and the model version it
    registered (`registered`: model, version, reference, digest). Best effort: what cannot be
    read is left out."""
    from trainer.tracking.runs import run_url

    out: dict = {}
    url = run_url(uri, run_id)
    if url:
        out["mlflow_url"] = url
    try:
        metrics = last_metrics(uri, run_id)
    except TrainerError:
        metrics = {}        # best effort, as documented: the summary goes without them
    out.update({k: metrics[k] for k in SUMMARY_METRICS if k in metrics})
    if metrics:
        out["metrics"] = metrics
    out.update(conversion_of(uri, run_id))
    try:
        from trainer.tracking.record import recorded_cost
        from trainer.tracking.runs import client

        with translate(TrackingError, f"cannot read MLflow run {run_id} in {redact(uri)}", redact=redact_text):
            cost = recorded_cost(client(uri).get_run(run_id).data.tags)
    except TrainerError:
        cost = None
    if cost:
        out["cost"] = cost
    try:
        registered = registered_version(uri, run_id)
    except TrainerError:
        registered = None
    if registered:
        out["registered"] = registered
    return out


def conversion_of(uri: str, run_id: str, warn: Callable[[str], None] | None = None) -> dict:
    """{"conversion": the run's conversion outcome (`trainer.runners.job.conversion_summary`)},
    or {} when it has none or it cannot be read (said through `warn`)."""
    from trainer.runners.job import conversion_summary
    from trainer.tracking.runs import conversion_report

    try:
        conversion = conversion_summary(conversion_report(uri, run_id))
    except TrainerError as e:
        say(warn, f"warning: the conversion report of MLflow run {run_id} could not be read: {first_line(e)}")
        return {}
    return {"conversion": conversion} if conversion else {}


def registered_version(uri: str, run_id: str) -> dict | None:
    """The model version the run registered: {model, version, reference, digest} (reference and
    digest of its `dev/` registry artifact, None in MLflow only), or None."""
    from trainer.promotion.registration import client, registered_version as find

    with translate(TrackingError, f"cannot read the model version of MLflow run {run_id} in {redact(uri)}",
                   redact=redact_text):
        return find(client(uri), run_id)
