"""A job spec as a KubeRay `RayJob`, and a RayJob's status as a trainer job state. Both pure:
no Kubernetes API, no I/O (tests render every example spec and replay recorded statuses).

`render_rayjob(spec, platform, job_id=...)` cuts the job's own Ray cluster from the platform's
worker groups: the CPU-only head, plus the one group serving `resources.accelerator`, sized to
the job (pods = workers / workers-per-pod), every pod on the framework's runtime image. What can
never schedule is refused before anything is created: an accelerator no group serves, more pods
than the group's maxReplicas, more GPUs or CPUs per worker than a pod of the group holds.

KubeRay fields and why:
- `preRunningDeadlineSeconds` always: a job whose cluster never starts (image pull, no GPU node,
  quota) fails instead of sitting in Initializing forever (kuberay #845, #1990, #2781, #4178).
- `activeDeadlineSeconds` from the spec's `timeout_minutes`.
- `backoffLimit` = `failure.max_failures`: each retry is a new cluster, resuming from the last
  checkpoint (same run name and storage path).
- `shutdownAfterJobFinishes` + `ttlSecondsAfterFinished`: the cluster goes away after the TTL
  (the window in which `trainer submit --k8s --wait` copies a failed job's logs to MLflow).
- the MLflow URI in the runtime env, its credentials from a Secret by name (`envFrom`), never inline;
  the code as `working_dir`: a URI the cluster can fetch (s3://, gs://, https://... .zip).
"""
from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass
from urllib.parse import urlparse

import yaml

from trainer.cluster.accelerators import RAY_LABEL
from trainer.cluster.kuberay import GPU_RESOURCE, WorkerGroup, container
from trainer.errors import PreflightError, SpecError
from trainer.protocol import (ANNOTATION_RUN_ID, ANNOTATION_TRACKING_URI, ENV_TRACKING_URI, LABEL_FRAMEWORK,
                              LABEL_JOB_NAME, META_NAME, META_RUN_ID, META_TRACKING_URI, driver_entrypoint,
                              job_runtime_env)
from trainer.spec import JobSpec
from trainer.state import JobState

API_VERSION = "ray.io/v1"
ENTRYPOINT = driver_entrypoint("python")
# KubeRay refuses longer RayJob names (its RayCluster and Service names derive from them).
MAX_NAME = 47
CODE_SCHEMES = ("s3", "gs", "https", "http", "azure", "abfss")
SUBMITTER_RESOURCES = {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}}


# ---------------------------------------------------------------- names

def rayjob_name(job_name: str, stamp: str, token: str) -> str:
    """A RayJob name (DNS-1035 label, <= 47 characters) from the spec's name, a time stamp
    (`20261130-101500`) and a random token: `digits-cnn-20261130-101500-ab12`."""
    suffix = f"-{stamp}-{token}".lower()
    base = re.sub(r"[^a-z0-9-]", "-", job_name.lower()).strip("-") or "job"
    if not base[0].isalpha():
        base = f"j-{base}"
    base = base[:MAX_NAME - len(suffix)].rstrip("-")
    return f"{base}{suffix}"


_DNS_1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_DNS_1123 = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def check_names(job_id: str, namespace: str) -> None:
    """The RayJob's name (a DNS-1035 label KubeRay accepts: <= 47) and its namespace (a DNS-1123
    label: <= 63), checked before rendering: anything else makes an object the API server
    refuses, or a newline that breaks the YAML it is written into."""
    if not isinstance(job_id, str) or len(job_id) > MAX_NAME or not _DNS_1035.fullmatch(job_id):
        raise SpecError(f"{_shown(job_id)} is not a RayJob name: lowercase letters, digits and '-', starting "
                        f"with a letter, ending with a letter or digit, at most {MAX_NAME} characters "
                        f"(KubeRay derives its cluster's names from it)", path="--name")
    if not isinstance(namespace, str) or len(namespace) > 63 or not _DNS_1123.fullmatch(namespace):
        raise SpecError(f"{_shown(namespace)} is not a Kubernetes namespace: lowercase letters, digits and '-', "
                        f"starting and ending with a letter or digit, at most 63 characters", path="--namespace")


