"""Jobs on Kubernetes (KubeRay): render a RayJob, submit it, and the `K8sJob` handle."""
from __future__ import annotations

import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from trainer.api._common import check_reachable, load_job_spec, store_reachable
from trainer.api.handle import close_run, run_summary
from trainer.credentials import redact
from trainer.errors import JobError, PreflightError, TrainerError, first_line
from trainer.protocol import ANNOTATION_TRACKING_URI
from trainer.spec import JobSpec
from trainer.state import JobState

log = logging.getLogger(__name__)

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

    spec_obj, workdir = load_job_spec(spec, set, overrides)
    check_spec(spec_obj, workdir)
    body = render_rayjob(spec_obj, load_platform(overlay), job_id=job_id or _rayjob_name(spec_obj.name),
                         code_uri=code_uri, namespace=namespace)
    _refuse_inline_credentials(body)
    return body


def _refuse_inline_credentials(body: dict) -> None:
    """A RayJob carries its tracking URI in plain sight (metadata, annotations, env): one with
    credentials in it is refused; they belong in the overlay's MLflow Secret."""
    from trainer.credentials import has_credentials

    uri = body["metadata"]["annotations"].get(ANNOTATION_TRACKING_URI)
    if has_credentials(uri):
        raise PreflightError(f"the tracking URI {redact(uri)} carries credentials, which a RayJob would show to "
                             f"anyone who can read it: give the URI without them and put MLFLOW_TRACKING_USERNAME/"
                             f"PASSWORD in the overlay's MLflow Secret (trackingSecret in platform.yaml)")


