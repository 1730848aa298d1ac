"""The Python API: what the CLI, notebooks, CI and benchmarks call.

    import trainer
    job = trainer.submit("examples/digits/torch.yaml", config={"epochs": 5})
    job.wait()
    job.metrics()          # pandas DataFrame from MLflow
"""
from __future__ import annotations

import json
import os
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from trainer.credentials import redact
from trainer.errors import JobError, PreflightError, TrackingError, TrainerError, first_line
from trainer.spec import JobSpec, load_spec
from trainer.state import JobState

ENV_ADDRESS = "TRAINER_ADDRESS"
# A RUNNING run with no Ray job is closed by `reconcile_runs` only once it is this old: younger,
# its submission may still be uploading the code.
RECONCILE_GRACE_S = 600.0


# ---------------------------------------------------------------- clusters

def resolve_address(address: str | None) -> str | None:
    """An explicit address, else $TRAINER_ADDRESS, else None (= the embedded local cluster)."""
    address = address or os.environ.get(ENV_ADDRESS) or None
    if address and "://" not in address:
        address = f"http://{address}"
    return address


def cluster_up(nodes: list[str] | None = None, progress: Callable[[str], None] | None = None):
    """Start the local cluster (or reuse it). `nodes` are `ACCEL:CPUS[:GPUS]` strings."""
    from trainer.cluster.local import LocalCluster, NodeSpec

    specs = [NodeSpec.parse(n) for n in nodes] if nodes else None
    return LocalCluster().up(specs, progress=progress)


def cluster_down() -> int:
    from trainer.cluster.local import LocalCluster

    return LocalCluster().down()


def cluster_status(address: str | None = None) -> dict:
    """Nodes (labels, total and free resources) of the given cluster or the local one."""
    from trainer.cluster.inventory import nodes
    from trainer.cluster.local import LocalCluster

    address = resolve_address(address)
    if address is None:
        state = LocalCluster().state()
        if state is None:
            return {"running": False, "address": None, "nodes": []}
        address = state.dashboard_url
    return {"running": True, "address": redact(address), "nodes": [n.to_dict() for n in nodes(address)]}


def _cluster_address(address: str | None, progress=None) -> tuple[str, bool]:
    """(dashboard address, is_local). Starts the local cluster when no address is given."""
    address = resolve_address(address)
    if address is not None:
        return address, False
    state, _ = cluster_up(progress=progress)
    return state.dashboard_url, True


# ---------------------------------------------------------------- jobs

@dataclass
class Job:
    """A submitted job: a Ray job plus the MLflow run that records it."""

    id: str
    address: str
    run_id: str | None = None
    tracking_uri: str | None = None        # without credentials (as recorded): see _client_uri
    name: str | None = None
    spec: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def get(cls, job_id: str, address: str | None = None) -> "Job":
        address = resolve_address(address) or _local_address()
        from trainer.scheduling.ray_jobs import RayJobs

        try:
            info = RayJobs(address).info(job_id)
        except JobError:
            _lost_to_a_restart(job_id, address)
            raise
        meta = info.metadata or {}
        return cls(id=job_id, address=address, run_id=meta.get("run_id"),
                   tracking_uri=meta.get("tracking_uri"), name=meta.get("name"),
                   spec=json.loads(meta.get("spec", "{}")))

    def _jobs(self):
        from trainer.scheduling.ray_jobs import RayJobs

        return RayJobs(self.address)

    def status(self) -> JobState:
        state = self._jobs().state(self.id)
        if state.is_terminal:
            self._close_run(state)
        return state

    def info(self) -> dict:
        info = self._jobs().info(self.id)
        state = JobState.from_ray(info.status)
        if state.is_terminal:
            self._close_run(state)
        out = {"job_id": self.id, "status": state.value, "name": self.name, "address": redact(self.address),
               "run_id": self.run_id, "tracking_uri": redact(self.tracking_uri), "message": info.message,
               "start_time": _seconds(info.start_time), "end_time": _seconds(info.end_time)}
        if out["start_time"]:
            out["wall_time_s"] = round((out["end_time"] or time.time()) - out["start_time"], 1)
        if state is JobState.FAILED:
            out["failure"] = self.failure()
        return out

    def failure(self) -> dict | None:
        """What failed, in the user's terms (exception, file:line in their code, rank, node, last
        epoch): the run's `trainer.failure.*` tags, else the failure line in the job's log."""
        from trainer.tracking.runs import failure_line, read_failure

        found = None
        if self.run_id and _store_reachable(self._store()):
            try:
                found = read_failure(self._store(), self.run_id)
            except TrainerError:
                found = None
        if found is None:
            found = failure_from_logs(self.logs())
        if found is not None and "summary" not in found:
            found["summary"] = failure_line(found)
        return found

    def summary(self, state: JobState | None = None, started: float | None = None) -> dict:
        """The job's summary: state, run (and its page in a running MLflow UI), final metrics,
        the conversion outcome per target, and what failed."""
        state = state or self.status()
        out = {"job_id": self.id, "status": state.value, "mlflow_run_id": self.run_id}
        if started is not None:
            out["wall_time_s"] = round(time.time() - started, 1)
        if self.run_id and _store_reachable(self._store()):
            out.update(run_summary(self._store(), self.run_id))
        if state is JobState.FAILED:
            out["failure"] = self.failure()
        return out

    def logs(self) -> str:
        return self._jobs().logs(self.id)

    def follow(self, poll_s: float = 0.5) -> Iterator[str]:
        """New log lines as they appear, until the job ends."""
        jobs, seen = self._jobs(), 0
        while True:
            state = jobs.state(self.id)
            text = jobs.logs(self.id)
            if len(text) > seen:
                chunk, seen = text[seen:], len(text)
                yield from chunk.splitlines()
            if state.is_terminal:
                return
            time.sleep(poll_s)

    def progress(self, poll_s: float = 0.5) -> Iterator[dict]:
        """Progress events ({"step", "metrics", "time"}) printed by rank 0, until the job ends."""
        last = 0.0
        for line in self.follow(poll_s):
            event = parse_progress(line)
            # Several Ray nodes on one host can forward the same worker line twice.
            if event is not None and event.get("time", 0) > last:
                last = event.get("time", 0)
                yield event

    def wait(self, timeout: float | None = None, poll_s: float = 0.25) -> JobState:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            state = self.status()
            if state.is_terminal:
                return state
            if deadline is not None and time.monotonic() > deadline:
                raise JobError(f"job {self.id} still {state.value} after {timeout:g}s")
            time.sleep(poll_s)

    def cancel(self) -> JobState:
        """Stop the job; returns its state once Ray has stopped it."""
        self._jobs().stop(self.id)
        return self.wait(timeout=120)

    def metrics(self):
        """Every metric the job logged, as a pandas DataFrame (key, step, value, timestamp)."""
        from trainer.tracking.runs import metrics_frame

        if not self.run_id:
            raise JobError(f"job {self.id} has no MLflow run")
        return metrics_frame(self._store(), self.run_id)

    def final_metrics(self) -> dict[str, float]:
        from trainer.tracking.runs import client

        if not self.run_id:
            return {}
        return dict(client(self._store()).get_run(self.run_id).data.metrics)

    def _store(self) -> str | None:
        """The URI this client reads the run with: the one it was submitted with (credentials
        and all, kept out of the dataclass's fields), else see `_client_uri`."""
        return getattr(self, "_submitted_uri", None) or _client_uri(self.tracking_uri)

    def _close_run(self, state: JobState) -> None:
        """A cancelled or killed driver cannot close its run: do it from here."""
        if not self.run_id:
            return
        from trainer.tracking.runs import close_run, run_status

        uri = self._store()
        if not _store_reachable(uri):    # MLflow would retry an unanswering server for minutes
            return
        try:
            current = run_status(uri, self.run_id)
            # A cancel is authoritative: the driver may have ended the run FAILED on its way out.
            if current == "RUNNING" or (state is JobState.CANCELLED and current != "KILLED"):
                close_run(uri, self.run_id, state.mlflow_status,
                          f"Ray job {self.id} ended {state.value}; its driver did not close the run as that")
        except Exception:
            pass  # tracking unreachable: the job's state is still right


