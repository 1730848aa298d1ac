"""`trainer k8s render`: every example spec becomes a RayJob that validates (KubeRay CRD + unknown
fields, strict core pod templates, the kubernetes client), carries what the job needs, and what can
never schedule is refused before anything is created."""
import copy
import json
import re
from pathlib import Path

import pytest
import yaml

from _k8s_checks import OVERLAYS, REPO, client_round_trip, crd_errors, pod_template_errors, pod_templates
from trainer.errors import PreflightError, SpecError
from trainer.scheduling.platform import platform_from_objects
from trainer.scheduling.rayjob import MAX_NAME, rayjob_name, render_rayjob
from trainer.spec import JobSpec, load_spec

EXAMPLES = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "examples").rglob("*.yaml"))
CODE = "s3://trainer-code/digits-cnn/abc123.zip"


def platform(rendered, overlay, **settings):
    objects = copy.deepcopy(rendered[overlay])
    if settings:
        (cm,) = [o for o in objects if o["metadata"]["name"] == "trainer-platform"]
        data = yaml.safe_load(cm["data"]["platform.yaml"])
        data.update(settings)
        cm["data"]["platform.yaml"] = yaml.safe_dump(data)
    return platform_from_objects(objects, overlay)


def spec(path="examples/digits/torch.yaml", **overrides) -> JobSpec:
    return load_spec(REPO / path, overrides)[0]


def render(rendered, overlay="prod", job=None, **kw):
    kw.setdefault("code_uri", CODE)
    return render_rayjob(job or spec(), platform(rendered, overlay), job_id="digits-cnn-20261130-101500-ab12", **kw)


