"""Jobs on a Ray cluster: submit, the `Job` handle, list, reconcile the runs they leave open,
and `run_local` (the same job in this process)."""
from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, TextIO

from trainer.api._common import (client_uri, is_loopback, load_job_spec, local_address,
                                 new_job_id, resolve_address, say, seconds, store_reachable)
from trainer.api.cluster import cluster_address
from trainer.api.handle import close_run, conversion_of, last_metrics, run_summary
from trainer.api.k8s import read_raycluster
from trainer.credentials import redact
from trainer.errors import JobError, PreflightError, TrainerError, UsageError, first_line
from trainer.protocol import (META_NAME, META_RUN_ID, META_SPEC, META_TRACKING_URI, driver_entrypoint,
                              PROTOCOL_PREFIXES, TIMING_PREFIX, failure_from_logs, job_runtime_env, parse_progress,
                              parse_retry, parse_sweep)
from trainer.spec import JobSpec
from trainer.state import JobState

log = logging.getLogger(__name__)

RECONCILE_GRACE_S = 600.0
END_POLL_S = 0.05          # Job.follow, once the driver has printed its last line


@dataclass
class Job:
    """A submitted job: a Ray job plus the MLflow run that records it."""

    id: str
    address: str
    run_id: str | None = None
    tracking_uri: str | None = None        # without credentials (as recorded): see client_uri
    name: str | None = None
    spec: dict[str, Any] = field(default_factory=dict, repr=False)
    # What the user should know that is not the job's state (a run that could not be closed).
    warnings: list[str] = field(default_factory=list, repr=False, compare=False)

    @property
    def job_id(self) -> str:
        return self.id

    @property
    def logs_command(self) -> str:
        return f"trainer logs {self.id}"

    @classmethod
    def get(cls, job_id: str, address: str | None = None) -> "Job":
        address = resolve_address(address) or local_address()
        from trainer.scheduling.ray_jobs import RayJobs

        try:
            info = RayJobs(address).info(job_id)
        except JobError:
            _lost_to_a_restart(job_id, address)
            raise
        meta = info.metadata or {}
        return cls(id=job_id, address=address, run_id=meta.get(META_RUN_ID),
                   tracking_uri=meta.get(META_TRACKING_URI), name=meta.get(META_NAME),
                   spec=json.loads(meta.get(META_SPEC, "{}")))

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
               "start_time": seconds(info.start_time), "end_time": seconds(info.end_time)}
        if out["start_time"]:
            out["wall_time_s"] = round((out["end_time"] or time.time()) - out["start_time"], 1)
        if self.run_id and store_reachable(self._store()):
            from trainer.tracking.runs import run_url

            url = run_url(self._store(), self.run_id)
            if url:
                out["mlflow_url"] = url
            try:
                out["metrics"] = last_metrics(self._store(), self.run_id)
            except TrainerError as e:
                self._warn(f"warning: the metrics of MLflow run {self.run_id} could not be read: {first_line(e)}")
            if state is JobState.SUCCEEDED:
                out.update(conversion_of(self._store(), self.run_id, self._warn))
            if self.is_sweep:
                try:
                    out["sweep"] = sweep_status(self.run_id, tracking_uri=self._store())
                except TrainerError as e:
                    self._warn(f"warning: the trials of sweep {self.id} could not be read: {first_line(e)}")
        if state is JobState.FAILED:
            out["failure"] = self.failure()
        if self.warnings:
            out["warnings"] = list(self.warnings)
        return out

    def failure(self) -> dict | None:
        """What failed, in the user's terms (exception, file:line in their code, rank, node, last
        epoch): the run's `trainer.failure.*` tags, else the failure line in the job's log."""
        from trainer.tracking.runs import failure_line, read_failure

        found = None
        if self.run_id and store_reachable(self._store()):
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
        if self.run_id and store_reachable(self._store()):
            out.update(run_summary(self._store(), self.run_id))
            if self.is_sweep:
                out.update(_sweep_summary(self._store(), self.run_id))
        if state is JobState.FAILED:
            out["failure"] = self.failure()
        if self.warnings:
            out["warnings"] = list(self.warnings)
        return out

    def logs(self, trial: int | None = None) -> str:
        """The job's whole log; with `trial`, a sweep's trial's lines only (`sweep_log`)."""
        text = self._jobs().logs(self.id)
        return text if trial is None else sweep_log(text, trial, self.id)

    def follow(self, poll_s: float = 0.25) -> Iterator[str]:
        """New log lines as they appear, until the job ends. The lines come from Ray's log tail, so
        each byte of the log crosses once (reading the whole log at every poll cost the dashboard
        half a CPU-second per poll at 18 MB); the end is noticed by polling the job's state every
        `poll_s` (every END_POLL_S once the driver has printed its last line, its timing), and
        what the tail had not delivered by then comes from one read of the log. Where the tail
        cannot be opened (a proxy without websockets), the log is read at every poll instead."""
        jobs, seen, partial, tail, ending = self._jobs(), 0, "", None, False
        try:
            while True:
                state = jobs.state(self.id)
                if state.is_terminal or (tail is not None and tail.failed):
                    new = jobs.logs(self.id)[seen:]
                else:
                    tail = tail or jobs.tail(self.id)
                    new = tail.take()
                seen += len(new)
                lines = (partial + new).split("\n")
                partial = lines.pop()       # a line still being written, or ""
                yield from lines
                if state.is_terminal:
                    if partial:
                        yield partial
                    return
                ending = ending or any(TIMING_PREFIX in line for line in lines)
                time.sleep(min(poll_s, END_POLL_S) if ending else poll_s)
        finally:
            if tail is not None:
                tail.close()

    def follow_trial(self, trial: int | None, poll_s: float = 0.25) -> Iterator[str]:
        """A sweep's new log lines of trial `trial` (None: the driver's) as they come, until it ends."""
        from trainer.tracking.sweeps import TrialLines

        splitter = TrialLines()
        for line in self.follow(poll_s):
            yield from (placed for owner, placed in splitter.feed(line) if owner == trial)
        yield from (placed for owner, placed in splitter.rest() if owner == trial)

    def progress(self, poll_s: float = 0.25, on_retry: Callable[[str], None] | None = None) -> Iterator[dict]:
        """Progress events ({"step", "metrics", "time"}) printed by rank 0, until the job ends;
        `on_retry` gets "attempt 2 of 3: <reason>" when Ray Train restarts the worker group."""
        last = 0.0
        for line in self.follow(poll_s):
            retry = parse_retry(line) if on_retry else None
            if retry:
                on_retry(retry)
                continue
            event = parse_progress(line)
            # Several Ray nodes on one host can forward the same worker line twice.
            if event is not None and event.get("time", 0) > last:
                last = event.get("time", 0)
                yield event

    @property
    def is_sweep(self) -> bool:
        return bool(self.spec.get("sweep"))

    def sweep_progress(self, poll_s: float = 0.25) -> Iterator[dict]:
        """A sweep's events ({"total", "running", "done", "stopped", "failed", "metric", "best",
        "best_trial", "time"}) as its driver prints them, until the job ends."""
        last = 0.0
        for line in self.follow(poll_s):
            event = parse_sweep(line)
            if event is not None and event.get("time", 0) > last:
                last = event.get("time", 0)
                yield event

    def trials(self):
        """A sweep's trials as MLflow holds them, as a pandas DataFrame: trial, outcome (completed,
        stopped early, failed, cancelled), reason, run_id, then each param and each last metric."""
        import pandas as pd

        from trainer.tracking.sweeps import trial_runs

        if not self.run_id:
            raise JobError(f"job {self.id} has no MLflow run")
        rows = [{"trial": t["trial"], "outcome": t["outcome"] or t["status"].lower(), "reason": t["reason"],
                 "run_id": t["run_id"], **t["params"], **t["metrics"]} for t in trial_runs(self._store(), self.run_id)]
        return pd.DataFrame(rows)

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
        and all, kept out of the dataclass's fields), else see `client_uri`."""
        return getattr(self, "_submitted_uri", None) or client_uri(self.tracking_uri)

    def _close_run(self, state: JobState) -> None:
        """A cancelled or killed driver cannot close its run: do it from here (`close_run`)."""
        close_run(self._store(), self.run_id, state,
                  f"Ray job {self.id} ended {state.value}; its driver did not close the run as that", self._warn)

    def _warn(self, text: str) -> None:
        if text not in self.warnings:
            self.warnings.append(text)


