"""Runtime images are real: built here from images/torch/Dockerfile on the local Debian base, the
lock checked inside them, jobs run with their workers inside them.

The quick tests need no container tool. The `slow` ones build the torch cpu image (the base and
the lock's layer are cached in the machine's container storage: a warm build takes ~20 s, a cold
one several minutes) and remove every container and image they make besides those caches.
"""
from __future__ import annotations

import json
import resource
import shutil
import subprocess
import uuid

import pytest

from trainer.errors import ClusterError, ImageError, PreflightError, UsageError
from trainer.images import base, engine
from trainer.runtimes import lock_digest, lock_path, parse_lock

HAVE_TOOLS = all(shutil.which(t) for t in ("buildah", "podman", "mmdebstrap"))
needs_tools = pytest.mark.skipif(not HAVE_TOOLS, reason="buildah/podman/mmdebstrap missing: scripts/system-deps.sh")


# ---------------------------------------------------------------- quick

def test_host_mirror_reads_one_line_and_deb822_sources(tmp_path):
    one = tmp_path / "sources.list"
    one.write_text("# a comment\ndeb [arch=amd64] http://mirror.internal:8080/debian bookworm main\n")
    assert base.host_mirror((one,)) == "http://mirror.internal:8080/debian"
    d = tmp_path / "sources.list.d"
    d.mkdir()
    (d / "debian.sources").write_text("Types: deb\nURIs: http://deb.example/debian-security\nSuites: x\n\n"
                                      "Types: deb\nURIs: https://deb.example/debian\nSuites: bookworm\n")
    assert base.host_mirror((tmp_path / "absent.list", d)) == "https://deb.example/debian"
    with pytest.raises(ImageError, match="no Debian mirror"):
        base.host_mirror((tmp_path / "absent.list",))


def test_the_base_names_no_mirror_host_and_changes_with_its_recipe(monkeypatch):
    assert all("deb.debian.org" in ln for ln in base.PUBLIC_SOURCES.splitlines())
    before = base.base_ref()
    monkeypatch.setattr(base, "PACKAGES", base.PACKAGES + ("curl",))
    assert base.base_ref() != before and base.base_ref().startswith(base.BASE_REPO + ":bookworm-")


def test_podman_runs_within_the_hosts_hard_limits():
    flags = engine.run_flags()
    assert flags[:3] == ["--runtime", "runc", "--network=host"]
    for kind, name in ((resource.RLIMIT_NOFILE, "nofile"), (resource.RLIMIT_NPROC, "nproc")):
        hard = resource.getrlimit(kind)[1]
        value = next(f for f in flags if f.startswith(f"{name}=")).split("=")[1]
        soft, limit = map(int, value.split(":"))
        assert soft == limit and (hard == resource.RLIM_INFINITY or limit <= hard)


def test_a_missing_tool_names_the_install_command(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ImageError, match="buildah is not installed; run scripts/system-deps.sh"):
        engine.tool("buildah", "version")


def test_build_refuses_a_variant_the_lock_does_not_declare():
    from trainer.images.build import build

    with pytest.raises(UsageError, match="variant 'rocm'.*declares cpu, gpu"):
        build("torch", variant="rocm")


def test_the_image_label_is_a_valid_ray_label_value():
    import re

    from trainer.cluster.containers import image_label_value

    value = image_label_value(f"localhost/trainer/runtime-torch:cpu-{'a' * 12}")
    assert value == f"trainer.runtime-torch.cpu-{'a' * 12}"
    assert re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?", image_label_value("x/" + "y" * 90 + ":z"))


# ---------------------------------------------------------------- the image itself

def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([*engine.PODMAN, *args], capture_output=True, text=True, timeout=300, check=check)


@pytest.fixture(scope="module")
def torch_image() -> dict:
    """The torch cpu image, built (or found up to date: buildah's layer cache) through the API."""
    from trainer import api

    return api.image_build("torch", "cpu")