def _shown(value) -> str:
    """A bad value in one line: repr (escapes a newline or a terminal escape), cut short."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:40]}... ({len(str(value))} characters)"


def _label_value(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", text)[:63].strip("-_.") or "x"


# ---------------------------------------------------------------- render

@dataclass(frozen=True)
class Placement:
    """How the job lands on its worker group."""

    group: WorkerGroup
    workers_per_pod: int
    pods: int


def place(spec: JobSpec, groups: list[WorkerGroup], where: str = "the platform") -> Placement:
    """The group serving the job's accelerator and how many of its pods the job needs, or a
    PreflightError saying why it can never schedule."""
    res = spec.resources
    serving = [g for g in groups if g.accelerator == res.accelerator]
    catalogue = ", ".join(f"{g.name} ({g.accelerator or 'unlabelled'}, max {g.max_replicas})" for g in groups) or "none"
    if not serving:
        raise PreflightError(f"no worker group of {where} serves {RAY_LABEL}={res.accelerator}; "
                             f"groups: {catalogue}")
    reasons = []
    for group in serving:
        if res.gpus_per_worker > group.gpus + 1e-9:
            reasons.append(f"group {group.name}: {res.gpus_per_worker:g} GPUs per worker is beyond its "
                           f"pods' {GPU_RESOURCE} limit of {group.gpus:g}")
            continue
        if res.cpus_per_worker > group.cpus + 1e-9:
            reasons.append(f"group {group.name}: {res.cpus_per_worker:g} CPUs per worker is beyond its "
                           f"pods' {group.cpus:g} CPUs")
            continue
        per_pod = group.workers_per_pod(res.cpus_per_worker, res.gpus_per_worker)
        pods = math.ceil(spec.workers / per_pod)
        if pods > group.max_replicas:
            reasons.append(f"group {group.name}: {spec.workers} worker(s) at {per_pod} per pod need {pods} "
                           f"pod(s), more than its maxReplicas {group.max_replicas} allows")
            continue
        return Placement(group, per_pod, pods)
    raise PreflightError(f"cannot place {spec.workers} worker(s) x (cpus={res.cpus_per_worker:g}, "
                         f"gpus={res.gpus_per_worker:g}) on {RAY_LABEL}={res.accelerator}: " + "; ".join(reasons))


def check_code_uri(code_uri: str | None) -> str:
    """A working_dir the cluster can fetch: a remote .zip URI. A local path is refused."""
    if not code_uri:
        raise SpecError("the cluster cannot read this machine's files: pass --code-uri with a .zip of "
                        "the project the cluster can fetch (s3://, gs://, https://), or set codeUri in "
                        "the overlay's platform.yaml", path="--code-uri")
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in code_uri):
        raise SpecError(f"{_shown(code_uri)}: a URI has no spaces or control characters", path="--code-uri")
    parsed = urlparse(code_uri)
    if parsed.username is not None or parsed.password is not None:
        raise SpecError(f"{parsed.scheme}://{parsed.hostname or ''}/...: the code URI carries credentials "
                        f"(user:password@), which would be written in clear into the RayJob anyone who can "
                        f"read it sees; use a presigned URL, or a bucket the cluster's service account "
                        f"can read", path="--code-uri")
    scheme = parsed.scheme
    if scheme not in CODE_SCHEMES:
        raise SpecError(f"{code_uri!r} is a local path the cluster cannot read; upload a .zip of the "
                        f"project and give its URI ({', '.join(s + '://' for s in CODE_SCHEMES)})",
                        path="--code-uri")
    if not urlparse(code_uri).path.endswith(".zip"):
        raise SpecError(f"{code_uri!r}: Ray fetches a remote working_dir only as a .zip file", path="--code-uri")
    return code_uri


def check_image(image: str, runtime: str) -> str:
    """An image pinned by digest, or by a tag that is not `latest`."""
    if "@sha256:" in image:
        return image
    last = image.rsplit("/", 1)[-1]
    if ":" not in last or last.endswith(":latest"):
        raise SpecError(f"image {image!r} for runtime {runtime} is not pinned: give a tag (not latest) "
                        f"or a digest", path="platform.images")
    return image


def render_rayjob(spec: JobSpec, platform, *, job_id: str, code_uri: str | None = None,
                  run_id: str | None = None, tracking_uri: str | None = None,
                  namespace: str | None = None) -> dict:
    """The RayJob for `spec` on `platform` (a `trainer.scheduling.platform.Platform`)."""
    from trainer.tracking.runs import is_embedded

    settings = platform.settings
    check_names(job_id, namespace or platform.namespace)
    placement = place(spec, platform.groups, where=f"overlay {platform.name}")
    runtime = spec.runtime_name
    if runtime not in settings.images:
        raise SpecError(f"overlay {platform.name} has no image for runtime {runtime!r} "
                        f"(images: {', '.join(sorted(settings.images))})", path="platform.images")
    image = check_image(settings.images[runtime], runtime)
    code = check_code_uri(code_uri or settings.code_uri)
    uri = spec.tracking.uri or tracking_uri or settings.tracking_uri
    if not uri or is_embedded(uri):
        raise SpecError(f"the job's pods need an MLflow server, not {uri or 'the embedded SQLite store'}: set "
                        f"tracking.uri, or trackingUri in the overlay's platform.yaml", path="tracking.uri")
    storage = spec.checkpoint.storage or settings.checkpoint_storage
    if not storage:
        raise SpecError("the job's workers and its driver run in different pods: checkpoints need shared "
                        "storage (s3://, gs://, or a shared volume); set checkpoint.storage, or "
                        "checkpointStorage in the overlay's platform.yaml", path="checkpoint.storage")
    driver_spec = spec.model_copy(deep=True)
    driver_spec.checkpoint.storage = storage
    driver_spec.tracking.uri = uri

    runtime_env = job_runtime_env(driver_spec.model_dump_json(exclude_none=True), job_id=job_id, tracking_uri=uri,
                                  run_id=run_id, working_dir=code)
    metadata = {"trainer": "1", META_NAME: spec.name, META_TRACKING_URI: uri, **({META_RUN_ID: run_id} if run_id else {})}

    cluster = platform.raycluster["spec"]
    head = _with_image(cluster["headGroupSpec"], image, settings, uri)
    group = _with_image(placement.group.spec, image, settings, uri)
    for key in ("idleTimeoutSeconds", "scaleStrategy", "suspend"):
        group.pop(key, None)
    group.update(replicas=placement.pods, minReplicas=placement.pods, maxReplicas=placement.pods)

    labels = {"app.kubernetes.io/part-of": "trainer", "app.kubernetes.io/managed-by": "trainer",
              LABEL_JOB_NAME: _label_value(spec.name), LABEL_FRAMEWORK: spec.framework,
              RAY_LABEL: _label_value(spec.resources.accelerator)}
    body = {
        "apiVersion": API_VERSION,
        "kind": "RayJob",
        "metadata": {"name": job_id, "namespace": namespace or platform.namespace, "labels": labels,
                     "annotations": {ANNOTATION_RUN_ID: run_id or "", ANNOTATION_TRACKING_URI: uri}},
        "spec": {
            "entrypoint": ENTRYPOINT,
            "runtimeEnvYAML": yaml.safe_dump(runtime_env, sort_keys=True),
            "jobId": job_id,
            "metadata": metadata,
            "submissionMode": "K8sJobMode",
            "backoffLimit": spec.failure.max_failures,
            "preRunningDeadlineSeconds": settings.pre_running_deadline_s,
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": settings.ttl_after_finished_s,
            "submitterPodTemplate": _submitter(head, image, settings),
            "rayClusterSpec": {
                "rayVersion": cluster.get("rayVersion"),
                "enableInTreeAutoscaling": False,
                "headGroupSpec": head,
                "workerGroupSpecs": [group],
            },
        },
    }
    if spec.timeout_minutes:
        body["spec"]["activeDeadlineSeconds"] = spec.timeout_minutes * 60
    if not body["metadata"]["annotations"][ANNOTATION_RUN_ID]:
        del body["metadata"]["annotations"][ANNOTATION_RUN_ID]
    return body


def _with_image(group_spec: dict, image: str, settings, tracking_uri: str) -> dict:
    """A copy of a head/worker group whose containers run `image`, pull with the platform's
    secret, point MLFLOW_TRACKING_URI at the job's server and get its credentials by Secret name."""
    out = copy.deepcopy(group_spec)
    pod = out.setdefault("template", {}).setdefault("spec", {})
    for c in pod.get("containers") or []:
        c["image"] = image
        env = [e for e in c.get("env") or [] if e.get("name") != ENV_TRACKING_URI]
        c["env"] = env + [{"name": ENV_TRACKING_URI, "value": tracking_uri}]
        if settings.tracking_secret:
            refs = c.setdefault("envFrom", [])
            if not any((r.get("secretRef") or {}).get("name") == settings.tracking_secret for r in refs):
                refs.append({"secretRef": {"name": settings.tracking_secret}})
    if settings.image_pull_secret:
        secrets = pod.setdefault("imagePullSecrets", [])
        if not any(s.get("name") == settings.image_pull_secret for s in secrets):
            secrets.append({"name": settings.image_pull_secret})
    return out


