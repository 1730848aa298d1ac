"""The MLflow run of a job: created at submit time (so it exists even if the job dies early),
closed by the job's driver, repaired by the client when a job was cancelled or killed, or when
its submission never completed (`open_runs` + `close_run`, driven by `trainer.api.reconcile_runs`).

Credentials never reach the store: the URIs recorded in tags (the cluster's address, the spec)
and every error message here go through `trainer.credentials.redact`."""
from __future__ import annotations

import json
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

from trainer.credentials import redact, redact_text
from trainer.errors import TrackingError, TrainerError, first_line
from trainer.home import default_artifact_root, default_tracking_uri, resolve_tracking_uri, trainer_home

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from trainer.data import Fingerprint
    from trainer.spec import JobSpec

# Tags that link a run to its Ray job; `trainer list` and the API read them back.
TAG_JOB_ID = "trainer.job_id"
TAG_JOB_NAME = "trainer.job_name"
TAG_FRAMEWORK = "trainer.framework"
TAG_ADDRESS = "trainer.ray_address"
TAG_SPEC = "trainer.spec"
# Set when a restarted job passed over an unreadable checkpoint: which, why, and where it resumed.
TAG_RESTORE_FALLBACK = "trainer.restore_fallback"
# Set when the client (not the job's driver) ended the run: why.
TAG_CLOSED_BY_CLIENT = "trainer.closed_by_client"

MAX_PARAM_LEN = 6000


@contextmanager
def _mlflow_errors(message: str) -> Iterator[None]:
    """MLflow's errors as one-line TrackingErrors with credentials masked: MLflow's own messages
    quote the request URL, `user:password@` included."""
    try:
        yield
    except TrainerError:
        raise
    except Exception as e:
        text = f"{message}: {first_line(e)}"
        shown = redact_text(text)
        raise TrackingError(shown) from (e if shown == text else None)   # the cause would show the secret


def tracking_uri(spec: "JobSpec | None" = None) -> str:
    return resolve_tracking_uri(spec.tracking.uri if spec is not None else None)


def is_embedded(uri: str) -> bool:
    return uri.startswith("sqlite:///") or uri.startswith("file:") or "://" not in uri


def client(uri: str) -> "MlflowClient":
    from mlflow import MlflowClient

    if uri.startswith("sqlite:///"):
        trainer_home().mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(mlc: "MlflowClient", name: str, uri: str) -> str:
    exp = mlc.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    # Embedded store: keep artifacts under $TRAINER_HOME, not in the caller's cwd (./mlruns).
    location = f"{default_artifact_root()}/{name}" if uri == default_tracking_uri() else None
    try:
        return mlc.create_experiment(name, artifact_location=location)
    except Exception:  # created concurrently by another submit
        exp = mlc.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def start_run(spec: "JobSpec", job_id: str, uri: str, address: str,
              fingerprint: "Fingerprint | None") -> str:
    """Create the job's run with params, tags and its dataset; return the run id."""
    with _mlflow_errors(f"cannot create the job's run in the MLflow store {redact(uri)}"):
        return _start_run(spec, job_id, uri, address, fingerprint)


def _start_run(spec: "JobSpec", job_id: str, uri: str, address: str, fingerprint: "Fingerprint | None") -> str:
    from mlflow.entities import Dataset, DatasetInput, InputTag, Param

    mlc = client(uri)
    run = mlc.create_run(
        experiment_id(mlc, spec.experiment, uri),
        run_name=job_id,
        tags={TAG_JOB_ID: job_id, TAG_JOB_NAME: spec.name, TAG_FRAMEWORK: spec.framework,
              TAG_ADDRESS: redact(address),
              TAG_SPEC: redact_text(spec.model_dump_json(exclude_none=True))[:MAX_PARAM_LEN],
              "mlflow.source.name": spec.entrypoint},
    )
    params = {**{k: v for k, v in spec.config.items()},
              "trainer.workers": spec.workers, "trainer.framework": spec.framework,
              "trainer.accelerator": spec.resources.accelerator,
              "trainer.cpus_per_worker": spec.resources.cpus_per_worker,
              "trainer.gpus_per_worker": spec.resources.gpus_per_worker,
              "trainer.max_failures": spec.failure.max_failures}
    mlc.log_batch(run.info.run_id, params=[
        Param(k, redact_text(v if isinstance(v, str) else json.dumps(v))[:MAX_PARAM_LEN]) for k, v in params.items()])
    if fingerprint is not None:
        # MLflow caps a dataset digest at 36 characters; the full sha256 goes in the profile.
        dataset = Dataset(name=fingerprint.name, digest=fingerprint.digest[:32], source_type="local",
                          source=json.dumps({"uri": fingerprint.source}),
                          profile=json.dumps({"sha256": fingerprint.digest, "files": fingerprint.files,
                                              "bytes": fingerprint.bytes}))
        mlc.log_inputs(run.info.run_id, datasets=[
            DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "training")])])
    return run.info.run_id


