"""The MLflow run of a job: created at submit time (so it exists even if the job dies early),
closed by the job's driver, repaired by the client when a job was cancelled or killed."""
from __future__ import annotations

import json
from typing import TYPE_CHECKING

from trainer.errors import TrackingError, translate
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

MAX_PARAM_LEN = 6000


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
    with translate(TrackingError, f"cannot create the job's run in the MLflow store {uri}"):
        return _start_run(spec, job_id, uri, address, fingerprint)


def _start_run(spec: "JobSpec", job_id: str, uri: str, address: str, fingerprint: "Fingerprint | None") -> str:
    from mlflow.entities import Dataset, DatasetInput, InputTag, Param

    mlc = client(uri)
    run = mlc.create_run(
        experiment_id(mlc, spec.experiment, uri),
        run_name=job_id,
        tags={TAG_JOB_ID: job_id, TAG_JOB_NAME: spec.name, TAG_FRAMEWORK: spec.framework,
              TAG_ADDRESS: address, TAG_SPEC: spec.model_dump_json(exclude_none=True)[:MAX_PARAM_LEN],
              "mlflow.source.name": spec.entrypoint},
    )
    params = {**{k: v for k, v in spec.config.items()},
              "trainer.workers": spec.workers, "trainer.framework": spec.framework,
              "trainer.accelerator": spec.resources.accelerator,
              "trainer.cpus_per_worker": spec.resources.cpus_per_worker,
              "trainer.gpus_per_worker": spec.resources.gpus_per_worker,
              "trainer.max_failures": spec.failure.max_failures}
    mlc.log_batch(run.info.run_id, params=[
        Param(k, (v if isinstance(v, str) else json.dumps(v))[:MAX_PARAM_LEN]) for k, v in params.items()])
    if fingerprint is not None:
        # MLflow caps a dataset digest at 36 characters; the full sha256 goes in the profile.
        dataset = Dataset(name=fingerprint.name, digest=fingerprint.digest[:32], source_type="local",
                          source=json.dumps({"uri": fingerprint.source}),
                          profile=json.dumps({"sha256": fingerprint.digest, "files": fingerprint.files,
                                              "bytes": fingerprint.bytes}))
        mlc.log_inputs(run.info.run_id, datasets=[
            DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "training")])])
    return run.info.run_id


def finish_run(uri: str, run_id: str, status: str) -> None:
    """status: FINISHED | FAILED | KILLED."""
    with translate(TrackingError, f"cannot close MLflow run {run_id} in {uri}"):
        client(uri).set_terminated(run_id, status=status)


def run_status(uri: str, run_id: str) -> str:
    with translate(TrackingError, f"cannot read MLflow run {run_id} from {uri}"):
        return client(uri).get_run(run_id).info.status


def metrics_frame(uri: str, run_id: str):
    """Every logged metric value of a run, one row per (key, step): a pandas DataFrame."""
    import pandas as pd

    mlc = client(uri)
    rows = []
    with translate(TrackingError, f"cannot read the metrics of MLflow run {run_id} from {uri}"):
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
