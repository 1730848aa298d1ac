"""Clusters: the local Ray cluster (up, down, status), this host's GPUs and joining a head."""
from __future__ import annotations

from typing import Callable

from trainer.api._common import resolve_address
from trainer.credentials import redact

def cluster_up(nodes: list[str] | None = None, progress: Callable[[str], None] | None = None,
               image: str | None = None):
    """Start the local cluster (or reuse it). `nodes` are `ACCEL:CPUS[:GPUS]` strings. `image`:
    the worker nodes run as containers of it: a runtime's name (its local cpu image built from the
    current lock, `trainer image build`) or an image reference."""
    from trainer.cluster.local import LocalCluster, NodeSpec

    specs = [NodeSpec.parse(n) for n in nodes] if nodes else None
    if image and "/" not in image and ":" not in image:
        from trainer.api.images import image_ref

        image = image_ref(image)
    return LocalCluster().up(specs, progress=progress, image=image)


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


def cluster_address(address: str | None, progress=None) -> tuple[str, bool]:
    """(dashboard address, is_local). Starts the local cluster when no address is given."""
    address = resolve_address(address)
    if address is not None:
        return address, False
    state, _ = cluster_up(progress=progress)
    return state.dashboard_url, True


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