SUMMARY_METRICS = ("test_accuracy", "accuracy", "loss")


def run_summary(uri: str, run_id: str) -> dict:
    """From a run: its page in a running MLflow UI, the final values of the headline metrics, and
    the conversion outcome (`trainer.runners.job.conversion_summary`). Best effort: what cannot be
    read is left out."""
    from trainer.runners.job import conversion_summary
    from trainer.tracking.runs import client, conversion_report, run_url

    out: dict = {}
    url = run_url(uri, run_id)
    if url:
        out["mlflow_url"] = url
    try:
        metrics = client(uri).get_run(run_id).data.metrics
        out.update({k: round(metrics[k], 4) for k in SUMMARY_METRICS if k in metrics})
        conversion = conversion_summary(conversion_report(uri, run_id))
    except TrainerError:
        conversion = None
    if conversion:
        out["conversion"] = conversion
    return out


def failure_from_logs(text: str) -> dict | None:
    """The failure line the job driver (or a worker) printed in the job's log, or None."""
    from trainer.runners.job import FAILURE_PREFIX

    found = None
    for line in text.splitlines():
        idx = line.find(FAILURE_PREFIX)
        if idx >= 0:
            try:
                record = json.loads(line[idx + len(FAILURE_PREFIX):])
            except ValueError:
                continue
            if found is None or (record.get("rank") or 0) < (found.get("rank") or 0):
                found = record
    return found


