"""A job's record, read from MLflow only (so after `trainer cluster down`, after Ray's temp dir is
gone, after a KubeRay RayCluster was deleted): `inspect`, the fall-back of `trainer status` and
`trainer logs`, and `rerun` (the recorded spec with the recorded code, on any cluster).

The record itself is written by the job's driver: `trainer.tracking.record`."""
from __future__ import annotations

from typing import Callable

from trainer.api.handle import run_summary
from trainer.credentials import redact
from trainer.errors import JobError, TrackingError, translate
from trainer.protocol import LogFilter
from trainer.state import JobState

LOG_LINES = 20
_STATE = {"RUNNING": JobState.RUNNING, "SCHEDULED": JobState.PENDING, "FINISHED": JobState.SUCCEEDED,
          "FAILED": JobState.FAILED, "KILLED": JobState.CANCELLED}


def _uri(tracking_uri: str | None) -> str:
    from trainer.home import resolve_tracking_uri

    return resolve_tracking_uri(tracking_uri)


def inspect_run(ref: str, *, tracking_uri: str | None = None, log_lines: int = LOG_LINES) -> dict:
    """Everything the run of job (or run) `ref` recorded: status and why, the failure in the
    user's terms, the timeline and worker groups, where it ran, the cost, the last `log_lines`
    lines of its log (filtered as `trainer logs` filters), every metric's last value and how many
    steps it has, the conversion and the registered version."""
    from trainer.tracking import record, runs

    uri = _uri(tracking_uri)
    with translate(TrackingError, f"cannot read the record of {ref} from {redact(uri)}"):
        run = record.find_run(uri, ref)
        run_id = run.info.run_id
        tags = run.data.tags
        found = record.read_record(uri, run_id)
        mlc = runs.client(uri)
        steps = {k: len(mlc.get_metric_history(run_id, k)) for k in run.data.metrics}
    state = _STATE.get(run.info.status, JobState.PENDING)
    out: dict = {"job_id": tags.get(runs.TAG_JOB_ID), "run_id": run_id, "name": tags.get(runs.TAG_JOB_NAME),
                 "status": state.value, "source": "MLflow record"}
    failure = runs.read_failure(uri, run_id)
    if tags.get(runs.TAG_CLOSED_BY_CLIENT):
        out["reason"] = tags[runs.TAG_CLOSED_BY_CLIENT]
    elif failure:
        out["reason"] = failure["summary"]
    if failure:
        out["failure"] = failure
    out["start_time"] = (run.info.start_time or 0) / 1000 or None
    out["end_time"] = (run.info.end_time or 0) / 1000 or None
    timeline = found["timeline"] or {}
    out["timeline"] = timeline.get("events", [])
    out["groups"] = timeline.get("groups", [])
    out["where"] = timeline.get("where", {})
    out["cost"] = record.priced(timeline.get("cost"))
    text = found["log"]
    out["log_tail"] = LogFilter().text(text).splitlines()[-log_lines:] if text else []
    out["log_recorded"] = text is not None
    out.update({k: v for k, v in run_summary(uri, run_id).items()
                if k in ("metrics", "conversion", "mlflow_url", "registered")})
    out["steps"] = steps
    out["code_digest"] = tags.get(record.TAG_CODE_DIGEST)
    from trainer.promotion.registration import run_data_digest

    out["data_digest"] = run_data_digest(mlc, run)
    if tags.get(record.TAG_RERUN_OF):
        out["rerun_of"] = tags[record.TAG_RERUN_OF]
    return out


def find_recorded_run(ref: str, *, tracking_uri: str | None = None) -> str:
    """The run id of job (or run) `ref` in the store; TrackingError when there is none."""
    from trainer.tracking import record

    uri = _uri(tracking_uri)
    with translate(TrackingError, f"cannot search {redact(uri)}"):
        return record.find_run(uri, ref).info.run_id