def sweep_status(run_id: str, *, tracking_uri: str | None = None) -> dict | None:
    """A sweep's trials as MLflow holds them, while it runs and after (the cluster gone or not):
    {"metric", "mode", "total", "trials": [{"trial", "state", "value", "epoch", "params",
    "reason", "run_id"}]}, trials not started yet absent. None when run `run_id` is a job's."""
    from trainer.home import resolve_tracking_uri
    from trainer.tracking.sweeps import sweep_of, trial_states

    uri = tracking_uri or resolve_tracking_uri(None)
    sweep = sweep_of(uri, run_id)
    if sweep is None:
        return None
    return {"metric": sweep["metric"], "mode": sweep["mode"], "total": sweep["trials"],
            "trials": trial_states(uri, run_id, sweep["metric"], list(sweep["space"]))}


def sweep_log(text: str, trial: int | None, sweep_id: str) -> str:
    """The lines of a sweep's log (`text`, raw) that trial `trial`'s workers printed, or with
    None the driver's own (what is not a trial's). UsageError when the trial has no line."""
    from trainer.tracking.sweeps import split_log

    parts = split_log(text)
    if trial is not None and trial not in parts:
        have = sorted(t for t in parts if t is not None)
        raise UsageError(f"trial {trial} of sweep {sweep_id} has no lines in its log (not started yet?); "
                         f"trials with lines: {', '.join(map(str, have)) or 'none yet'}")
    lines = parts.get(trial, [])
    return "\n".join(lines) + "\n" if lines else ""