def versions() -> dict[str, str]:
    """Versions of trainer, Ray, MLflow and the frameworks present (this interpreter, and the
    installed framework runtimes), read from package metadata: nothing heavy is imported."""
    from importlib import metadata

    from trainer.runtimes import list_runtimes

    out: dict[str, str] = {}
    for dist in ("trainer", "ray", "mlflow", "torch", "onnx", "onnxruntime"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    for runtime in list_runtimes():
        if not runtime.installed:
            continue
        for dist in ("tensorflow-cpu", "tensorflow", "keras", "mxnet", "tf2onnx", "mmdnn"):
            if dist in runtime.versions:
                out.setdefault(dist.replace("-cpu", ""), f"{runtime.versions[dist]} ({runtime.name} runtime)")
    return out


def ui(progress: Callable[[str], None] | None = None) -> dict:
    """The MLflow UI for the configured tracking store (a server's own URL; for the embedded store
    the local server of trainer.tracking.server, started if none runs) and the Ray dashboard of
    the local cluster (or $TRAINER_ADDRESS)."""
    from trainer.errors import UsageError
    from trainer.home import default_tracking_uri, resolve_tracking_uri

    uri = resolve_tracking_uri()
    started = False
    if uri.startswith(("http://", "https://")):
        try:
            _check_reachable(uri)
        except Exception as e:  # noqa: BLE001
            raise TrackingError(f"the MLflow server {redact(uri)} does not answer: {first_line(e)}") from None
        url = redact(uri)
    elif uri == default_tracking_uri():
        from trainer.tracking.server import serve

        state, started = serve(None if _port_taken(5000) else 5000, progress=progress)
        url = state.url
    else:
        raise UsageError(f"trainer ui serves the embedded store ({default_tracking_uri()}) or shows a server's URL; "
                         f"for {redact(uri)} run: mlflow ui --backend-store-uri {redact(uri)}")
    address = resolve_address(None)
    token = None
    if address is None:
        from trainer.cluster.local import LocalCluster

        state = LocalCluster().state()
        address = state.dashboard_url if state is not None else None
        token = state.token_file if state is not None else None
    return {"mlflow_url": url, "mlflow_started": started, "tracking_uri": redact(uri),
            "ray_dashboard": redact(address) if address else None, "ray_token_file": token}


def _port_taken(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def parse_progress(line: str) -> dict | None:
    """The event in a rank-0 progress line of the job's logs, or None."""
    from trainer.context import PROGRESS_PREFIX

    idx = line.find(PROGRESS_PREFIX)
    if idx < 0:
        return None
    try:
        return json.loads(line[idx + len(PROGRESS_PREFIX):])
    except ValueError:
        return None


def _seconds(ms: int | None) -> float | None:
    return ms / 1000 if ms else None


def _client_uri(recorded: str | None) -> str | None:
    """The tracking URI this client uses for a job's recorded one (recorded without credentials):
    this machine's own URI ($MLFLOW_TRACKING_URI) when it names the same store with credentials
    in it, else the recorded one (MLflow then takes credentials from MLFLOW_TRACKING_* variables)."""
    from trainer.credentials import split_credentials
    from trainer.home import resolve_tracking_uri

    if not recorded:
        return recorded
    here = resolve_tracking_uri()
    if here != recorded and recorded in (split_credentials(here)[0], redact(here)):
        return here
    return recorded


def _local_address() -> str:
    from trainer.cluster.local import LocalCluster

    state = LocalCluster().state()
    if state is None:
        raise JobError("no local cluster is running and no --address/TRAINER_ADDRESS is set")
    return state.dashboard_url


def _job_id(name: str) -> str:
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def _load(spec: str | Path | dict | JobSpec, set: list[str] | None, overrides: dict) -> tuple[JobSpec, Path]:
    if isinstance(spec, JobSpec):
        spec = spec.model_dump(exclude_none=True)
    spec_obj, workdir = load_spec(spec, set)
    if overrides:
        merged = _deep_merge(spec_obj.model_dump(exclude_none=True), overrides)
        spec_obj, _ = load_spec(merged)
    return spec_obj, workdir


def _deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def submit(spec: str | Path | dict | JobSpec, wait: bool = False, *, address: str | None = None,
           set: list[str] | None = None, progress: Callable[[str], None] | None = None,
           cluster_spec: str | Path | dict | None = None, **overrides) -> Job:
    """Validate, preflight and submit a job; returns the Job (finished if `wait`).

    `set` takes `dotted.key=value` strings (as `--set` on the CLI); keyword overrides are merged
    into the spec (`config={"lr": 0.1}`, `workers=4`). Nothing is submitted when a check fails.
    `cluster_spec` is the target's KubeRay RayCluster (a YAML file, a dict, or `NAMESPACE/NAME` read
    through the Kubernetes API): its worker groups that can still scale up count as capacity.
    """
    from trainer.cluster.inventory import nodes
    from trainer.credentials import forwarded_env, redact_text, split_credentials
    from trainer.runners.job import ENV_JOB_ID, ENV_RUN_ID, ENV_SPEC, ENV_TRACKING_URI
    from trainer.runtimes import python_for
    from trainer.scheduling.preflight import UPLOAD_EXCLUDES, check_placement, check_spec, check_tracking
    from trainer.scheduling.ray_jobs import RayJobs
    from trainer.tracking import runs

    spec_obj, workdir = _load(spec, set, overrides)
    checked = check_spec(spec_obj, workdir)
    interpreter = python_for(spec_obj.runtime_name)
    uri = runs.tracking_uri(spec_obj)            # as given: this client may use credentials in it
    address_given = resolve_address(address)
    check_tracking(uri, local_cluster=address_given is None)
    job_uri, uri_credentials = split_credentials(uri)   # the job gets the URI without them
    if address_given is not None:
        _check_remote_secrets(address_given, job_uri, uri_credentials, progress)
    dashboard, local = _cluster_address(address, progress)
    inventory = nodes(dashboard, free=False)
    if cluster_spec is not None:
        from trainer.cluster.kuberay import capacity_nodes

        inventory = inventory + capacity_nodes(read_raycluster(cluster_spec), inventory)
    check_placement(spec_obj, inventory)

    job_id = _job_id(spec_obj.name)
    run_id = runs.start_run(spec_obj, job_id, uri, dashboard, checked.fingerprint)
    jobs = None
    # From here on the run exists: whatever stops the submission (Ray refusing it, Ctrl-C, a bad
    # value) ends the run FAILED, with why, instead of leaving it RUNNING forever.
    try:
        job_spec = spec_obj
        if spec_obj.tracking.uri:
            job_spec = spec_obj.model_copy(update={"tracking": spec_obj.tracking.model_copy(update={"uri": job_uri})})
        env = {ENV_SPEC: job_spec.model_dump_json(), ENV_RUN_ID: run_id, ENV_JOB_ID: job_id,
               ENV_TRACKING_URI: job_uri, "PYTHONUNBUFFERED": "1"}
        if local:
            from trainer.home import trainer_home

            env["TRAINER_HOME"] = str(trainer_home())
            # Credentials travel by the allow-list's names, to the local cluster only: its job API
            # (which shows a job's runtime env) takes the cluster's token, and its files are private.
            env.update(forwarded_env())
            env.update(uri_credentials)
        # Locally the job runs under the runtime's venv; on a cluster, the runtime's image has `python`.
        python = str(interpreter) if local else "python"
        runtime_env = {"working_dir": str(workdir), "excludes": UPLOAD_EXCLUDES, "env_vars": env}
        if local:
            runtime_env["py_executable"] = python
        size = checked.upload_bytes
        _say(progress, f"submitting {job_id} (MLflow run {run_id}; code "
                       f"{f'{size / 2**20:.1f} MiB' if size >= 2**20 else f'{-(-size // 1024)} KiB'})")
        jobs = RayJobs(dashboard)
        jobs.submit(
            job_id=job_id, entrypoint=f"{python} -m trainer.runners.job", runtime_env=runtime_env,
            metadata={"run_id": run_id, "tracking_uri": redact(job_uri), "name": spec_obj.name,
                      "spec": redact_text(job_spec.model_dump_json(exclude_none=True))})
    except BaseException as e:
        _abandon_run(uri, run_id, job_id, jobs, e)
        raise
    job = Job(id=job_id, address=dashboard, run_id=run_id, tracking_uri=redact(job_uri), name=spec_obj.name,
              spec=job_spec.model_dump(exclude_none=True))
    job._submitted_uri = uri
    if wait:
        job.wait()
    return job


def _say(progress: Callable[[str], None] | None, text: str) -> None:
    if progress is not None:
        progress(text)


def _check_remote_secrets(address: str, job_uri: str, uri_credentials: dict, progress) -> None:
    """What a remote cluster gets: no credential values. Its workers take them from their own
    environment (KubeRay: the Secret named in the overlay). Warns when the address is plain http
    to another host (the token and the code would cross the network in the clear); refuses a
    tracking URI whose credentials cannot be taken out of it (a database URI)."""
    from urllib.parse import urlsplit

    from trainer.credentials import forwarded_env, has_credentials

    if has_credentials(job_uri):
        raise PreflightError(f"the tracking URI {redact(job_uri)} carries credentials, which are not sent to a "
                             f"remote cluster: give its workers the URI in their own environment "
                             f"(MLFLOW_TRACKING_URI), or use an MLflow server with MLFLOW_TRACKING_USERNAME/PASSWORD")
    parts = urlsplit(address)
    if parts.scheme == "http" and not _is_loopback(parts.hostname or ""):
        _say(progress, f"warning: {redact(address)} is plain http to another host: the cluster's token and the "
                       f"job's code travel unencrypted (use https, or a tunnel)")
    withheld = sorted(set(forwarded_env()) | set(uri_credentials))
    if withheld:
        _say(progress, f"not sent to the remote cluster: {', '.join(withheld)}; its workers take credentials from "
                       f"their own environment")


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _abandon_run(uri: str, run_id: str, job_id: str, jobs, err: BaseException) -> None:
    """The submission did not complete: end its run FAILED, saying why. If Ray holds the job
    after all (Ctrl-C after Ray accepted it), its driver owns the run: leave it open."""
    from trainer.tracking import runs

    try:
        if not isinstance(err, TrainerError) and jobs is not None and jobs.find(job_id) is not None:
            return
        why = first_line(err) if str(err).strip() else "interrupted"
        runs.close_run(uri, run_id, "FAILED", f"the submission of {job_id} did not complete: "
                                              f"{type(err).__name__}: {why}")
    except BaseException:   # noqa: BLE001 - the error that stopped the submission is the one to show
        pass


def reconcile_runs(address: str | None = None, tracking_uri: str | None = None, *,
                   grace_s: float = RECONCILE_GRACE_S) -> list[dict]:
    """Close the MLflow runs left RUNNING for jobs of the cluster at `address` (default
    $TRAINER_ADDRESS, else the local cluster): FAILED when Ray has no such job (its submission
    never completed; only runs older than `grace_s`, younger ones may still be uploading), as the
    job ended when it is terminal (its driver died before closing the run). Each closed run is
    tagged `trainer.closed_by_client` with the reason. Returns [{"run_id", "job_id", "status", "reason"}].
    `tracking_uri`: the store to look in (default this machine's), besides the stores the cluster's
    jobs were recorded in."""
    from trainer.scheduling.ray_jobs import RayJobs

    address = resolve_address(address) or _local_address()
    return _reconcile(address, RayJobs(address).list(), tracking_uri, grace_s)


def _reconcile(address: str, listed: list, tracking_uri: str | None, grace_s: float) -> list[dict]:
    from trainer.home import resolve_tracking_uri
    from trainer.tracking import runs

    states = {j.submission_id: JobState.from_ray(j.status) for j in listed}
    stores = [tracking_uri or resolve_tracking_uri()]
    for j in listed:
        recorded = _client_uri((j.metadata or {}).get("tracking_uri"))
        if recorded and recorded not in stores:
            stores.append(recorded)
    closed = []
    restarted_at = _local_restart(address)
    for uri in stores:
        if not _store_reachable(uri):
            continue
        for run in runs.open_runs(uri, address):
            state = states.get(run["job_id"])
            if state is None and restarted_at is not None and run["start_time"] < restarted_at:
                status, reason = "FAILED", _restart_reason(run["job_id"], restarted_at)
            elif state is None:
                if time.time() - run["start_time"] < grace_s:
                    continue
                status = "FAILED"
                reason = (f"no Ray job {run['job_id']} on {redact(address)}: its submission never completed "
                          f"(or the cluster that ran it was stopped)")
            elif state.is_terminal:
                status, reason = state.mlflow_status, f"Ray job {run['job_id']} ended {state.value} with its run open"
            else:
                continue
            runs.close_run(uri, run["run_id"], status, reason)
            closed.append({"run_id": run["run_id"], "job_id": run["job_id"], "status": status, "reason": reason})
    return closed


def _local_restart(address: str) -> float | None:
    """When `address` is the running local cluster's: when it started (a restart forgets every
    job: without GCS fault tolerance Ray keeps no job table across a head restart)."""
    from trainer.cluster.local import LocalCluster

    try:
        state = LocalCluster().state()
    except TrainerError:
        return None
    return state.started_at if state is not None and state.dashboard_url == address else None


def _restart_reason(job_id: str, started_at: float) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started_at))
    return (f"job {job_id} is lost: the local cluster was restarted at {when}, after the job was submitted, and "
            f"a restarted head keeps no jobs (Ray's job table lives in its GCS)")


