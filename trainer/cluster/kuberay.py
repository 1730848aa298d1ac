"""A KubeRay RayCluster read as capacity: its worker groups, what each pod holds, how far each
group can scale.

A KubeRay cluster scaled to zero has no alive GPU nodes, yet a job for its A100 group can run: the
autoscaler adds pods up to `maxReplicas`. `WorkerGroup.capacity_nodes()` turns that headroom into
inventory `Node`s (state `SCALABLE`) that preflight counts beside the alive ones; `trainer k8s
render` takes the same groups as the catalogue a RayJob's cluster is cut from.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from trainer.cluster.accelerators import RAY_LABEL
from trainer.cluster.inventory import Node
from trainer.errors import UsageError

GPU_RESOURCE = "nvidia.com/gpu"
SCALABLE = "SCALABLE"


@dataclass
class WorkerGroup:
    name: str
    accelerator: str | None
    min_replicas: int
    max_replicas: int
    replicas: int
    cpus: float                 # Ray CPUs per pod
    gpus: float                 # Ray GPUs per pod (= the container's nvidia.com/gpu limit)
    idle_timeout_s: int | None = None
    spec: dict = field(default_factory=dict, repr=False)   # the group as written

    def workers_per_pod(self, cpus_per_worker: float, gpus_per_worker: float) -> int:
        by_cpu = math.floor(self.cpus / cpus_per_worker + 1e-9)
        by_gpu = math.floor(self.gpus / gpus_per_worker + 1e-9) if gpus_per_worker else by_cpu
        return min(by_cpu, by_gpu)

    def capacity_nodes(self, alive: int = 0) -> list[Node]:
        """A Node per pod the group can still add (maxReplicas minus the `alive` ones)."""
        return [Node(node_id=f"kuberay:{self.name}:{i}", is_head=False, state=SCALABLE,
                     accelerator=self.accelerator, cpus=self.cpus, gpus=self.gpus,
                     labels={RAY_LABEL: self.accelerator} if self.accelerator else {})
                for i in range(max(0, self.max_replicas - alive))]


def load_raycluster(path: str | Path) -> dict:
    """A RayCluster from a YAML file (the first document of kind RayCluster)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"cluster_spec {p}: no such file", argument="cluster_spec")
    try:
        docs = [d for d in yaml.safe_load_all(p.read_text()) if isinstance(d, dict)]
    except yaml.YAMLError as e:
        raise UsageError(f"cluster_spec {p}: not valid YAML: {getattr(e, 'problem', e)}",
                         argument="cluster_spec") from None
    for doc in docs:
        if doc.get("kind") == "RayCluster":
            return doc
        if doc.get("kind") == "List":
            for item in doc.get("items") or []:
                if isinstance(item, dict) and item.get("kind") == "RayCluster":
                    return item
    raise UsageError(f"cluster_spec {p}: no RayCluster in it (kinds: "
                     f"{', '.join(str(d.get('kind')) for d in docs) or 'none'})", argument="cluster_spec")


def worker_groups(raycluster: dict) -> list[WorkerGroup]:
    """The worker groups of a RayCluster object (or of a RayCluster spec)."""
    spec = raycluster.get("spec", raycluster) if "workerGroupSpecs" not in raycluster else raycluster
    return [_group(g) for g in spec.get("workerGroupSpecs") or []]


def capacity_nodes(raycluster: dict, alive: list[Node]) -> list[Node]:
    """Pods the cluster's groups can still add, given the alive nodes (matched by accelerator)."""
    out: list[Node] = []
    alive_by_accel: dict[str | None, int] = {}
    for n in alive:
        if not n.is_head:
            alive_by_accel[n.accelerator] = alive_by_accel.get(n.accelerator, 0) + 1
    for group in worker_groups(raycluster):
        taken = min(alive_by_accel.get(group.accelerator, 0), group.max_replicas)
        alive_by_accel[group.accelerator] = alive_by_accel.get(group.accelerator, 0) - taken
        out.extend(group.capacity_nodes(alive=taken))
    return out


def container(template: dict) -> dict:
    """The Ray container of a pod template (KubeRay: the first one)."""
    containers = (template.get("spec") or {}).get("containers") or [{}]
    return containers[0]


def quantity(value) -> float:
    """A Kubernetes quantity as a number: "500m" -> 0.5, "2" -> 2, "8Gi" -> 8 * 2**30."""
    if value is None:
        return 0.0
    text = str(value).strip()
    m = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", text)
    if not m:
        raise UsageError(f"not a Kubernetes quantity: {value!r}")
    number, unit = float(m.group(1)), m.group(2)
    scale = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20,
             "Gi": 2**30, "Ti": 2**40}
    if unit not in scale:
        raise UsageError(f"not a Kubernetes quantity: {value!r}")
    return number * scale[unit]


def _group(g: dict) -> WorkerGroup:
    params = g.get("rayStartParams") or {}
    typed = g.get("resources") or {}
    res = container(g.get("template") or {}).get("resources") or {}
    limits, requests = res.get("limits") or {}, res.get("requests") or {}

    def amount(param: str, typed_key: str, k8s_key: str) -> float:
        for source in (params.get(param), typed.get(typed_key), limits.get(k8s_key), requests.get(k8s_key)):
            if source is not None:
                return quantity(source)
        return 0.0

    accelerator = (g.get("labels") or {}).get(RAY_LABEL) or _label_from_params(params.get("labels"))
    return WorkerGroup(
        name=g.get("groupName", "?"), accelerator=accelerator,
        min_replicas=int(g.get("minReplicas", 0)), max_replicas=int(g.get("maxReplicas", 2**31 - 1)),
        replicas=int(g.get("replicas", 0)), cpus=amount("num-cpus", "CPU", "cpu"),
        gpus=amount("num-gpus", "GPU", GPU_RESOURCE), idle_timeout_s=g.get("idleTimeoutSeconds"), spec=g)


def _label_from_params(text: str | None) -> str | None:
    """`ray.io/accelerator-type=A100,...` as given to `ray start --labels`."""
    for item in (text or "").split(","):
        key, _, value = item.partition("=")
        if key.strip() == RAY_LABEL:
            return value.strip()
    return None
