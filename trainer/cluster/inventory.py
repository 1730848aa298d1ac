"""What nodes a Ray cluster has: labels, total and free resources. Read through the dashboard
(HTTP), so it works the same for the local cluster and a remote KubeRay head."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from trainer.cluster.gpus import ACCELERATOR_LABEL
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


def nodes(dashboard_url: str, free: bool = True) -> list[Node]:
    """Alive nodes of the cluster behind `dashboard_url`; with `free`, also free resources.

    Plain HTTP against the dashboard's state API: no `import ray` (seconds on a loaded machine)
    on the path where preflight must answer fast.
    """
    import requests

    try:
        resp = requests.get(f"{dashboard_url}/api/v0/nodes", params={"limit": 10000, "detail": "true"}, timeout=10)
        resp.raise_for_status()
        states = resp.json()["data"]["result"]["result"]
    except (requests.RequestException, ValueError, KeyError, TypeError) as e:
        raise ClusterError(f"cannot read the node list from {dashboard_url}: {first_line(e)}") from None
    available = _available_resources(dashboard_url) if free else {}
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


def _available_resources(dashboard_url: str) -> dict[str, dict[str, float]]:
    """node id -> free resources, from the autoscaler's usage report (best effort: {} if absent)."""
    import requests

    try:
        resp = requests.get(f"{dashboard_url}/api/cluster_status", params={"format": "0"}, timeout=5)
        usage = resp.json()["data"]["clusterStatus"]["loadMetricsReport"]["usageByNode"]
    except Exception:
        return {}
    return {node_id: {k: float(total) - float(used) for k, (used, total) in res.items()}
            for node_id, res in usage.items()}
