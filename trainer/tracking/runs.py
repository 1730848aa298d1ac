"""The MLflow run of a job: created at submit time (so it exists even if the job dies early),
closed by the job's driver, repaired by the client when a job was cancelled or killed, or when
its submission never completed (`open_runs` + `close_run`, driven by `trainer.api.reconcile_runs`).

Credentials never reach the store: the URIs recorded in tags (the cluster's address, the spec)
and every error message here go through `trainer.credentials.redact`."""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

from trainer.credentials import redact, redact_text
from trainer.errors import TrackingError, TrainerError, first_line
from trainer.home import default_artifact_root, default_tracking_uri, resolve_tracking_uri, trainer_home
from trainer.tracking import preload

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

# A failed job, in the user's terms (trainer.runners.job.failure_record): one line, and its parts.
TAG_FAILURE = "trainer.failure"
FAILURE_FIELDS = ("type", "message", "where", "function", "code", "rank", "node", "epoch", "stage")
FAILURE_ARTIFACT = "failure/failure.json"
# MLflow 3's experiment type ("Machine learning" in the UI, which then opens on training runs, not
# on the GenAI traces view); `mlflow.note.content` is a run's (and an experiment's) description.
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND_TRAINING = "custom_model_development"
TAG_NOTE = "mlflow.note.content"

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
    preload.wait()          # MLflow is imported by one thread at a time (trainer.tracking.preload)
    from mlflow import MlflowClient

    if uri.startswith("sqlite:///") and uri not in _OPENED:
        trainer_home().mkdir(parents=True, exist_ok=True)
        with _first_open(uri):
            mlc = MlflowClient(tracking_uri=uri, registry_uri=uri)
        _OPENED.add(uri)
        return mlc
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


_OPENED: set[str] = set()     # the SQLite stores this process has opened (their tables exist)