def _lost_to_a_restart(job_id: str, address: str) -> None:
    """Ray does not know `job_id`: when its MLflow run (in this machine's store) is still open and
    older than the local cluster's start, the job died with the previous cluster. Close the run
    FAILED and raise a JobError that says so; otherwise return (the caller's "no job" stands)."""
    from trainer.home import resolve_tracking_uri
    from trainer.tracking import runs

    started_at = _local_restart(address)
    uri = resolve_tracking_uri()
    if started_at is None or not _store_reachable(uri):
        return
    try:
        run = runs.open_run_of_job(uri, job_id)
    except TrainerError:
        return
    if run is None or run["start_time"] >= started_at:
        return
    reason = _restart_reason(job_id, started_at)
    runs.close_run(uri, run["run_id"], "FAILED", reason)
    raise JobError(f"{reason}; its MLflow run {run['run_id']} is now FAILED (resubmit it)")


def _store_reachable(uri: str) -> bool:
    """Whether the store is there to be read, checked without creating it (an embedded SQLite
    file) or waiting on MLflow's minutes of retries (a server that does not answer)."""
    from urllib.parse import urlsplit

    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):]).is_file()
    if uri.startswith("file:") or "://" not in uri:
        return Path(urlsplit(uri).path if uri.startswith("file:") else uri).exists()
    if uri.startswith(("http://", "https://")):
        try:
            _check_reachable(uri)
            return True
        except Exception:
            return False
    return True