@dataclass
class K8sJob:
    """A RayJob submitted by trainer, and the MLflow run that records it (a `JobHandle`)."""

    name: str
    namespace: str
    run_id: str | None = None
    tracking_uri: str | None = None        # as this machine reaches MLflow
    context: str | None = None
    last: Any = field(default=None, repr=False)
    warnings: list[str] = field(default_factory=list, repr=False, compare=False)

    @property
    def job_id(self) -> str:
        return self.name

    @property
    def logs_command(self) -> str:
        return f"kubectl logs -n {self.namespace} -l job-name={self.name}"

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

    def wait(self, timeout: float | None = None, poll_s: float = 5.0, on_change=None) -> JobState:
        """Follow until the job ends; a failure's reason and pod logs go into its MLflow run
        (while `ttlSecondsAfterFinished` still keeps the cluster). Returns the terminal state;
        `last` holds the last `Observed` (KubeRay's statuses, reason, note)."""
        for observed in self.follow(poll_s, timeout):
            if on_change is not None:
                on_change(observed)
        if self.last.state is not JobState.SUCCEEDED:
            self.record_failure(self.last)
        else:
            self._close_run(JobState.SUCCEEDED)
        return self.last.state

    def pod_logs(self) -> dict[str, str]:
        """The submitter pod's log (it follows the Ray job's driver output) and the head's, by pod."""
        kube = self._kube()
        out = kube.pod_logs(self.namespace, f"job-name={self.name}")
        cluster = self.last.cluster if self.last else ""
        if cluster:
            out.update(kube.pod_logs(self.namespace, f"ray.io/cluster={cluster},ray.io/node-type=head"))
        return out

    def logs(self) -> str:
        """`pod_logs` as one text: each pod's log under a `==> pod <==` header."""
        return "".join(f"==> {pod} <==\n{text.rstrip()}\n" for pod, text in self.pod_logs().items())

    def cancel(self) -> JobState:
        """Delete the RayJob (KubeRay stops its cluster with it); its run ends KILLED."""
        self._kube().delete_rayjob(self.namespace, self.name)
        self._close_run(JobState.CANCELLED)
        return JobState.CANCELLED

    def metrics(self):
        """Every metric the job logged, as a pandas DataFrame (key, step, value, timestamp)."""
        from trainer.tracking.runs import metrics_frame

        if not (self.run_id and self.tracking_uri):
            raise JobError(f"RayJob {self.namespace}/{self.name} has no MLflow run reachable from here "
                           f"(its driver opened one: see the MLflow UI)")
        return metrics_frame(self.tracking_uri, self.run_id)

    def failure(self) -> dict | None:
        """What failed: the run's `trainer.failure.*` tags (the driver wrote them), else what
        KubeRay said (reason, message, the disagreement note)."""
        from trainer.tracking.runs import failure_line, read_failure

        found = None
        if self.run_id and self.tracking_uri and store_reachable(self.tracking_uri):
            try:
                found = read_failure(self.tracking_uri, self.run_id)
            except TrainerError as e:
                self._warn(f"warning: the failure recorded in MLflow run {self.run_id} could not be read: "
                           f"{first_line(e)}")
        last = self.last
        if found is None and last is not None and last.state is not JobState.SUCCEEDED:
            why = " ".join(x for x in (last.reason, last.message) if x) or last.note
            found = {"type": last.reason or f"RayJob {last.state.value}", "message": last.message or last.note,
                     "stage": "kubernetes", "summary": why or "see the pod logs in its MLflow run"}
        if found is not None and "summary" not in found:
            found["summary"] = failure_line(found)
        return found

    def summary(self, state: JobState | None = None, started: float | None = None) -> dict:
        """The job's summary (as `Job.summary`) with KubeRay's statuses and reason."""
        state = state or self.status()
        last = self.last
        out = {"job_id": self.name, "status": state.value, "mlflow_run_id": self.run_id,
               "rayjob": self.name, "namespace": self.namespace}
        if last is not None:
            out.update(deployment_status=last.deployment, ray_job_status=last.job_status)
            if last.reason or last.message:
                out["reason"] = " ".join(x for x in (last.reason, last.message) if x)
        if started is not None:
            out["wall_time_s"] = round(time.time() - started, 1)
        if self.run_id and self.tracking_uri and store_reachable(self.tracking_uri):
            out.update(run_summary(self.tracking_uri, self.run_id))
        if state is not JobState.SUCCEEDED and state.is_terminal:
            out["failure"] = self.failure()
        if self.warnings:
            out["warnings"] = list(self.warnings)
        return out

    def record_failure(self, observed) -> None:
        """KubeRay's statuses and the pods' logs into the run, which ends FAILED if still open."""
        if not (self.run_id and self.tracking_uri):
            return
        from trainer.tracking.runs import record_failure

        tags = {"trainer.k8s.state": observed.state.value, "trainer.k8s.deployment_status": observed.deployment,
                "trainer.k8s.job_status": observed.job_status, "trainer.k8s.reason": observed.reason,
                "trainer.k8s.message": observed.message, "trainer.k8s.note": observed.note}
        try:
            logs = self.pod_logs()
        except TrainerError as e:   # the failure is still recorded without the logs
            logs = {"unavailable": f"pod logs could not be read: {e}"}
        try:
            record_failure(self.tracking_uri, self.run_id, {k: v for k, v in tags.items() if v}, logs)
        except TrainerError as e:
            log.warning("recording the failure of RayJob %s/%s in MLflow run %s failed", self.namespace,
                        self.name, self.run_id, exc_info=True)
            self._warn(f"warning: the failure could not be recorded in MLflow run {self.run_id}: {first_line(e)}")
            self._close_run(observed.state)

    def _close_run(self, state: JobState) -> None:
        close_run(self.tracking_uri, self.run_id, state,
                  f"RayJob {self.namespace}/{self.name} ended {state.value}", self._warn)

    def _warn(self, text: str) -> None:
        if text not in self.warnings:
            self.warnings.append(text)


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

    spec_obj, workdir = load_job_spec(spec, set, overrides)
    checked = check_spec(spec_obj, workdir)
    platform = load_platform(overlay)
    job_id = _rayjob_name(spec_obj.name)
    body = render_rayjob(spec_obj, platform, job_id=job_id, code_uri=code_uri, namespace=namespace)
    _refuse_inline_credentials(body)
    kube = Kube(context)
    ns = body["metadata"]["namespace"]
    pods_uri = body["metadata"]["annotations"][ANNOTATION_TRACKING_URI]
    here_uri = os.environ.get("MLFLOW_TRACKING_URI") or pods_uri
    run_id = None
    try:
        check_reachable(here_uri)   # MLflow's own client retries an unreachable server for minutes
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