@contextmanager
def _first_open(uri: str) -> Iterator[None]:
    """MLflow makes a SQLite store's tables, and runs its migrations, when a process first opens
    the file (in MlflowClient's constructor); two processes doing that at once on a new file fail
    ("duplicate column name", alembic's "expected to match one row"): two first `trainer submit`s
    on a fresh machine, a notebook and a CLI. So a process's first open of a store holds an
    exclusive lock on a file beside it (`<db>.lock`): the next finds the tables made."""
    import fcntl
    from pathlib import Path

    db = Path(uri[len("sqlite:///"):])
    if not db.parent.is_dir():      # MLflow's own error then, from the constructor
        yield
        return
    with open(db.with_name(db.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def experiment_id(mlc: "MlflowClient", name: str, uri: str) -> str:
    exp = mlc.get_experiment_by_name(name)
    if exp is not None:
        if TAG_EXPERIMENT_KIND not in (exp.tags or {}):   # made before trainer set it; a user's choice stays
            mlc.set_experiment_tag(exp.experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND_TRAINING)
        return exp.experiment_id
    # Embedded store: keep artifacts under $TRAINER_HOME, not in the caller's cwd (./mlruns).
    location = f"{default_artifact_root()}/{name}" if uri == default_tracking_uri() else None
    try:
        return mlc.create_experiment(name, artifact_location=location,
                                     tags={TAG_EXPERIMENT_KIND: EXPERIMENT_KIND_TRAINING,
                                           TAG_NOTE: "Training runs submitted by trainer (one run per job)."})
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
    preload.wait()
    from mlflow.entities import Dataset, DatasetInput, InputTag, Param

    mlc = client(uri)
    run = mlc.create_run(
        experiment_id(mlc, spec.experiment, uri),
        run_name=job_id,
        tags={TAG_JOB_ID: job_id, TAG_JOB_NAME: spec.name, TAG_FRAMEWORK: spec.framework,
              TAG_ADDRESS: redact(address),
              TAG_SPEC: redact_text(spec.model_dump_json(exclude_none=True))[:MAX_PARAM_LEN],
              "mlflow.source.name": spec.entrypoint, TAG_NOTE: describe(spec, job_id)},
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
    preload.wait()
    import mlflow
    from mlflow.tracking import fluent

    saved_experiment = fluent._active_experiment_id
    with global_store(uri):
        fluent._active_experiment_id = client(uri).get_run(run_id).info.experiment_id
        try:
            with mlflow.start_run(run_id=run_id):
                yield
            client(uri).update_run(run_id, status="RUNNING")
        finally:
            fluent._active_experiment_id = saved_experiment


@contextmanager
def global_store(uri: str) -> Iterator[None]:
    """MLflow's process-wide tracking URI set to `uri` for the block: MLflow 3 resolves `models:/`
    and `runs:/` URIs in some calls (`create_model_version`'s source, `download_artifacts`) with it,
    whatever URI their client was given. The caller's URI and $MLFLOW_TRACKING_URI are put back
    exactly after: `mlflow.set_tracking_uri` also writes the variable (for subprocesses), and
    MLflow's own `_use_tracking_uri` unsets one it did not set. A URI left behind would send every
    later command of the process, and every process it starts, to this store."""
    preload.wait()
    from mlflow.tracking._tracking_service import utils

    saved_uri, saved_env = utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
    utils.set_tracking_uri(uri)
    try:
        yield
    finally:
        utils.set_tracking_uri(saved_uri)
        if saved_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved_env


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
    with _mlflow_errors(f"cannot record the failure in MLflow run {run_id} in {redact(uri)}"):
        mlc = client(uri)
        for key, value in tags.items():
            mlc.set_tag(run_id, key, str(value)[:MAX_PARAM_LEN])
        for pod, text in logs.items():
            mlc.log_text(run_id, text, f"kubernetes/{pod}.log")
        if mlc.get_run(run_id).info.status == "RUNNING":
            mlc.set_terminated(run_id, status="FAILED")


# ---------------------------------------------------------------- the run's story

def describe(spec: "JobSpec", job_id: str, *, outcome: str | None = None, failure: dict | None = None,
             conversion: dict | None = None) -> str:
    """The run's description (Markdown, shown at the top of its page in the MLflow UI): what ran,
    how it ended, what the conversion gave and where its report is."""
    res = spec.resources
    gpus = f", {res.gpus_per_worker:g} GPU" if res.gpus_per_worker else ""
    lines = [f"**{spec.name}** (job `{job_id}`): {spec.framework}, {spec.workers} worker(s) on "
             f"`{res.accelerator}` nodes ({res.cpus_per_worker:g} CPU{gpus} each), entrypoint `{spec.entrypoint}`.",
             ""]
    if spec.config:
        lines += ["Config: " + ", ".join(f"`{k}={json.dumps(v)}`" for k, v in spec.config.items())[:1000], ""]
    if outcome is None:
        lines.append("Status: running.")
    else:
        lines.append(f"Outcome: **{outcome}**.")
    if failure:
        lines += ["", f"Failed: {failure_line(failure)}", "",
                  f"Details: the `{TAG_FAILURE}.*` tags and `{FAILURE_ARTIFACT}` (traceback included)."]
    if conversion:
        lines += ["", f"Conversion: **{conversion['status']}** "
                  f"({'; '.join(t['target'] + ': ' + t['verdict'] + ', ' + t['figure'] for t in conversion['targets'])})."
                  f" Report: `conversion/report.md` and `conversion/report.png` in the artifacts."]
    return redact_text("\n".join(lines))[:MAX_PARAM_LEN * 2]


def set_description(uri: str, run_id: str, text: str) -> None:
    with _mlflow_errors(f"cannot describe MLflow run {run_id} in {redact(uri)}"):
        client(uri).set_tag(run_id, TAG_NOTE, text)


def failure_line(failure: dict) -> str:
    """`ValueError: bad batch (at train.py:12 in train; rank 1 on node 10.0.0.5; last epoch 1)`."""
    head = failure.get("type") or "error"
    if failure.get("message"):
        head += f": {failure['message']}"
    where = []
    if failure.get("where"):
        where.append(f"at {failure['where']}" + (f" in {failure['function']}" if failure.get("function") else ""))
    if failure.get("rank") is not None:
        where.append(f"rank {failure['rank']}" + (f" on node {failure['node']}" if failure.get("node") else ""))
    elif failure.get("node"):
        where.append(f"node {failure['node']}")
    if failure.get("epoch") is not None:
        where.append(f"last epoch {failure['epoch']}")
    elif failure.get("stage") and failure["stage"] != "training":
        where.append(f"during {failure['stage']}")
    return head + (f" ({'; '.join(where)})" if where else "")


def record_job_failure(uri: str, run_id: str, failure: dict) -> None:
    """A failed job in the user's terms, on its run: `trainer.failure` (one line) and
    `trainer.failure.<field>` tags, and `failure/failure.json` (every failed rank, tracebacks)."""
    with _mlflow_errors(f"cannot record the failure in MLflow run {run_id} in {redact(uri)}"):
        mlc = client(uri)
        tags = {TAG_FAILURE: failure_line(failure)}
        tags.update({f"{TAG_FAILURE}.{k}": str(failure[k]) for k in FAILURE_FIELDS if failure.get(k) is not None})
        from mlflow.entities import RunTag

        mlc.log_batch(run_id, tags=[RunTag(k, redact_text(v)[:MAX_PARAM_LEN]) for k, v in tags.items()])
        mlc.log_text(run_id, redact_text(json.dumps(failure, indent=2, default=str)), FAILURE_ARTIFACT)


def read_failure(uri: str, run_id: str) -> dict | None:
    """The failure recorded on the run (its tags), or None."""
    with _mlflow_errors(f"cannot read MLflow run {run_id} from {redact(uri)}"):
        tags = client(uri).get_run(run_id).data.tags
    if TAG_FAILURE not in tags:
        return None
    out: dict = {k: tags[f"{TAG_FAILURE}.{k}"] for k in FAILURE_FIELDS if f"{TAG_FAILURE}.{k}" in tags}
    for k in ("rank", "epoch"):
        if k in out:
            try:
                out[k] = int(out[k])
            except ValueError:
                pass
    out["summary"] = tags[TAG_FAILURE]
    return out


def conversion_report(uri: str, run_id: str) -> dict | None:
    """The run's conversion report (`conversion/report.json`, as `converters` wrote it), with the
    run's artifact URI, or None when the run has no conversion."""
    import tempfile
    from pathlib import Path

    mlc = client(uri)
    with _mlflow_errors(f"cannot read the conversion report of MLflow run {run_id} from {redact(uri)}"):
        if not any(a.path == "conversion/report.json" for a in mlc.list_artifacts(run_id, "conversion")):
            return None
        with tempfile.TemporaryDirectory() as tmp:
            local = mlc.download_artifacts(run_id, "conversion/report.json", tmp)
            report = json.loads(Path(local).read_text())
        report["artifact_uri"] = f"{mlc.get_run(run_id).info.artifact_uri.rstrip('/')}/conversion"
    return report


def run_url(uri: str, run_id: str) -> str | None:
    """The run's page in an MLflow UI that is running now: the tracking server itself, or for the
    embedded store the local server (`trainer ui` / `trainer mlflow serve`), in the UI's "Model
    training" view. None when there is none."""
    from trainer.home import default_tracking_uri

    base = None
    if uri.startswith(("http://", "https://")):
        base = redact(uri).rstrip("/")
    elif uri == default_tracking_uri():
        from trainer.tracking.server import find

        state = find()
        base = state.url if state is not None else None
    if base is None:
        return None
    try:
        exp = client(uri).get_run(run_id).info.experiment_id
    except Exception:  # noqa: BLE001 - a link is a convenience
        return None
    # The UI's workflow switch (GenAI | Model training) defaults to GenAI; this opens the latter.
    return f"{base}/#/experiments/{exp}/runs/{run_id}?workflowType=machine_learning"
