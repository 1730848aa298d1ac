"""Offline validation of Kubernetes objects with the real tools, shared by the manifest and render
tests:

- core objects: `kubernetes-validate` in strict mode (unknown fields are errors) against a
  current Kubernetes version's OpenAPI schema;
- RayCluster / RayJob: `jsonschema` against the KubeRay 1.7 CRDs in ../shared/k8s-crds, plus
  `unknown_fields`, which catches the misspelt fields those schemas let through (they set no
  `additionalProperties: false`, and the API server silently prunes unknown fields of a CRD);
- every pod template inside a Ray object: strict `kubernetes-validate` as a core `PodTemplate`;
- the official `kubernetes` client builds every core object and pod template and serializes it
  back unchanged (its models coerce an integer quantity such as `nvidia.com/gpu: 1` to a string,
  so a round trip that changes the object flags it; unknown fields are dropped, so those too).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO.parent / "shared" / "k8s-crds"
OVERLAYS = ("dev", "staging", "prod")
K8S_VERSION = "1.33.0"       # validated against this and kubernetes_validate's newest
CORE_MODELS = {"Namespace": "V1Namespace", "ServiceAccount": "V1ServiceAccount", "Role": "V1Role",
               "RoleBinding": "V1RoleBinding", "ConfigMap": "V1ConfigMap", "Service": "V1Service",
               "Deployment": "V1Deployment", "PersistentVolumeClaim": "V1PersistentVolumeClaim"}


def kubectl() -> str | None:
    found = shutil.which("kubectl")
    beside = Path(sys.executable).parent / "kubectl"
    return found or (str(beside) if beside.is_file() else None)


def kustomize(folder: Path) -> list[dict]:
    proc = subprocess.run([kubectl(), "kustomize", str(folder)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if isinstance(d, dict)]


@lru_cache(maxsize=None)
def crd_schema(kind: str) -> dict:
    plural = {"RayCluster": "rayclusters", "RayJob": "rayjobs"}[kind]
    doc = yaml.load((CRDS / f"ray.io_{plural}.yaml").read_text(), Loader=yaml.CSafeLoader)
    (version,) = [v for v in doc["spec"]["versions"] if v.get("storage")]
    return version["schema"]["openAPIV3Schema"]


def crd_errors(obj: dict) -> list[str]:
    """jsonschema errors of a Ray object against its CRD, then the fields the CRD does not know."""
    import jsonschema

    schema = crd_schema(obj["kind"])
    validator = jsonschema.Draft7Validator(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]
    return errors + unknown_fields(obj, schema)


def unknown_fields(value, schema: dict, path: str = "") -> list[str]:
    """Keys the schema does not declare, anywhere (a structural schema drops them silently).
    `metadata` is free-form in the CRD: its keys are checked against ObjectMeta's usual ones."""
    out = []
    if isinstance(value, dict):
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            return out
        props, extra = schema.get("properties"), schema.get("additionalProperties")
        for key, item in value.items():
            if props is not None and key in props:
                out += unknown_fields(item, props[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                out += unknown_fields(item, extra, f"{path}.{key}")
            elif props is not None:
                out.append(f"{path}.{key}: unknown field")
        if path == "" and isinstance(value.get("metadata"), dict):
            known = {"name", "namespace", "labels", "annotations", "generateName"}
            out += [f".metadata.{k}: unknown field" for k in value["metadata"] if k not in known]
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            out += unknown_fields(item, schema["items"], f"{path}[{i}]")
    return out


def core_errors(obj: dict, version: str | None = None) -> list[str]:
    """Strict kubernetes-validate errors of a core object (empty list: valid)."""
    import kubernetes_validate

    try:
        kubernetes_validate.validate(obj, version or kubernetes_validate.latest_version(), strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{'/'.join(map(str, e.path))}: {e.message}"]
    return []


def pod_templates(obj: dict) -> list[tuple[str, dict]]:
    """(where, pod template) of a RayCluster/RayJob: head, every worker group, the submitter."""
    spec = obj["spec"]
    cluster = spec.get("rayClusterSpec", spec) if obj["kind"] == "RayJob" else spec
    out = [("head", cluster["headGroupSpec"]["template"])]
    out += [(f"group {g['groupName']}", g["template"]) for g in cluster.get("workerGroupSpecs") or []]
    if obj["kind"] == "RayJob" and spec.get("submitterPodTemplate"):
        out.append(("submitter", spec["submitterPodTemplate"]))
    return out


def pod_template_errors(template: dict, version: str | None = None) -> list[str]:
    wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "check"}, "template": template}
    return core_errors(wrapped, version)


def client_round_trip(obj, model: str) -> list[str]:
    """What changes when the official client builds `obj` as `model` and serializes it back."""
    from kubernetes import client

    api = client.ApiClient()

    class Response:
        data = json.dumps(obj)

    built = api.deserialize(Response(), model)
    back = api.sanitize_for_serialization(built)
    return _diff(obj, back)


def _diff(a, b, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            if k not in b:
                out.append(f"{path}.{k}: dropped by the client (unknown field)")
            elif k not in a:
                continue   # defaults the client adds
            else:
                out += _diff(a[k], b[k], f"{path}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _diff(x, y, f"{path}[{i}]")]
    if a != b or type(a) is not type(b):
        return [f"{path}: {a!r} became {b!r}"]
    return []


def containers(template: dict) -> list[dict]:
    spec = template.get("spec") or {}
    return list(spec.get("containers") or []) + list(spec.get("initContainers") or [])