def recorded(job_id: str, *, tracking_uri: str | None = None) -> dict | None:
    """`inspect(job_id)` when this machine's store has a run for the job, else None: what
    `trainer status` and `trainer logs` fall back to when the cluster no longer knows the job."""
    from trainer.api._common import store_reachable

    uri = _uri(tracking_uri)
    if not store_reachable(uri):
        return None
    try:
        return inspect_run(job_id, tracking_uri=uri, log_lines=10**9)
    except TrackingError:
        return None


def recorded_log(job_id: str, *, tracking_uri: str | None = None) -> str | None:
    """The job's log as its run recorded it (unfiltered), or None."""
    from trainer.tracking import record

    uri = _uri(tracking_uri)
    from trainer.api._common import store_reachable

    if not store_reachable(uri):
        return None
    try:
        run = record.find_run(uri, job_id)
        return record.read_record(uri, run.info.run_id)["log"]
    except TrackingError:
        return None


# ---------------------------------------------------------------- rerun

def rerun(ref: str, *, set: list[str] | None = None, allow_data_change: bool = False, address: str | None = None,
          tracking_uri: str | None = None, progress: Callable[[str], None] | None = None):
    """Submit run `ref`'s recorded spec (with `set` overrides) and recorded code again; the new
    run is tagged `trainer.rerun_of`. Refused (JobError) when the data no longer has the digest
    the run recorded, unless `allow_data_change`. Returns the new Job."""
    from trainer.api._common import say
    from trainer.api.jobs import submit
    from trainer.data import fingerprint
    from trainer.home import trainer_home
    from trainer.promotion.registration import run_data_digest
    from trainer.spec import load_spec
    from trainer.tracking import record, runs

    uri = _uri(tracking_uri)
    with translate(TrackingError, f"cannot read the record of {ref} from {redact(uri)}"):
        run = record.find_run(uri, ref)
        run_id = run.info.run_id
        spec = record.read_record(uri, run_id)["spec"]
        if spec is None:
            raise TrackingError(f"MLflow run {run_id} has no recorded spec (record/spec.json): its driver did "
                                f"not record it")
        code = record.fetch_code(uri, run_id, trainer_home() / "code")
        recorded_digest = run_data_digest(runs.client(uri), run)
    say(progress, f"rerunning {run_id} with its code {run.data.tags.get(record.TAG_CODE_DIGEST, '')[:12]}")
    spec_obj, _ = load_spec(spec, set)
    if spec_obj.data is not None and recorded_digest:
        now = fingerprint(spec_obj.data.path, code).digest
        if now != recorded_digest and not allow_data_change:
            raise JobError(f"data.path {spec_obj.data.path} changed since run {run_id} trained on it: its digest "
                           f"is now {now[:12]}, the run recorded {recorded_digest[:12]}; not rerunning on other "
                           f"data (--allow-data-change runs it anyway)")
    job = submit(spec_obj, address=address, progress=progress, workdir=code)
    with translate(TrackingError, f"cannot tag MLflow run {job.run_id} in {redact(uri)}"):
        runs.client(job._store() or uri).set_tag(job.run_id, record.TAG_RERUN_OF, run_id)
    return job


def compare_runs(old_run: str, new_run: str, *, tracking_uri: str | None = None) -> list[dict]:
    """Per metric both runs logged: the last values and their difference, and the largest
    difference at any step both logged ({"key", "old", "new", "diff", "max_step_diff", "steps"})."""
    from trainer.tracking.runs import metrics_frame

    uri = _uri(tracking_uri)
    a, b = metrics_frame(uri, old_run), metrics_frame(uri, new_run)
    out = []
    for key in sorted(set(a["key"]) & set(b["key"])):
        x = a[a["key"] == key].groupby("step")["value"].last()
        y = b[b["key"] == key].groupby("step")["value"].last()
        both = x.index.intersection(y.index)
        out.append({"key": key, "old": float(x.iloc[-1]), "new": float(y.iloc[-1]),
                    "diff": float(y.iloc[-1] - x.iloc[-1]),
                    "max_step_diff": float((x[both] - y[both]).abs().max()) if len(both) else None,
                    "steps": int(len(both))})
    return out