def _sweep_summary(uri: str, run_id: str) -> dict:
    """A sweep's part of the summary: how its trials ended and the best one (its params, the
    metric, its run), with the best run's conversion and registration (a sweep converts and
    registers the best trial's model, in that trial's run)."""
    from collections import Counter

    from trainer.tracking.sweeps import best_run, sweep_of, trial_runs

    try:
        sweep = sweep_of(uri, run_id)
        trials = trial_runs(uri, run_id)
        best = best_run(uri, run_id)
    except TrainerError:
        return {}
    if sweep is None:
        return {}
    out: dict = {"sweep": {"metric": sweep["metric"], "mode": sweep["mode"], "total": sweep["trials"],
                           "outcomes": dict(Counter(t["outcome"] or t["status"].lower() for t in trials))}}
    found = next((t for t in trials if t["run_id"] == best), None)
    if found is not None:
        out["sweep"]["best"] = {"trial": found["trial"], "run_id": found["run_id"], "params": {k: found["params"][k] for k in sweep["space"] if k in found["params"]},
                                "value": found["metrics"].get(sweep["metric"])}
        best_summary = run_summary(uri, found["run_id"])
        for key in ("conversion", "registered"):
            if key in best_summary:
                out[key] = best_summary[key]
    return out


def submit(spec: str | Path | dict | JobSpec, wait: bool = False, *, address: str | None = None,
           set: list[str] | None = None, progress: Callable[[str], None] | None = None,
           cluster_spec: str | Path | dict | None = None, workdir: str | Path | None = None, **overrides) -> Job:
    """Validate, preflight and submit a job; returns the Job (finished if `wait`).

    `set` takes `dotted.key=value` strings (as `--set` on the CLI); keyword overrides are merged
    into the spec (`config={"lr": 0.1}`, `workers=4`). Nothing is submitted when a check fails.
    `cluster_spec` is the target's KubeRay RayCluster (a YAML file, a dict, or `NAMESPACE/NAME` read
    through the Kubernetes API): its worker groups that can still scale up count as capacity.
    `workdir` is the project folder (the code uploaded) when it is not the spec file's (`rerun`).
    """
    from trainer.cluster.inventory import nodes
    from trainer.credentials import forwarded_env, redact_text, split_credentials
    from trainer.runtimes import python_for
    from trainer.scheduling.preflight import check_placement, check_spec, check_tracking
    from trainer.scheduling.ray_jobs import RayJobs
    from trainer.scheduling.upload import package
    from trainer.tracking import preload, runs

    spec_obj, workdir = load_job_spec(spec, set, overrides, workdir)
    checked = check_spec(spec_obj, workdir)
    interpreter = python_for(spec_obj.runtime_name)
    uri = runs.tracking_uri(spec_obj)            # as given: this client may use credentials in it
    address_given = resolve_address(address)
    check_tracking(uri, local_cluster=address_given is None)
    # The spec is sound: import MLflow and open the store (seconds; a fresh store creates its
    # tables) on one thread while the cluster is found or started and the placement checked.
    preload.start(lambda: runs.client(uri))
    job_uri, uri_credentials = split_credentials(uri)   # the job gets the URI without them
    if address_given is not None:
        _check_remote_secrets(address_given, job_uri, uri_credentials, progress)
    dashboard, local = cluster_address(address, progress)
    inventory = nodes(dashboard, free=False)
    if cluster_spec is not None:
        from trainer.cluster.kuberay import capacity_nodes

        inventory = inventory + capacity_nodes(read_raycluster(cluster_spec), inventory)
    check_placement(spec_obj, inventory)
    cluster_state = _local_cluster() if local else None
    _check_image_runtime(spec_obj.runtime_name, cluster_state)

    job_id = new_job_id(spec_obj.name)
    run_id = runs.start_run(spec_obj, job_id, uri, dashboard, checked.fingerprint)
    jobs = None
    # From here on the run exists: whatever stops the submission (Ray refusing it, Ctrl-C, a bad
    # value) ends the run FAILED, with why, instead of leaving it RUNNING forever.
    try:
        job_spec = spec_obj
        if spec_obj.tracking.uri:
            job_spec = spec_obj.model_copy(update={"tracking": spec_obj.tracking.model_copy(update={"uri": job_uri})})
        env = {}
        if local:
            from trainer.home import trainer_home
            from trainer.runners.base import LOCAL_RAY_TRAIN_ENV

            env["TRAINER_HOME"] = str(trainer_home())
            env.update(LOCAL_RAY_TRAIN_ENV)
            env.update(_local_gcs(cluster_state))
            # Credentials travel by the allow-list's names, to the local cluster only: its job API
            # (which shows a job's runtime env) takes the cluster's token, and its files are private.
            env.update(forwarded_env())
            env.update(uri_credentials)
        # Locally the job runs under the runtime's venv; on a cluster, the runtime's image has `python`.
        # With the worker nodes in a runtime image's containers (`cluster up --image`) the driver
        # runs in one of them too, under the image's `python`, as on KubeRay where the head pod runs
        # the image: Ray Train's controller starts beside the driver and unpickles the framework's
        # backend config, so a tensorflow job's controller on the torch venv's head cannot start.
        in_image = bool(cluster_state is not None and cluster_state.image)
        host_venv = local and not in_image
        python = str(interpreter) if host_venv else "python"
        driver_labels = None
        if in_image:
            from trainer.cluster.containers import RAY_IMAGE_LABEL, image_label_value

            driver_labels = {RAY_IMAGE_LABEL: image_label_value(cluster_state.image)}
        size = checked.upload_bytes
        say(progress, f"submitting {job_id} (MLflow run {run_id}; code "
                       f"{f'{size / 2**20:.1f} MiB' if size >= 2**20 else f'{-(-size // 1024)} KiB'})")
        jobs = RayJobs(dashboard)
        # The code goes as this job's own zip of what preflight checked (trainer.scheduling.upload:
        # a package shared by two jobs starting at once on a node is unpacked under one of them).
        with tempfile.TemporaryDirectory(prefix="trainer-code-") as tmp:
            code = package(workdir, checked.upload, Path(tmp) / "code.zip", job_id)
            runtime_env = job_runtime_env(job_spec.model_dump_json(), job_id=job_id, tracking_uri=job_uri,
                                          run_id=run_id, working_dir=code, python=python if host_venv else None,
                                          extra_env=env,
                                          data_digest=checked.fingerprint.digest if checked.fingerprint else None)
            jobs.submit(
                job_id=job_id, entrypoint=driver_entrypoint(python), runtime_env=runtime_env,
                driver_labels=driver_labels,
                metadata={META_RUN_ID: run_id, META_TRACKING_URI: redact(job_uri), META_NAME: spec_obj.name,
                          META_SPEC: redact_text(job_spec.model_dump_json(exclude_none=True))})
    except BaseException as e:
        _abandon_run(uri, run_id, job_id, jobs, e)
        raise
    job = Job(id=job_id, address=dashboard, run_id=run_id, tracking_uri=redact(job_uri), name=spec_obj.name,
              spec=job_spec.model_dump(exclude_none=True))
    job._submitted_uri = uri
    if wait:
        job.wait()
    return job


