"""The Kubernetes API, kept thin: create/read/delete RayJobs, read RayClusters and the logs a
job's pods leave. The official `kubernetes` client is imported here only (an import-linter
contract says so); every ApiException becomes a TrainerError at this boundary.

No API server can run where the tests run: the logic (render, status mapping) lives in
`trainer.scheduling.rayjob`, which is tested; this module only moves objects.
"""
from __future__ import annotations

from trainer.errors import ClusterError, JobError, UsageError, describe, first_line

GROUP, VERSION = "ray.io", "v1"


class Kube:
    def __init__(self, context: str | None = None):
        try:
            from kubernetes import client, config
        except ImportError:
            raise UsageError("the Kubernetes client is not installed: pip install 'trainer[k8s]'") from None
        try:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config(context=context)
        except Exception as e:
            raise ClusterError(f"no Kubernetes configuration (kubeconfig or in-cluster): {first_line(e)}") from e
        self._custom = client.CustomObjectsApi()
        self._core = client.CoreV1Api()
        self._api_error = client.ApiException

    def _call(self, error, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except self._api_error as e:
            if e.status == 404:
                raise JobError(f"{what}: not found ({describe(e)})") from e
            raise error(f"{what}: {describe(e)}") from e
        except Exception as e:   # connection refused, TLS, timeouts
            raise ClusterError(f"{what}: cannot reach the Kubernetes API: {first_line(e)}") from e

    def create_rayjob(self, body: dict) -> dict:
        meta = body["metadata"]
        return self._call(JobError, f"create RayJob {meta['namespace']}/{meta['name']}",
                          self._custom.create_namespaced_custom_object, GROUP, VERSION, meta["namespace"],
                          "rayjobs", body)

    def rayjob(self, namespace: str, name: str) -> dict:
        return self._call(ClusterError, f"read RayJob {namespace}/{name}",
                          self._custom.get_namespaced_custom_object, GROUP, VERSION, namespace, "rayjobs", name)

    def delete_rayjob(self, namespace: str, name: str) -> None:
        self._call(ClusterError, f"delete RayJob {namespace}/{name}",
                   self._custom.delete_namespaced_custom_object, GROUP, VERSION, namespace, "rayjobs", name)

    def raycluster(self, namespace: str, name: str) -> dict:
        return self._call(ClusterError, f"read RayCluster {namespace}/{name}",
                          self._custom.get_namespaced_custom_object, GROUP, VERSION, namespace, "rayclusters", name)

    def pod_logs(self, namespace: str, selector: str, tail_lines: int = 2000) -> dict[str, str]:
        """pod name -> its last `tail_lines` lines, for the pods matching a label selector (best
        effort: a pod whose logs cannot be read says why in its entry)."""
        pods = self._call(ClusterError, f"list pods {selector} in {namespace}",
                          self._core.list_namespaced_pod, namespace, label_selector=selector)
        out = {}
        for pod in pods.items:
            name = pod.metadata.name
            try:
                out[name] = self._core.read_namespaced_pod_log(name, namespace, tail_lines=tail_lines)
            except Exception as e:
                out[name] = f"(logs unavailable: {describe(e)})"
        return out