def list_jobs(address: str | None = None) -> list[dict]:
    """Jobs trainer submitted to the cluster; runs they left RUNNING are reconciled on the way
    (best effort: `reconcile_runs`)."""
    from trainer.scheduling.ray_jobs import RayJobs

    address = resolve_address(address) or _local_address()
    listed = RayJobs(address).list()
    try:
        _reconcile(address, listed, None, RECONCILE_GRACE_S)
    except TrainerError:
        pass    # the store is unreachable: the list is still right
    out = []
    for info in listed:
        meta = info.metadata or {}
        out.append({"job_id": info.submission_id, "name": meta.get("name"),
                    "status": JobState.from_ray(info.status).value, "run_id": meta.get("run_id"),
                    "start_time": _seconds(info.start_time), "end_time": _seconds(info.end_time)})
    return sorted(out, key=lambda j: j["start_time"] or 0)


@dataclass
class LocalRun:
    run_id: str
    tracking_uri: str
    wall_time_s: float
    metrics: dict[str, float]
    summary: dict = field(default_factory=dict)   # run_summary: MLflow URL, headline metrics, conversion


def run_local(spec: str | Path | dict | JobSpec, *, set: list[str] | None = None, **overrides) -> LocalRun:
    """Run the job's function in this process (world size 1, no Ray), tracked in MLflow."""
    from trainer.home import trainer_home
    from trainer.runners.job import run_in_process
    from trainer.runtimes import python_for
    from trainer.scheduling.preflight import check_spec
    from trainer.tracking import runs

    spec_obj, workdir = _load(spec, set, overrides)
    checked = check_spec(spec_obj, workdir)
    interpreter = python_for(spec_obj.runtime_name)
    if interpreter.parent.parent.resolve() != Path(sys.prefix).resolve():
        return _run_local_in(interpreter, spec_obj, workdir)
    uri = runs.tracking_uri(spec_obj)
    job_id = "local-" + _job_id(spec_obj.name)
    run_id = runs.start_run(spec_obj, job_id, uri, "local", checked.fingerprint)
    started = time.monotonic()
    run_in_process(spec_obj, workdir, run_id, uri, trainer_home() / "local" / job_id, job_id=job_id)
    metrics = dict(runs.client(uri).get_run(run_id).data.metrics)
    return LocalRun(run_id, uri, round(time.monotonic() - started, 1), metrics, run_summary(uri, run_id))