def _submitter(head: dict, image: str, settings) -> dict:
    """The pod that runs `ray job submit` (KubeRay fills in the command): the head's image, pull
    secret and security contexts, small fixed resources, no API token."""
    head_pod = head["template"]["spec"]
    ray = container(head["template"])
    spec = {"restartPolicy": "Never", "automountServiceAccountToken": False,
            "containers": [{"name": "ray-job-submitter", "image": image,
                            "resources": copy.deepcopy(SUBMITTER_RESOURCES),
                            "securityContext": copy.deepcopy(ray.get("securityContext") or {})}]}
    if head_pod.get("securityContext"):
        spec["securityContext"] = copy.deepcopy(head_pod["securityContext"])
    if head_pod.get("imagePullSecrets"):
        spec["imagePullSecrets"] = copy.deepcopy(head_pod["imagePullSecrets"])
    return {"spec": spec}


# ---------------------------------------------------------------- status

_PENDING_DEPLOYMENT = {"", "New", "Initializing", "Waiting", "Scheduling", "Scheduled", "Suspending",
                       "Suspended", "Retrying"}


@dataclass(frozen=True)
class Observed:
    """A RayJob's status read as a trainer job state, with what KubeRay said."""

    state: JobState
    deployment: str
    job_status: str
    reason: str = ""
    message: str = ""
    note: str = ""            # set when job and deployment status disagree
    cluster: str = ""

    def describe(self) -> str:
        parts = [self.state.value, f"(deployment {self.deployment or 'New'}, Ray job {self.job_status or '-'})"]
        if self.reason or self.message:
            parts.append(": " + " ".join(p for p in (self.reason, self.message) if p))
        if self.note:
            parts.append(f" [{self.note}]")
        return " ".join(parts[:2]) + "".join(parts[2:])