def _local_cluster():
    """The local cluster's recorded state (None when none runs)."""
    from trainer.cluster.local import LocalCluster

    return LocalCluster().state()


def _check_image_runtime(runtime: str, state) -> None:
    """A local cluster whose worker nodes run in a runtime image serves that runtime's jobs only
    (their driver and workers run the image's Python): another framework's job is refused before
    anything starts, instead of failing on a missing module inside the container."""
    if state is None or not state.image:
        return
    from trainer.images.build import LABEL_RUNTIME
    from trainer.images.inventory import labels

    theirs = labels(state.image).get(LABEL_RUNTIME)
    if theirs and theirs != runtime:
        raise PreflightError(f"this job needs the {runtime} runtime, and the local cluster's worker nodes run in "
                             f"{state.image} ({theirs}): `trainer cluster down`, then `trainer cluster up "
                             f"--image {runtime}` (or without --image: the host's venvs)")


def _local_gcs(state) -> dict[str, str]:
    """RAY_ADDRESS for the job's processes on the local cluster. Ray's job supervisor gives it to
    the driver only; an actor that connects by itself (Ray Train's detached PlacementGroupCleaner,
    which frees a Train run's resources when its controller dies, e.g. a sweep trial ASHA stopped)
    otherwise looks for "the" Ray instance on the host and fails when several clusters run there
    (other users', a test session's): the resources then stay reserved and later trials wait forever."""
    return {"RAY_ADDRESS": state.gcs_address} if state is not None and state.gcs_address else {}


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
    if parts.scheme == "http" and not is_loopback(parts.hostname or ""):
        say(progress, f"warning: {redact(address)} is plain http to another host: the cluster's token and the "
                       f"job's code travel unencrypted (use https, or a tunnel)")
    withheld = sorted(set(forwarded_env()) | set(uri_credentials))
    if withheld:
        say(progress, f"not sent to the remote cluster: {', '.join(withheld)}; its workers take credentials from "
                       f"their own environment")


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
        log.warning("the MLflow run %s of the submission %s that did not complete could not be closed "
                    "(trainer list closes it later)", run_id, job_id, exc_info=True)


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

    address = resolve_address(address) or local_address()
    return _reconcile(address, RayJobs(address).list(), tracking_uri, grace_s)