@contextmanager
def logging_into(uri: str, run_id: str) -> Iterator[None]:
    """Make `run_id` MLflow's active run for the block (its `log_model` works only through the
    fluent API), whatever experiment a notebook (or an earlier test) made active in this process:
    start_run refuses a run of another experiment, so the run's own is active inside the block and
    the caller's is put back after. The run stays RUNNING afterwards: the job's driver owns its
    final status."""
    import mlflow
    from mlflow.tracking import fluent

    saved_experiment = fluent._active_experiment_id
    mlflow.set_tracking_uri(uri)
    fluent._active_experiment_id = client(uri).get_run(run_id).info.experiment_id
    try:
        with mlflow.start_run(run_id=run_id):
            yield
        client(uri).update_run(run_id, status="RUNNING")
    finally:
        fluent._active_experiment_id = saved_experiment


def finish_run(uri: str, run_id: str, status: str) -> None:
    """status: FINISHED | FAILED | KILLED."""
    with _mlflow_errors(f"cannot close MLflow run {run_id} in {redact(uri)}"):
        client(uri).set_terminated(run_id, status=status)


def close_run(uri: str, run_id: str, status: str, reason: str) -> None:
    """End a run from the client (its driver never will), saying why in TAG_CLOSED_BY_CLIENT."""
    with _mlflow_errors(f"cannot close MLflow run {run_id} in {redact(uri)}"):
        mlc = client(uri)
        mlc.set_tag(run_id, TAG_CLOSED_BY_CLIENT, redact_text(reason)[:MAX_PARAM_LEN])
        mlc.set_terminated(run_id, status=status)


def run_status(uri: str, run_id: str) -> str:
    with _mlflow_errors(f"cannot read MLflow run {run_id} from {redact(uri)}"):
        return client(uri).get_run(run_id).info.status


def open_runs(uri: str, address: str) -> list[dict]:
    """Runs still RUNNING in the store that were submitted to the cluster at `address`:
    [{"run_id", "job_id", "start_time" (s)}], across every experiment."""
    with _mlflow_errors(f"cannot search the MLflow store {redact(uri)}"):
        mlc = client(uri)
        experiments = [e.experiment_id for e in mlc.search_experiments()]
        where = (f"attributes.status = 'RUNNING' and tags.`{TAG_ADDRESS}` = '{_quoted(redact(address))}'")
        found = []
        for start in range(0, len(experiments), 100):   # MLflow takes up to 100 experiments per search
            token = None
            while True:
                page = mlc.search_runs(experiments[start:start + 100], filter_string=where, max_results=1000,
                                       page_token=token)
                found.extend(page)
                token = page.token
                if not token:
                    break
    return [{"run_id": r.info.run_id, "job_id": r.data.tags.get(TAG_JOB_ID),
             "start_time": (r.info.start_time or 0) / 1000} for r in found if r.data.tags.get(TAG_JOB_ID)]


def open_run_of_job(uri: str, job_id: str) -> dict | None:
    """The RUNNING run tagged with Ray job `job_id` (any cluster), as `open_runs` gives it, or None."""
    with _mlflow_errors(f"cannot search the MLflow store {redact(uri)}"):
        mlc = client(uri)
        experiments = [e.experiment_id for e in mlc.search_experiments()]
        where = f"attributes.status = 'RUNNING' and tags.`{TAG_JOB_ID}` = '{_quoted(job_id)}'"
        for start in range(0, len(experiments), 100):
            for r in mlc.search_runs(experiments[start:start + 100], filter_string=where, max_results=1):
                return {"run_id": r.info.run_id, "job_id": job_id, "start_time": (r.info.start_time or 0) / 1000}
    return None


def _quoted(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def metrics_frame(uri: str, run_id: str):
    """Every logged metric value of a run, one row per (key, step): a pandas DataFrame."""
    import pandas as pd

    mlc = client(uri)
    rows = []
    with _mlflow_errors(f"cannot read the metrics of MLflow run {run_id} from {redact(uri)}"):
        for key in mlc.get_run(run_id).data.metrics:
            for m in mlc.get_metric_history(run_id, key):
                rows.append({"key": m.key, "step": m.step, "value": m.value, "timestamp": m.timestamp})
    frame = pd.DataFrame(rows, columns=["key", "step", "value", "timestamp"])
    return frame.sort_values(["key", "step", "timestamp"]).reset_index(drop=True)


def find_run(uri: str, experiment: str, job_id: str) -> str | None:
    """The run recorded for `job_id`, if any (a retried RayJob's driver finds its first run)."""
    mlc = client(uri)
    exp = mlc.get_experiment_by_name(experiment)
    if exp is None:
        return None
    found = mlc.search_runs([exp.experiment_id], filter_string=f"tags.`{TAG_JOB_ID}` = '{job_id}'", max_results=1)
    return found[0].info.run_id if found else None


def record_failure(uri: str, run_id: str, tags: dict[str, str], logs: dict[str, str]) -> None:
    """What Kubernetes said about a failed job, kept in its run: tags (reason, message, statuses)
    and the pods' logs as artifacts under `kubernetes/`; the run ends FAILED if still open."""
    mlc = client(uri)
    for key, value in tags.items():
        mlc.set_tag(run_id, key, str(value)[:MAX_PARAM_LEN])
    for pod, text in logs.items():
        mlc.log_text(run_id, text, f"kubernetes/{pod}.log")
    if mlc.get_run(run_id).info.status == "RUNNING":
        mlc.set_terminated(run_id, status="FAILED")
