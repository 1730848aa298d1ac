"""What nodes a Ray cluster has: labels, total and free resources. Read through the dashboard
(HTTP), so it works the same for the local cluster and a remote KubeRay head."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from trainer.cluster import auth
from trainer.cluster.gpus import ACCELERATOR_LABEL
from trainer.credentials import redact, redact_text
from trainer.errors import ClusterError, first_line


@dataclass
class Node:
    node_id: str
    is_head: bool
    state: str
    accelerator: str | None
    cpus: float
    gpus: float
    cpus_free: float | None = None
    gpus_free: float | None = None
    labels: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        role = "head" if self.is_head else (self.accelerator or "unlabelled")
        scalable = ", can scale up" if self.state == "SCALABLE" else ""
        return f"{role}(cpus={self.cpus:g}, gpus={self.gpus:g}{scalable})"


def nodes(dashboard_url: str, free: bool = True, headers: dict[str, str] | None = None) -> list[Node]:
    """Alive nodes of the cluster behind `dashboard_url`; with `free`, also free resources.
    `headers` carry the cluster's token (default: `auth.headers_for(dashboard_url)`).

    Plain HTTP against the dashboard's state API: no `import ray` (seconds on a loaded machine)
    on the path where preflight must answer fast.
    """
    import requests

    headers = auth.headers_for(dashboard_url) if headers is None else headers
    try:
        resp = requests.get(f"{dashboard_url}/api/v0/nodes", params={"limit": 10000, "detail": "true"},
                            headers=headers, timeout=10)
        if resp.status_code in (401, 403):
            raise ClusterError(unauthorized(dashboard_url, resp.status_code, bool(headers)))
        resp.raise_for_status()
        states = resp.json()["data"]["result"]["result"]
    except (requests.RequestException, ValueError, KeyError, TypeError) as e:
        raise ClusterError(f"cannot read the node list from {redact(dashboard_url)}: "
                           f"{redact_text(first_line(e))}") from None
    available = _available_resources(dashboard_url, headers) if free else {}
    result = []
    for s in states:
        if s.get("state") != "ALIVE":
            continue
        res, labels, node_id = s.get("resources_total") or {}, s.get("labels") or {}, s["node_id"]
        avail = available.get(node_id)
        result.append(Node(
            node_id=node_id, is_head=bool(s.get("is_head_node")), state=s["state"],
            accelerator=labels.get(ACCELERATOR_LABEL),
            cpus=float(res.get("CPU", 0)), gpus=float(res.get("GPU", 0)),
            cpus_free=None if avail is None else avail.get("CPU", 0.0),
            gpus_free=None if avail is None else avail.get("GPU", 0.0),
            labels={k: v for k, v in labels.items() if k != "ray.io/node-id"}))
    return sorted(result, key=lambda n: (not n.is_head, n.accelerator or "", n.node_id))


def unauthorized(address: str, status: int, sent_token: bool) -> str:
    """Why a dashboard said 401/403, and where the token comes from."""
    where = redact(address)
    if not sent_token:
        return (f"the Ray cluster at {where} requires a token ({status}): set {auth.ENV_TOKEN} or "
                f"{auth.ENV_TOKEN_PATH} (a file holding it), as for `ray job submit`")
    return (f"the Ray cluster at {where} refused the token ({status}): check {auth.ENV_TOKEN} / "
            f"{auth.ENV_TOKEN_PATH} (the local cluster's token is new at every `trainer cluster up`)")


def _available_resources(dashboard_url: str, headers: dict[str, str]) -> dict[str, dict[str, float]]:
    """node id -> free resources, from the autoscaler's usage report (best effort: {} if absent)."""
    import requests

    try:
        resp = requests.get(f"{dashboard_url}/api/cluster_status", params={"format": "0"}, headers=headers,
                            timeout=5)
        usage = resp.json()["data"]["clusterStatus"]["loadMetricsReport"]["usageByNode"]
    except Exception:
        return {}
    return {node_id: {k: float(total) - float(used) for k, (used, total) in res.items()}
            for node_id, res in usage.items()}
