"""k8s/: every overlay renders with kubectl kustomize, every object validates with the real tools
(kubernetes-validate strict, the KubeRay CRD schemas + an unknown-field check, the kubernetes
client's models), and the platform policy holds (CPU-only head, labelled/tolerating/limited GPU
groups selecting on the identity table's values, non-root, pinned images, requests + limits)."""
import copy
import re

import pytest
import yaml

from _k8s_checks import (CORE_MODELS, K8S_VERSION, OVERLAYS, client_round_trip, containers, core_errors, crd_errors,
                         pod_template_errors, pod_templates)

from trainer.cluster.accelerators import CPU, RAY_LABEL, selector_values
from trainer.cluster.kuberay import worker_groups
from trainer.scheduling.platform import platform_from_objects

GPU = "nvidia.com/gpu"


def _of(objects, kind):
    return [o for o in objects if o["kind"] == kind]


def _raycluster(objects):
    (rc,) = _of(objects, "RayCluster")
    return rc


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_the_whole_platform(rendered, overlay):
    kinds = sorted(o["kind"] for o in rendered[overlay])
    for kind in ("Namespace", "RayCluster", "Deployment", "Service", "ServiceAccount", "Role", "RoleBinding",
                 "ConfigMap"):
        assert kind in kinds, kind
    namespaces = {o["metadata"].get("namespace") for o in rendered[overlay] if o["kind"] != "Namespace"}
    assert namespaces == {f"trainer-{overlay}"}
    assert _of(rendered[overlay], "Namespace")[0]["metadata"]["name"] == f"trainer-{overlay}"


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("version", [K8S_VERSION, None])
def test_core_objects_validate_strictly(rendered, overlay, version):
    core = [o for o in rendered[overlay] if o["kind"] in CORE_MODELS]
    assert len(core) >= 9
    errors = {f"{o['kind']}/{o['metadata']['name']}": core_errors(o, version) for o in core}
    assert {k: v for k, v in errors.items() if v} == {}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_core_objects_survive_the_kubernetes_client(rendered, overlay):
    for obj in rendered[overlay]:
        if obj["kind"] in CORE_MODELS:
            assert client_round_trip(obj, CORE_MODELS[obj["kind"]]) == [], obj["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_raycluster_validates_against_the_kuberay_crd(rendered, crds, overlay):
    rc = _raycluster(rendered[overlay])
    assert crd_errors(rc) == []
    for where, template in pod_templates(rc):
        assert pod_template_errors(template) == [], where
        assert client_round_trip(template, "V1PodTemplateSpec") == [], where


def test_the_checks_catch_a_misspelt_field_and_an_integer_quantity(rendered, crds):
    rc = copy.deepcopy(_raycluster(rendered["prod"]))
    rc["spec"]["workerGroupSpecs"][0]["minReplica"] = 1            # the CRD schema alone lets it through
    group = rc["spec"]["workerGroupSpecs"][1]["template"]
    group["spec"]["containers"][0]["resources"]["limits"][GPU] = 1
    group["spec"]["tolerations"][0]["efect"] = "NoSchedule"
    assert ".spec.workerGroupSpecs[0].minReplica: unknown field" in crd_errors(rc)
    assert any("efect" in e for e in pod_template_errors(group))
    assert any("nvidia.com/gpu: 1 became '1'" in d for d in client_round_trip(group, "V1PodTemplateSpec"))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_head_is_cpu_only(rendered, overlay):
    head = _raycluster(rendered[overlay])["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    for c in containers(head["template"]):
        res = c.get("resources") or {}
        assert GPU not in (res.get("limits") or {}) and GPU not in (res.get("requests") or {})
    assert not (head["template"]["spec"].get("tolerations"))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_gpu_group_has_selector_toleration_limit_and_ray_label(rendered, overlay):
    rc = _raycluster(rendered[overlay])
    groups = {g.name: g for g in worker_groups(rc)}
    assert sorted(g.accelerator for g in groups.values()) == ["A100", "H100", "T4", CPU]
    for spec in rc["spec"]["workerGroupSpecs"]:
        accel = spec["labels"][RAY_LABEL]
        pod = spec["template"]["spec"]
        limits = pod["containers"][0]["resources"]["limits"]
        assert spec["minReplicas"] == 0 and spec.get("idleTimeoutSeconds"), "autoscales from zero"
        if accel == CPU:
            assert GPU not in limits and not pod.get("tolerations")
            continue
        assert isinstance(limits[GPU], str) and int(limits[GPU]) >= 1
        assert {"key": GPU, "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        (term,) = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        (expr,) = term["matchExpressions"]
        assert expr["key"] == "nvidia.com/gpu.product" and expr["operator"] == "In"
        assert sorted(expr["values"]) == selector_values(accel, "gfd"), "selector drifted from the identity table"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_root_containers_and_requests_limits_everywhere(rendered, overlay):
    templates = [(f"{o['kind']}/{o['metadata']['name']}", o["spec"]["template"])
                 for o in rendered[overlay] if o["kind"] == "Deployment"]
    templates += pod_templates(_raycluster(rendered[overlay]))
    for where, template in templates:
        pod_ctx = template["spec"].get("securityContext") or {}
        assert pod_ctx.get("runAsNonRoot") is True and pod_ctx.get("runAsUser", 0) != 0, where
        assert (pod_ctx.get("seccompProfile") or {}).get("type") == "RuntimeDefault", where
        for c in containers(template):
            ctx = c.get("securityContext") or {}
            assert ctx.get("allowPrivilegeEscalation") is False, where
            assert ctx.get("capabilities", {}).get("drop") == ["ALL"], where
            assert ctx.get("runAsUser", 1) != 0 and ctx.get("privileged") is not True, where
            res = c.get("resources") or {}
            assert res.get("requests") and res.get("limits"), f"{where}: requests and limits"
            for amount in [*res["requests"].values(), *res["limits"].values()]:
                assert isinstance(amount, str), f"{where}: quantity {amount!r} must be a string"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_are_pinned_never_latest(rendered, overlay):
    text = yaml.safe_dump_all(rendered[overlay])
    images = re.findall(r"image: (\S+)", text)
    platform = platform_from_objects(rendered[overlay], overlay)
    images += list(platform.settings.images.values())
    assert images
    for image in images:
        last = image.rsplit("/", 1)[-1]
        assert "@sha256:" in image or (":" in last and not last.endswith(":latest")), image


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_platform_settings_agree_with_the_raycluster(rendered, overlay):
    platform = platform_from_objects(rendered[overlay], overlay)
    assert platform.namespace == f"trainer-{overlay}"
    images = {c["image"] for _, t in pod_templates(platform.raycluster) for c in containers(t)}
    assert images == {platform.settings.images["torch"]}, "the RayCluster runs the overlay's torch image"
    assert set(platform.settings.images) == {"torch", "tensorflow", "mxnet"}
    tags = {image.rsplit(":", 1)[1] for image in platform.settings.images.values()}
    assert len(tags) == 1, "all runtime images of an environment come from one release"
    for image in platform.settings.images.values():
        assert f"/trainer-{overlay}/" in image, "each environment pulls from its own Harbor project"


def test_runtime_image_names_and_tags_follow_the_dockerfiles(rendered):
    from trainer.home import repo_root

    platform = platform_from_objects(rendered["prod"], "prod")
    for runtime, image in platform.settings.images.items():
        dockerfile = (repo_root() / "images" / runtime / "Dockerfile").read_text()
        title = re.search(r'org\.opencontainers\.image\.title="([^"]+)"', dockerfile).group(1)
        version = re.search(r"ARG TRAINER_VERSION=(\S+)", dockerfile).group(1)
        assert image.rsplit("/", 1)[-1] == f"{title}:{version}"


def test_submitter_rbac_is_least_privilege(rendered):
    (role,) = [o for o in rendered["prod"] if o["kind"] == "Role" and o["metadata"]["name"] == "trainer-submitter"]
    rules = {(g, r): set(rule["verbs"]) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    assert rules[("ray.io", "rayjobs")] == {"create", "get", "list", "watch", "delete"}
    assert ("", "secrets") not in rules
    assert not any(v & {"update", "patch", "*"} for v in rules.values())
    assert "*" not in str(role["rules"])


def test_prod_mlflow_is_postgres_backed_with_artifacts_in_object_storage(rendered):
    def mlflow(objects, kind):   # the GCS's Redis has a Deployment and a claim of its own
        return [o for o in _of(objects, kind) if o["metadata"]["name"].startswith("mlflow")]
    (deploy,) = mlflow(rendered["prod"], "Deployment")
    env = {e["name"]: e for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-db"
    assert env["MLFLOW_ARTIFACTS_DESTINATION"]["value"].startswith("s3://")
    assert not mlflow(rendered["prod"], "PersistentVolumeClaim")
    (dev,) = mlflow(rendered["dev"], "Deployment")
    assert mlflow(rendered["dev"], "PersistentVolumeClaim") and "sqlite" in str(dev)


def test_prometheus_scrapes_ray_and_dcgm(rendered):
    (cm,) = [o for o in rendered["prod"] if o["metadata"]["name"] == "trainer-prometheus-scrape"]
    jobs = {job["job_name"]: job for job in yaml.safe_load(cm["data"]["scrape-configs.yaml"])}
    assert {"trainer-ray", "dcgm-exporter", "trainer-mlflow"} <= set(jobs)
    for job in jobs.values():
        for rule in job["relabel_configs"]:
            re.compile(rule.get("regex", ".*"))
    rc = _raycluster(rendered["prod"])
    for _, template in pod_templates(rc):
        assert template["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
        assert any(p["name"] == "metrics" for p in template["spec"]["containers"][0]["ports"])


def test_credentials_come_from_secrets_by_name_never_inline(rendered):
    secretish = re.compile(r"PASS(WORD)?|SECRET|TOKEN|ACCESS_?KEY|CREDENTIAL", re.I)
    for overlay, objects in rendered.items():
        assert not _of(objects, "Secret"), "Secrets are created outside git"

        def walk(node, path=""):
            if isinstance(node, dict):
                if "name" in node and "value" in node and secretish.search(str(node["name"])):
                    raise AssertionError(f"{overlay}{path}: {node['name']} is inline; use valueFrom/envFrom")
                if "redisPassword" in node:
                    assert "valueFrom" in node["redisPassword"], f"{overlay}{path}: inline Redis password"
                for k, v in node.items():
                    walk(v, f"{path}.{k}")
            elif isinstance(node, list):
                for i, v in enumerate(node):
                    walk(v, f"{path}[{i}]")
        for obj in objects:
            walk(obj, f" {obj['kind']}/{obj['metadata']['name']}")
    text = yaml.safe_dump_all(rendered["prod"])
    assert "harbor-pull" in text and "mlflow-credentials" in text
