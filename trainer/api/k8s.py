"""Jobs on Kubernetes (KubeRay): render a RayJob, submit it, and the `K8sJob` handle."""
from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from trainer.api._common import check_reachable, load_job_spec
from trainer.credentials import redact
from trainer.errors import JobError, PreflightError
from trainer.protocol import ANNOTATION_TRACKING_URI
from trainer.spec import JobSpec
from trainer.state import JobState

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