def test_every_example_spec_is_covered():
    assert {"examples/digits/torch.yaml", "examples/digits/tensorflow.yaml", "examples/digits/mxnet.yaml",
            "examples/synthetic/resnet50.yaml"} <= set(EXAMPLES)


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("example", EXAMPLES)
def test_every_example_renders_a_valid_rayjob_or_is_refused_with_the_reason(rendered, crds, overlay, example):
    job = spec(example)
    try:
        body = render(rendered, overlay, job)
    except PreflightError as e:
        # GPU examples on environments without that group's capacity (dev/staging have no H100).
        assert overlay != "prod" and "maxReplicas 0" in str(e), str(e)
        return
    assert crd_errors(body) == []
    assert client_round_trip(body["metadata"], "V1ObjectMeta") == []
    for where, template in pod_templates(body):
        assert pod_template_errors(template) == [], where
        assert client_round_trip(template, "V1PodTemplateSpec") == [], where
    groups = body["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert len(groups) == 1 and groups[0]["labels"]["ray.io/accelerator-type"] == job.resources.accelerator
    images = {c["image"] for _, t in pod_templates(body) for c in t["spec"]["containers"]}
    assert images == {f"harbor.example.com/trainer-{overlay}/trainer-{job.runtime_name}:0.1.0"}


def test_rayjob_carries_what_the_job_needs(rendered, crds):
    job = spec(timeout_minutes=90)
    body = render(rendered, "prod", job, run_id="0123abcd")
    s = body["spec"]
    assert body["metadata"]["name"] == s["jobId"] == "digits-cnn-20261130-101500-ab12"
    assert body["metadata"]["namespace"] == "trainer-prod"
    assert s["entrypoint"] == "python -m trainer.runners.job"
    assert s["submissionMode"] == "K8sJobMode"
    assert s["backoffLimit"] == job.failure.max_failures == 2
    assert s["activeDeadlineSeconds"] == 90 * 60
    assert s["preRunningDeadlineSeconds"] == 1200
    assert s["shutdownAfterJobFinishes"] is True and s["ttlSecondsAfterFinished"] == 600
    assert "deletionStrategy" not in s   # not both cleanup mechanisms
    env = yaml.safe_load(s["runtimeEnvYAML"])
    assert env["working_dir"] == CODE
    assert env["env_vars"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert env["env_vars"]["TRAINER_RUN_ID"] == "0123abcd" == s["metadata"]["run_id"]
    assert env["env_vars"]["TRAINER_JOB_ID"] == s["jobId"]
    driver = JobSpec.model_validate_json(env["env_vars"]["TRAINER_SPEC"])
    assert driver.checkpoint.storage == "s3://trainer-prod-checkpoints"
    assert driver.tracking.uri == "http://mlflow:5000" and driver.config == job.config
    cluster = s["rayClusterSpec"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert cluster["enableInTreeAutoscaling"] is False
    (group,) = cluster["workerGroupSpecs"]
    assert group["groupName"] == "cpu" and group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 1
    for where, template in pod_templates(body):
        pod = template["spec"]
        assert {"name": "harbor-pull"} in pod["imagePullSecrets"], where
        if where != "submitter":
            ray = pod["containers"][0]
            assert {"secretRef": {"name": "mlflow-credentials", "optional": True}} in ray["envFrom"], where
    submitter = s["submitterPodTemplate"]["spec"]
    assert submitter["restartPolicy"] == "Never" and "command" not in submitter["containers"][0]
    assert submitter["securityContext"]["runAsNonRoot"] is True


def test_gpu_job_gets_its_group_selector_toleration_and_pods(rendered, crds):
    job = spec("examples/synthetic/resnet50.yaml", workers=16)
    body = render(rendered, "prod", job)
    (group,) = body["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert group["groupName"] == "h100" and group["replicas"] == 2       # 8 workers of 1 GPU per 8-GPU pod
    pod = group["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert "NVIDIA-H100-80GB-HBM3" in str(pod["affinity"])
    half = render(rendered, "prod", spec("examples/synthetic/resnet50.yaml", workers=4,
                                         **{"resources.accelerator": "A100", "resources.gpus_per_worker": 0.5}))
    assert half["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] == 2   # two workers share an A100


@pytest.mark.parametrize("overrides,why", [
    ({"resources.accelerator": "V100", "resources.gpus_per_worker": 1},
     "no worker group of overlay prod serves ray.io/accelerator-type=V100; groups: cpu (cpu, max 8), t4 (T4, max 8)"),
    ({"workers": 9, "resources.cpus_per_worker": 4}, "9 worker(s) at 1 per pod need 9 pod(s), more than its maxReplicas 8"),
    ({"resources.accelerator": "A100", "resources.gpus_per_worker": 2},
     "2 GPUs per worker is beyond its pods' nvidia.com/gpu limit of 1"),
    ({"resources.cpus_per_worker": 6}, "6 CPUs per worker is beyond its pods' 4 CPUs"),
])
def test_what_can_never_schedule_is_refused(rendered, overrides, why):
    with pytest.raises(PreflightError) as e:
        render(rendered, "prod", spec(**overrides))
    assert why in str(e.value) and e.value.exit_code == 3


@pytest.mark.parametrize("kw,settings,why", [
    ({"code_uri": "./dist/code.zip"}, {}, "is a local path the cluster cannot read"),
    ({"code_uri": "/home/me/project"}, {}, "is a local path the cluster cannot read"),
    ({"code_uri": None}, {}, "the cluster cannot read this machine's files: pass --code-uri"),
    ({"code_uri": "s3://bucket/project/"}, {}, "Ray fetches a remote working_dir only as a .zip"),
    ({}, {"checkpointStorage": None}, "checkpoints need shared storage"),
    ({}, {"trackingUri": None}, "the job's pods need an MLflow server"),
    ({}, {"images": {"torch": "harbor.example.com/trainer-prod/trainer-torch:latest"}}, "is not pinned"),
    ({}, {"images": {"torch": "harbor.example.com/trainer-prod/trainer-torch"}}, "is not pinned"),
    ({}, {"images": {"tensorflow": "x/trainer-tensorflow:1"}}, "has no image for runtime 'torch'"),
])
def test_unusable_settings_are_refused_with_one_line(rendered, kw, settings, why):
    kw = {"code_uri": CODE, **kw}
    with pytest.raises(SpecError) as e:
        render_rayjob(spec(), platform(rendered, "prod", **settings), job_id="j-1", **kw)
    assert why in str(e.value) and "\n" not in str(e.value)


def test_embedded_tracking_store_is_refused(rendered):
    with pytest.raises(SpecError, match="need an MLflow server"):
        render(rendered, "prod", spec(**{"tracking.uri": "sqlite:///mlflow.db"}))


def test_misspelt_platform_setting_is_an_error(rendered):
    with pytest.raises(SpecError, match="platform.yaml: checkpointStorge: extra inputs are not permitted"):
        platform(rendered, "prod", checkpointStorge="s3://x")


@pytest.mark.parametrize("name,expected", [
    ("digits-cnn", "digits-cnn-20261130-101500-ab12"),
    ("resnet50.synthetic_v2", "resnet50-synthetic-v2-20261130-101500-ab12"),
    ("9lives", "j-9lives-20261130-101500-ab12"),
    ("a" * 63, "a" * (MAX_NAME - 21) + "-20261130-101500-ab12"),
])
def test_rayjob_names_are_dns_labels_kuberay_accepts(name, expected):
    got = rayjob_name(name, "20261130-101500", "ab12")
    assert got == expected and len(got) <= MAX_NAME
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", got)


def test_timeout_is_validated_strictly():
    with pytest.raises(SpecError, match="timeout_minutes: must be >= 1, got 0"):
        spec(timeout_minutes=0)


def test_cli_renders_yaml_and_json(tmp_path):
    from typer.testing import CliRunner

    from trainer.cli import app

    result = CliRunner().invoke(app, ["k8s", "render", str(REPO / "examples/digits/torch.yaml"), "--overlay", "prod",
                                      "--code-uri", CODE, "--name", "digits-1"])
    assert result.exit_code == 0, result.output
    body = yaml.safe_load(result.stdout)
    assert body["kind"] == "RayJob" and body["metadata"]["name"] == "digits-1"
    result = CliRunner().invoke(app, ["k8s", "render", str(REPO / "examples/digits/torch.yaml"), "--overlay", "prod",
                                      "--code-uri", CODE, "-o", "json"])
    assert json.loads(result.stdout)["metadata"]["name"].startswith("digits-cnn-")
    result = CliRunner().invoke(app, ["k8s", "render", str(REPO / "examples/digits/torch.yaml"), "--code-uri",
                                      str(Path.cwd())])
    assert result.exit_code == 2 and "local path the cluster cannot read" in result.output


@pytest.mark.parametrize("kw,flag", [
    ({"job_id": "digits\nkind: Secret"}, "--name"),
    ({"job_id": "d" * 300}, "--name"),
    ({"job_id": "Digits-1"}, "--name"),
    ({"job_id": "d" * (MAX_NAME + 1)}, "--name"),
    ({"namespace": "ml\nteam"}, "--namespace"),
    ({"namespace": "n" * 300}, "--namespace"),
    ({"namespace": "-ml"}, "--namespace"),
])
def test_names_kubernetes_would_refuse_are_refused_before_rendering(rendered, kw, flag):
    kw = {"job_id": "digits-1", "code_uri": CODE, **kw}
    with pytest.raises(SpecError) as e:
        render_rayjob(spec(), platform(rendered, "prod"), **kw)
    assert str(e.value).startswith(flag) and "\n" not in str(e.value) and len(str(e.value)) < 400


def test_a_code_uri_with_credentials_is_never_written_into_the_rayjob(rendered):
    with pytest.raises(SpecError) as e:
        render(rendered, code_uri="https://alice:s3cret@code.example.com/project.zip")
    assert "carries credentials" in str(e.value) and "s3cret" not in str(e.value) and "alice" not in str(e.value)
    with pytest.raises(SpecError, match="carries credentials"):
        render(rendered, code_uri="https://token@code.example.com/project.zip")
    with pytest.raises(SpecError, match="no spaces or control characters"):
        render(rendered, code_uri="https://code.example.com/pro\nject.zip")
    body = render(rendered, code_uri="https://code.example.com/project.zip?X-Amz-Signature=abc")   # presigned: fine
    assert "code.example.com" in body["spec"]["runtimeEnvYAML"]


def test_cli_refuses_a_newline_in_the_name_in_one_line():
    from typer.testing import CliRunner

    from trainer.cli import app

    result = CliRunner().invoke(app, ["k8s", "render", str(REPO / "examples/digits/torch.yaml"), "--overlay", "prod",
                                      "--code-uri", CODE, "--name", "digits\nkind: Secret"])
    assert result.exit_code == 2 and "kind: Secret\n" not in result.output and "--name" in result.output