def _reconcile(address: str, listed: list, tracking_uri: str | None, grace_s: float) -> list[dict]:
    from trainer.home import resolve_tracking_uri
    from trainer.tracking import runs

    states = {j.submission_id: JobState.from_ray(j.status) for j in listed}
    stores = [tracking_uri or resolve_tracking_uri()]
    for j in listed:
        recorded = client_uri((j.metadata or {}).get(META_TRACKING_URI))
        if recorded and recorded not in stores:
            stores.append(recorded)
    closed = []
    restarted_at = _local_restart(address)
    for uri in stores:
        if not store_reachable(uri):
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
    if started_at is None or not store_reachable(uri):
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


def list_jobs(address: str | None = None) -> list[dict]:
    """Jobs trainer submitted to the cluster; runs they left RUNNING are reconciled on the way
    (best effort: `reconcile_runs`)."""
    from trainer.scheduling.ray_jobs import RayJobs

    address = resolve_address(address) or local_address()
    listed = RayJobs(address).list()
    try:
        _reconcile(address, listed, None, RECONCILE_GRACE_S)
    except TrainerError:
        pass    # the store is unreachable: the list is still right
    out = []
    for info in listed:
        meta = info.metadata or {}
        job = {"job_id": info.submission_id, "name": meta.get(META_NAME),
               "status": JobState.from_ray(info.status).value, "run_id": meta.get(META_RUN_ID),
               "start_time": seconds(info.start_time), "end_time": seconds(info.end_time)}
        url = _run_page(meta)
        if url:
            job["mlflow_url"] = url
        out.append(job)
    return sorted(out, key=lambda j: j["start_time"] or 0)


def _run_page(meta: dict) -> str | None:
    """The job's run in a running MLflow UI, or None (no run, no UI, the store does not answer)."""
    from trainer.tracking.runs import run_url

    uri = client_uri(meta.get(META_TRACKING_URI))
    if not meta.get(META_RUN_ID) or not uri or not store_reachable(uri):
        return None
    return run_url(uri, meta[META_RUN_ID])


@dataclass
class LocalRun:
    run_id: str
    tracking_uri: str
    wall_time_s: float
    metrics: dict[str, float]
    summary: dict = field(default_factory=dict)   # run_summary: MLflow URL, headline metrics, conversion