def observe(rayjob: dict) -> Observed:
    """The trainer state of a RayJob from its `status`, reading both fields KubeRay keeps.

    `jobDeploymentStatus` (KubeRay's view: cluster, submitter) and `jobStatus` (Ray's view of the
    job) disagree in real clusters (kuberay #2154, #3553): a terminal deployment decides; a
    succeeded Ray job is SUCCEEDED even while the deployment catches up; a failed Ray job whose
    deployment is still going is RUNNING, since KubeRay may retry it (backoffLimit) on a new cluster.
    """
    status = rayjob.get("status") or {}
    deployment = status.get("jobDeploymentStatus") or ""
    job = status.get("jobStatus") or ""
    reason, message = status.get("reason") or "", status.get("message") or ""
    cluster = status.get("rayClusterName") or ""

    def out(state: JobState, note: str = "") -> Observed:
        return Observed(state, deployment, job, reason, message, note, cluster)

    if deployment == "Complete":
        if job == "SUCCEEDED":
            return out(JobState.SUCCEEDED)
        if job == "STOPPED":
            return out(JobState.CANCELLED)
        return out(JobState.FAILED, "" if job == "FAILED" else f"deployment Complete with Ray job {job or 'unknown'}")
    if deployment == "Failed":
        if job == "SUCCEEDED":
            return out(JobState.SUCCEEDED, f"the Ray job succeeded; KubeRay marked the deployment Failed ({reason or 'no reason'})")
        if job == "STOPPED":
            return out(JobState.CANCELLED)
        note = f"deployment Failed while the Ray job was {job}" if job and job != "FAILED" else ""
        return out(JobState.FAILED, note)
    if job == "SUCCEEDED":
        return out(JobState.SUCCEEDED, f"the Ray job succeeded; the deployment is still {deployment or 'New'}")
    if deployment == "Retrying":
        return out(JobState.PENDING, f"retrying on a new cluster after Ray job {job or 'failure'}")
    if job in ("FAILED", "STOPPED"):
        return out(JobState.RUNNING, f"Ray job {job}; waiting for KubeRay to retry or finish the deployment")
    if deployment == "Running":
        return out(JobState.RUNNING if job == "RUNNING" else JobState.PENDING)
    if deployment in _PENDING_DEPLOYMENT:
        return out(JobState.PENDING)
    return out(JobState.PENDING, f"unknown deployment status {deployment!r}")