def _run_local_in(interpreter: Path, spec: JobSpec, workdir: Path) -> LocalRun:
    """`run_local` under another runtime's interpreter (the job's framework is not installed in
    this one, e.g. tensorflow from the main venv): the child's output streams through."""
    import subprocess
    import tempfile

    from trainer.home import repo_root

    code = ("import dataclasses, json, sys\n"
            "from trainer.api import run_local\n"
            "from trainer.errors import TrainerError\n"
            "try:\n"
            "    result = run_local(json.loads(open(sys.argv[1]).read()))\n"
            "except TrainerError as e:\n"
            "    print(f'error: {e}', file=sys.stderr)\n"
            "    sys.exit(e.exit_code)\n"
            "open(sys.argv[2], 'w').write(json.dumps(dataclasses.asdict(result)))\n")
    path = os.pathsep.join(filter(None, [str(repo_root()), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    with tempfile.TemporaryDirectory(prefix="trainer-local-") as tmp:
        result = Path(tmp) / "result.json"
        # The spec goes through a file in the private (0700) temp folder, not argv: any local user
        # can read a process's arguments, and a tracking URI may carry credentials.
        spec_file = Path(tmp) / "spec.json"
        spec_file.write_text(spec.model_dump_json(exclude_none=True))
        # cwd = the workdir: a spec given as a dict is resolved against the cwd.
        proc = subprocess.run([str(interpreter), "-c", code, str(spec_file), str(result)],
                              cwd=workdir, env=env)
        if proc.returncode != 0 or not result.is_file():
            raise JobError(f"local run in the {spec.runtime_name} runtime ({interpreter}) failed with exit code "
                           f"{proc.returncode}; its output is above")
        return LocalRun(**json.loads(result.read_text()))


# ---------------------------------------------------------------- Kubernetes (KubeRay)

def read_raycluster(source: str | Path | dict, context: str | None = None) -> dict:
    """A RayCluster: a dict as given, a YAML file, or `NAMESPACE/NAME` read through the API."""
    from trainer.cluster.kuberay import load_raycluster

    if isinstance(source, dict):
        return source
    text = str(source)
    if not Path(text).exists() and text.count("/") == 1 and not text.endswith((".yaml", ".yml")):
        from trainer.scheduling.kube import Kube

        namespace, name = text.split("/")
        return Kube(context).raycluster(namespace, name)
    return load_raycluster(text)


def _rayjob_name(name: str) -> str:
    from trainer.scheduling.rayjob import rayjob_name

    return rayjob_name(name, time.strftime("%Y%m%d-%H%M%S"), secrets.token_hex(2))


def render_k8s(spec: str | Path | dict | JobSpec, overlay: str | Path = "dev", *, set: list[str] | None = None,
               job_id: str | None = None, code_uri: str | None = None, namespace: str | None = None,
               **overrides) -> dict:
    """The KubeRay RayJob for a spec on an environment (`k8s/overlays/<overlay>` or a folder).
    Pure apart from reading the overlay: nothing is created. Refuses what could never schedule."""
    from trainer.scheduling.platform import load_platform
    from trainer.scheduling.preflight import check_spec
    from trainer.scheduling.rayjob import render_rayjob

    spec_obj, workdir = _load(spec, set, overrides)
    check_spec(spec_obj, workdir)
    body = render_rayjob(spec_obj, load_platform(overlay), job_id=job_id or _rayjob_name(spec_obj.name),
                         code_uri=code_uri, namespace=namespace)
    _refuse_inline_credentials(body)
    return body


def _refuse_inline_credentials(body: dict) -> None:
    """A RayJob carries its tracking URI in plain sight (metadata, annotations, env): one with
    credentials in it is refused; they belong in the overlay's MLflow Secret."""
    from trainer.credentials import has_credentials

    uri = body["metadata"]["annotations"].get("trainer.io/tracking-uri")
    if has_credentials(uri):
        raise PreflightError(f"the tracking URI {redact(uri)} carries credentials, which a RayJob would show to "
                             f"anyone who can read it: give the URI without them and put MLFLOW_TRACKING_USERNAME/"
                             f"PASSWORD in the overlay's MLflow Secret (trackingSecret in platform.yaml)")


@dataclass
class K8sJob:
    """A RayJob submitted by trainer, and the MLflow run that records it."""

    name: str
    namespace: str
    run_id: str | None = None
    tracking_uri: str | None = None        # as this machine reaches MLflow
    context: str | None = None
    last: Any = field(default=None, repr=False)

    def _kube(self):
        from trainer.scheduling.kube import Kube

        return Kube(self.context)

    def observe(self):
        """The RayJob's status as an `Observed` (state, KubeRay's two statuses, reason, note)."""
        from trainer.scheduling.rayjob import observe

        self.last = observe(self._kube().rayjob(self.namespace, self.name))
        return self.last

    def status(self) -> JobState:
        return self.observe().state

    def follow(self, poll_s: float = 5.0, timeout: float | None = None) -> Iterator:
        """Every change of the observed status, until the job ends (or `timeout` seconds pass)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        previous = None
        while True:
            current = self.observe()
            if current != previous:
                yield current
                previous = current
            if current.state.is_terminal:
                return
            if deadline is not None and time.monotonic() > deadline:
                raise JobError(f"RayJob {self.namespace}/{self.name} still {current.state.value} after {timeout:g}s")
            time.sleep(poll_s)

    def wait(self, timeout: float | None = None, poll_s: float = 5.0, on_change=None):
        """Follow until the job ends; a failure's reason and pod logs go into its MLflow run
        (while `ttlSecondsAfterFinished` still keeps the cluster). Returns the last `Observed`."""
        for observed in self.follow(poll_s, timeout):
            if on_change is not None:
                on_change(observed)
        if self.last.state is not JobState.SUCCEEDED:
            self.record_failure(self.last)
        elif self.run_id and self.tracking_uri:
            self._close_run(JobState.SUCCEEDED)
        return self.last

    def logs(self) -> dict[str, str]:
        """The submitter pod's log (it follows the Ray job's driver output) and the head's."""
        kube = self._kube()
        out = kube.pod_logs(self.namespace, f"job-name={self.name}")
        cluster = self.last.cluster if self.last else ""
        if cluster:
            out.update(kube.pod_logs(self.namespace, f"ray.io/cluster={cluster},ray.io/node-type=head"))
        return out

    def record_failure(self, observed) -> None:
        if not (self.run_id and self.tracking_uri):
            return
        from trainer.tracking.runs import record_failure

        tags = {"trainer.k8s.state": observed.state.value, "trainer.k8s.deployment_status": observed.deployment,
                "trainer.k8s.job_status": observed.job_status, "trainer.k8s.reason": observed.reason,
                "trainer.k8s.message": observed.message, "trainer.k8s.note": observed.note}
        try:
            logs = self.logs()
        except Exception as e:   # the failure is still recorded without the logs
            logs = {"unavailable": f"pod logs could not be read: {e}"}
        try:
            record_failure(self.tracking_uri, self.run_id, {k: v for k, v in tags.items() if v}, logs)
        except Exception:
            pass  # MLflow unreachable: the job's state is still right

    def _close_run(self, state: JobState) -> None:
        from trainer.tracking.runs import finish_run, run_status

        try:
            if run_status(self.tracking_uri, self.run_id) == "RUNNING":
                finish_run(self.tracking_uri, self.run_id, state.mlflow_status)
        except Exception:
            pass


def submit_k8s(spec: str | Path | dict | JobSpec, overlay: str | Path = "dev", *, namespace: str | None = None,
               code_uri: str | None = None, set: list[str] | None = None, context: str | None = None,
               progress: Callable[[str], None] | None = None, **overrides) -> K8sJob:
    """Render the job's RayJob (every refusal before anything exists), open its MLflow run, create it.

    The pods use the overlay's (or the spec's) MLflow URI; this machine uses $MLFLOW_TRACKING_URI
    when set (e.g. a port-forward to the same server), else the same URI. When MLflow cannot be
    reached from here the job's driver opens its run itself, and failures are not copied to it.
    """
    from trainer.scheduling.kube import Kube
    from trainer.scheduling.platform import load_platform
    from trainer.scheduling.preflight import check_spec
    from trainer.scheduling.rayjob import render_rayjob
    from trainer.tracking import runs

    spec_obj, workdir = _load(spec, set, overrides)
    checked = check_spec(spec_obj, workdir)
    platform = load_platform(overlay)
    job_id = _rayjob_name(spec_obj.name)
    body = render_rayjob(spec_obj, platform, job_id=job_id, code_uri=code_uri, namespace=namespace)
    _refuse_inline_credentials(body)
    kube = Kube(context)
    ns = body["metadata"]["namespace"]
    pods_uri = body["metadata"]["annotations"]["trainer.io/tracking-uri"]
    here_uri = os.environ.get("MLFLOW_TRACKING_URI") or pods_uri
    run_id = None
    try:
        _check_reachable(here_uri)   # MLflow's own client retries an unreachable server for minutes
        run_id = runs.start_run(spec_obj, job_id, here_uri, f"k8s://{ns}/{job_id}", checked.fingerprint)
    except Exception as e:
        if progress:
            progress(f"MLflow at {redact(here_uri)} is not reachable from here ({type(e).__name__}); the job's driver "
                     f"opens its run itself and a failure's logs are not copied to it (set "
                     f"MLFLOW_TRACKING_URI to reach the same server from here, e.g. through a port-forward)")
    if run_id:
        body = render_rayjob(spec_obj, platform, job_id=job_id, code_uri=code_uri, namespace=namespace,
                             run_id=run_id)
    try:
        kube.create_rayjob(body)
    except BaseException:
        if run_id:
            runs.finish_run(here_uri, run_id, "FAILED")
        raise
    return K8sJob(name=job_id, namespace=ns, run_id=run_id, tracking_uri=here_uri if run_id else None,
                  context=context)


def _check_reachable(uri: str) -> None:
    if uri.startswith(("http://", "https://")):
        import requests

        requests.get(f"{uri.rstrip('/')}/health", timeout=5).raise_for_status()


# ---------------------------------------------------------------- this host's GPUs

def node_labels() -> dict:
    """This host's GPUs (NVML) and the labels they give a node in each scheme."""
    from trainer.cluster.accelerators import SCHEMES
    from trainer.cluster.gpus import node_labels as labels_for, probe

    found = probe()
    gpus = []
    for g in found.gpus:
        ident = g.identity
        gpus.append({"index": g.index, "name": g.name, "memory_gib": round(g.memory_gib, 1), "ray": ident.ray,
                     "gfd": ident.gfd, "gke": ident.labels("gke").get("cloud.google.com/gke-accelerator"),
                     "karpenter": ident.labels("karpenter").get("karpenter.k8s.aws/instance-gpu-name"),
                     "mig_profile": ident.mig_profile, "known": ident.model is not None})
    return {"gpus": gpus, "no_gpu_reason": found.reason,
            "labels": {scheme: labels_for(found.gpus, scheme) for scheme in SCHEMES}}


def cluster_join(address: str, *, cpus: int | None = None, object_store_mb: int | None = None,
                 node_ip: str | None = None) -> dict:
    """Start a Ray worker node on this host that joins the head at `address` (HOST:PORT), labelled
    `ray.io/accelerator-type` from its GPUs (no driver: `cpu`) with the GPU count set."""
    from trainer.cluster.local import join

    return join(address, cpus=cpus, object_store_mb=object_store_mb, node_ip=node_ip)


# ---------------------------------------------------------------- promotion and the OCI registry

def promote(model: str, to: str, version: str | int | None = None, *, approve: bool = False,
            tracking_uri: str | None = None, registry: str | None = None,
            progress: Callable[[str], None] | None = None) -> dict:
    """Promote a registered model version to staging or production (gates, registry copy, alias:
    one transaction); returns the promotion record. See trainer.promotion.transaction."""
    from trainer.promotion.transaction import promote as _promote

    return _promote(model, to, None if version is None else str(version), approve=approve,
                    tracking_uri=tracking_uri, registry=registry, progress=progress)


def promotion_history(model: str, tracking_uri: str | None = None) -> list[dict]:
    """Every promotion of `model`, oldest first (who, when, from/to, digests, gate values)."""
    from trainer.promotion.history import history

    return history(model, tracking_uri)


@dataclass
class Retrain:
    decision: object          # trainer.promotion.retrain.Decision
    job: "Job | None"         # the submitted job (finished), None when the data was unchanged


def retrain(spec: str | Path | dict | JobSpec, *, if_data_changed: bool = True, address: str | None = None,
            set: list[str] | None = None, progress: Callable[[str], None] | None = None) -> Retrain:
    """Submit the spec and wait, unless `if_data_changed` and its data digest equals the one on
    the production model version (or the newest run of its experiment)."""
    from trainer.promotion.retrain import Decision, decide
    from trainer.scheduling.preflight import check_spec
    from trainer.tracking import runs

    spec_obj, workdir = _load(spec, set, {})
    checked = check_spec(spec_obj, workdir)
    current = checked.fingerprint.digest if checked.fingerprint else None
    decision = decide(spec_obj, current, runs.tracking_uri(spec_obj)) if if_data_changed else \
        Decision(True, current, None, "not compared (--if-data-changed not given)")
    _say(progress, decision.describe())
    if not decision.changed:
        return Retrain(decision, None)
    by_path = isinstance(spec, (str, Path))
    job = submit(spec if by_path else spec_obj, address=address, set=set if by_path else None, progress=progress)
    job.wait()
    return Retrain(decision, job)


def registry_serve(port: int = 5000, user: str = "trainer") -> tuple[dict, bool]:
    """Start the local OCI registry (docker-registry, htpasswd auth, 127.0.0.1) unless it runs."""
    from trainer.registry import serve

    return serve.start(port=port, user=user)


def registry_stop() -> bool:
    from trainer.registry import serve

    return serve.stop()


def _registry_for(ref: str | None, registry: str | None):
    from trainer.registry.auth import RegistryError
    from trainer.registry.client import Reference, Registry
    from trainer.registry.serve import configured_address

    parsed = Reference.parse(ref) if ref else None
    address = (parsed.host if parsed and parsed.host else None) or registry
    if address is None:
        address, why = configured_address()
        if address is None:
            raise RegistryError(f"{why}; start one with: trainer registry serve")
    return Registry(address), parsed


def registry_push(path: str | Path, ref: str, registry: str | None = None) -> dict:
    """Push a folder/file as a ModelPack artifact, or an OCI image layout folder as an image, to
    `ref` ([host/]project/name:tag)."""
    from trainer.registry.artifacts import push_layout, push_model
    from trainer.registry.auth import RegistryError

    reg, parsed = _registry_for(ref, registry)
    if not parsed.reference or parsed.reference.startswith("sha256:"):
        raise RegistryError(f"{ref}: give a tag to push to (project/name:tag)")
    path = Path(path)
    if not path.exists():
        from trainer.errors import UsageError

        raise UsageError(f"no such file or folder: {path}")
    if (path / "oci-layout").is_file():
        manifest, kind = push_layout(reg, path, parsed.repository, parsed.reference), "image"
    else:
        import shutil
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            root = path
            if path.is_file():
                root = Path(tmp)
                shutil.copy2(path, root / path.name)
            manifest = push_model(reg, parsed.repository, parsed.reference, root, name=parsed.repository.split("/")[-1])
        kind = "model"
    return {"ref": f"{reg.host}/{parsed}", "digest": manifest.digest, "kind": kind}


def registry_pull(ref: str, dest: str | Path, registry: str | None = None) -> dict:
    from trainer.registry.artifacts import pull

    reg, parsed = _registry_for(ref, registry)
    manifest, files = pull(reg, parsed.repository, parsed.reference or "latest", Path(dest))
    return {"ref": f"{reg.host}/{parsed}", "digest": manifest.digest, "files": files, "dest": str(dest)}


def registry_ls(repo: str | None = None, registry: str | None = None) -> dict:
    """The repositories (no `repo`), or one repository's tags with their digests."""
    reg, parsed = _registry_for(repo, registry)
    if parsed is None:
        return {"registry": reg.host, "repositories": reg.catalog()}
    tags = [t for t in reg.tags(parsed.repository) if not t.startswith("sha256-")]
    return {"registry": reg.host, "repository": parsed.repository,
            "tags": [{"tag": t, "digest": reg.manifest_digest(parsed.repository, t)} for t in tags]}


def registry_copy(src: str, dst: str, registry: str | None = None) -> dict:
    """Copy src to dst in one registry keeping the digest (blob mount + manifest PUT): how the
    runtime images are promoted between projects."""
    from trainer.registry.artifacts import copy
    from trainer.registry.auth import RegistryError

    reg, s = _registry_for(src, registry)
    to, d = _registry_for(dst, reg.url)
    if not s.reference or not d.reference or d.reference.startswith("sha256:"):
        raise RegistryError("give both as project/name:tag (the source may be @sha256:...)")
    manifest, how = copy(reg, s.repository, s.reference, d.repository, d.reference, to=to)
    return {"source": f"{reg.host}/{s}", "target": f"{to.host}/{d}", "digest": manifest.digest,
            "blobs": dict(sorted(how.items()))}