class _ProtocolFilter:
    """While `run_local` trains in this process: stdout without the driver's and rank 0's
    machine-readable lines (a notebook shows what a terminal would); progress events go to
    `progress`. Everything else passes through to `out` (default: the stdout it replaced), a
    line at a time. The one line buffer over stdout: the CLI's `run --local` uses it too."""

    def __init__(self, progress: Callable[[dict], None] | None, out: TextIO | None = None):
        self.progress, self.out, self.buffer = progress, out, ""

    def __enter__(self):
        self.real, sys.stdout = sys.stdout, self
        self.out = self.out or self.real
        return self

    def __exit__(self, *exc):
        if self.buffer:
            self._line(self.buffer)
        sys.stdout = self.real

    def write(self, text: str) -> int:
        self.buffer += text
        while "\n" in self.buffer:
            line, self.buffer = self.buffer.split("\n", 1)
            self._line(line)
        return len(text)

    def flush(self) -> None:
        self.out.flush()

    def isatty(self) -> bool:
        return False

    def _line(self, line: str) -> None:
        at = min((i for i in (line.find(p) for p in PROTOCOL_PREFIXES) if i >= 0), default=-1)
        if at < 0:
            self.out.write(line + "\n")
            return
        if at > 0:      # after text printed without a newline (a progress line updated in place)
            self.out.write(line[:at])
        event = parse_progress(line[at:])
        if event is not None and self.progress is not None:
            sys.stdout = self.real          # what the callback prints goes straight out
            try:
                self.progress(event)
            finally:
                sys.stdout = self


def run_local(spec: str | Path | dict | JobSpec, *, set: list[str] | None = None,
              progress: Callable[[dict], None] | None = None, stdout: TextIO | None = None,
              **overrides) -> LocalRun:
    """Run the job's function in this process (world size 1, no Ray), tracked in MLflow.
    Rank 0's progress events ({"step", "metrics", "time"}) go to `progress` (none shown without
    it); the training function's own output goes to `stdout` (default: sys.stdout)."""
    from trainer.home import trainer_home
    from trainer.runners.job import run_in_process
    from trainer.runtimes import python_for
    from trainer.scheduling.preflight import check_spec
    from trainer.tracking import runs

    spec_obj, workdir = load_job_spec(spec, set, overrides)
    checked = check_spec(spec_obj, workdir)
    interpreter = python_for(spec_obj.runtime_name)
    if interpreter.parent.parent.resolve() != Path(sys.prefix).resolve():
        return _run_local_in(interpreter, spec_obj, workdir, _ProtocolFilter(progress, stdout))
    uri = runs.tracking_uri(spec_obj)
    job_id = "local-" + new_job_id(spec_obj.name)
    run_id = runs.start_run(spec_obj, job_id, uri, "local", checked.fingerprint)
    started = time.monotonic()
    with _ProtocolFilter(progress, stdout):
        run_in_process(spec_obj, workdir, run_id, uri, trainer_home() / "local" / job_id, job_id=job_id)
    metrics = dict(runs.client(uri).get_run(run_id).data.metrics)
    return LocalRun(run_id, uri, round(time.monotonic() - started, 1), metrics, run_summary(uri, run_id))


def _run_local_in(interpreter: Path, spec: JobSpec, workdir: Path, lines: _ProtocolFilter) -> LocalRun:
    """`run_local` under another runtime's interpreter (the job's framework is not installed in
    this one, e.g. tensorflow from the main venv): the child's stdout streams through `lines`
    (its progress lines become events, as in this process); its stderr passes through."""
    import subprocess
    import tempfile

    from trainer.home import repo_root

    code = ("import dataclasses, json, sys\n"
            "from trainer.api import run_local\n"
            "from trainer.errors import TrainerError\n"
            "from trainer.protocol import progress_line\n"
            "def echo(e):\n"
            "    print(progress_line(e['step'], e['metrics'], e['time']), file=sys.__stdout__, flush=True)\n"
            "try:\n"
            "    result = run_local(json.loads(open(sys.argv[1]).read()), progress=echo)\n"
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
        with lines, subprocess.Popen([str(interpreter), "-c", code, str(spec_file), str(result)],
                                     cwd=workdir, env=env, stdout=subprocess.PIPE, text=True) as proc:
            for line in proc.stdout:
                sys.stdout.write(line)
        if proc.returncode != 0 or not result.is_file():
            raise JobError(f"local run in the {spec.runtime_name} runtime ({interpreter}) failed with exit code "
                           f"{proc.returncode}; its output is above")
        return LocalRun(**json.loads(result.read_text()))