@needs_tools
@pytest.mark.slow
def test_build_labels_the_image_and_ls_lists_it(torch_image):
    from typer.testing import CliRunner

    from trainer.cli import app

    digest = lock_digest("torch")
    assert torch_image["image"] == f"localhost/trainer/runtime-torch:cpu-{digest[:12]}"
    labels = json.loads(podman("image", "inspect", "--format", "{{json .Labels}}", torch_image["image"]).stdout)
    assert labels["io.trainer.lock.digest"] == digest
    assert labels["io.trainer.variant"] == "cpu"
    assert labels["io.trainer.base"] == base.base_ref() == torch_image["base"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert labels["io.trainer.git.commit"].removesuffix("-dirty") == head
    result = CliRunner().invoke(app, ["image", "ls", "torch", "--output", "json"])
    assert result.exit_code == 0, result.output
    rows = {r["id"]: r for r in json.loads(result.output)}
    row = rows[torch_image["image_id"]]
    assert row["lock_digest"] == digest and row["variant"] == "cpu" and row["size"] > 100 * 2**20
    assert row["digest"].startswith("sha256:") and torch_image["image"] in row["tags"]


@needs_tools
@pytest.mark.slow
def test_every_pin_of_the_lock_matches_inside_the_image(torch_image):
    from trainer.images.inventory import check_lock

    found = check_lock(torch_image["image"])
    assert found["mismatches"] == []
    assert found["pins"] == len(parse_lock(lock_path("torch"), "cpu")) > 100


@needs_tools
@pytest.mark.slow
def test_the_lock_check_finds_a_package_that_differs(torch_image):
    """A copy of the image with one pinned package removed fails the check, naming it."""
    from trainer.images.inventory import check_lock

    ref = f"localhost/trainer/test-tampered:{uuid.uuid4().hex[:8]}"
    ctr = subprocess.run(["buildah", "from", torch_image["image"]], capture_output=True, text=True,
                         check=True).stdout.strip()
    try:
        subprocess.run(["buildah", "run", "--isolation=chroot", "--user=0:0", ctr, "--", "python", "-m", "pip",
                        "uninstall", "-q", "-y", "zipp"], check=True, capture_output=True, timeout=300)
        subprocess.run(["buildah", "commit", "--quiet", "--rm", ctr, ref], check=True, capture_output=True,
                       timeout=300)
        found = check_lock(ref)
        assert found["mismatches"] == [f"zipp=={parse_lock(lock_path('torch'))['zipp']} (image has none)"]
    finally:
        subprocess.run(["buildah", "rm", ctr], capture_output=True)
        podman("rmi", "--force", ref, check=False)


@needs_tools
@pytest.mark.slow
def test_the_build_time_mounts_left_nothing_in_the_image(torch_image):
    """The host CA bundle and the pip cache are mounted while building, never baked in; the base's
    apt sources name the public archive, not the mirror it was made from."""
    out = podman("run", "--rm", *engine.run_flags(), "--entrypoint", "sh", torch_image["image"], "-c",
                 "test ! -s /run/host-ca.crt && echo ca-empty; ls -A /var/cache/trainer-build-pip 2>/dev/null | wc -l;"
                 " cat /etc/apt/sources.list; ls /etc/apt/sources.list.d | wc -l").stdout.splitlines()
    assert out[0] == "ca-empty" and out[1] == "0"
    assert out[2:-1] == base.PUBLIC_SOURCES.splitlines() and out[-1] == "0"


# ---------------------------------------------------------------- a job inside it

@pytest.fixture
def image_home(tmp_path, monkeypatch):
    """A home of its own: the session cluster keeps running on the host beside this one."""
    import trainer

    home = tmp_path / "home"
    monkeypatch.setenv("TRAINER_HOME", str(home))
    monkeypatch.delenv("TRAINER_ADDRESS", raising=False)
    yield home
    trainer.cluster_down()


@needs_tools
@pytest.mark.slow
def test_the_digits_job_runs_with_its_workers_inside_the_image(torch_image, image_home):
    import trainer
    from trainer.cluster import containers
    from trainer.cluster.local import LocalCluster

    state, started = trainer.cluster_up(["cpu:2"], image="torch")
    assert started and state.image == torch_image["image"]
    nodes = trainer.cluster_status()["nodes"]
    workers = [n for n in nodes if not n["is_head"]]
    assert [n["labels"].get(containers.RAY_IMAGE_LABEL) for n in workers] == \
        [containers.image_label_value(torch_image["image"])]
    assert [n["labels"].get(containers.RAY_IMAGE_LABEL) for n in nodes if n["is_head"]] == [None]
    assert [c["state"] for c in containers.containers(state.owner_token)] == ["running"]

    job = trainer.submit("examples/digits/torch.yaml", set=["config.epochs=1", "convert=null", "register=null"])
    assert job.wait(timeout=600).value == "SUCCEEDED", job.logs()[-3000:]
    # The driver ran in the container too (as on KubeRay, where the head pod runs the image: Ray
    # Train's controller starts beside it and needs the framework), and its log still reaches the
    # client, through that node's agent.
    from trainer.scheduling.ray_jobs import RayJobs

    assert RayJobs(job.address).info(job.id).driver_node_id in {n["node_id"] for n in workers}
    assert f"job {job.id}: 2 torch worker(s)" in job.logs()
    # A TensorFlow job cannot run in the torch image: refused before a run or a Ray job exists.
    before = {j["job_id"] for j in trainer.list_jobs()}
    with pytest.raises(PreflightError, match="needs the tensorflow runtime.*runtime-torch"):
        trainer.submit("examples/digits/tensorflow.yaml", set=["convert=null"])
    assert {j["job_id"] for j in trainer.list_jobs()} == before
    # Its 2 training workers (1 CPU each) could only run in the container: the head has 0 CPUs.
    assert [n["cpus"] for n in nodes if n["is_head"]] == [0] and [n["cpus"] for n in workers] == [2]
    assert trainer.cluster_down() > 0
    assert containers.containers(state.owner_token) == []
    assert LocalCluster().state() is None


@needs_tools
@pytest.mark.slow
def test_cluster_up_refuses_an_image_without_the_heads_ray(image_home):
    """The base image has Python but no Ray: refused in one line, nothing started."""
    import trainer
    from trainer.cluster.local import LocalCluster

    ref = base.ensure_base().image
    with pytest.raises(ClusterError, match="asking .* for its Ray version failed") as err:
        trainer.cluster_up(["cpu:1"], image=ref)
    assert "\n" not in str(err.value)
    assert LocalCluster()._recorded() is None
    assert podman("ps", "--all", "--quiet", "--filter", f"ancestor={ref}").stdout.strip() == ""


# ---------------------------------------------------------------- through the registry

@needs_tools
@pytest.mark.slow
def test_push_puts_the_image_in_dev_under_its_lock_digest(torch_image, oci_registry):
    """Read back with trainer's own OCI client (not buildah's word): the tag names the lock, the
    digest is the one reported, and the image's config carries the lock's digest label."""
    from trainer import api
    from trainer.registry.client import Registry

    pushed = api.image_push("torch")
    digest = lock_digest("torch")
    assert pushed["ref"] == f"{oci_registry['address']}/dev/runtime-torch:{digest[:12]}"
    reg = Registry(oci_registry["address"])
    manifest = reg.get_manifest("dev/runtime-torch", digest[:12])
    assert manifest.digest == pushed["digest"] and pushed["pinned"].endswith(f"@{manifest.digest}")
    config = json.loads(reg.get_blob("dev/runtime-torch", manifest.json["config"]["digest"]))
    assert config["config"]["Labels"]["io.trainer.lock.digest"] == digest
    assert config["config"]["Labels"]["io.trainer.variant"] == "cpu"
    # Pushed again: the same digest and MLflow version (nothing rebuilt, nothing registered twice).
    again = api.image_push("torch")
    assert (again["digest"], again["version"]) == (pushed["digest"], pushed["version"])
    assert reg.manifest_digest("dev/runtime-torch", f"v{pushed['version']}") == pushed["digest"]

    # Promoted like a model: the same transaction (registry copy by digest + MLflow alias) and
    # the same history; the digest in staging is the one pushed to dev.
    record = api.promote("runtime-torch", "staging")
    assert record["changed"] and record["digest"] == pushed["digest"]
    assert reg.manifest_digest("staging/runtime-torch", f"v{pushed['version']}") == pushed["digest"]
    (entry,) = [h for h in api.promotion_history("runtime-torch") if h["to"] == "staging"]
    assert entry["digest"] == pushed["digest"] and entry["from"] == "dev"
    assert api.promote("runtime-torch", "staging")["changed"] is False
