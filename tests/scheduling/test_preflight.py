"""Preflight decisions, without a cluster: placement against an inventory, code size, data digest."""
import os

import pytest

from trainer.cluster.inventory import Node
from trainer.cluster.local import NodeSpec
from trainer.errors import PreflightError, UsageError
from trainer.data import fingerprint
from trainer.scheduling.preflight import MAX_UPLOAD_BYTES, check_placement, check_spec, upload_files
from trainer.spec import load_spec
from trainer.state import JobState

INVENTORY = [
    Node("h", True, "ALIVE", None, 0, 0),
    Node("a", False, "ALIVE", "A100", 8, 2),
    Node("b", False, "ALIVE", "A100", 8, 2),
    Node("t", False, "ALIVE", "T4", 4, 1),
]


def spec(**fields):
    raw = {"name": "j", "framework": "torch", "entrypoint": "train.py:train", **fields}
    return load_spec(raw)[0]


@pytest.mark.parametrize("fields", [
    {"workers": 4, "resources": {"accelerator": "A100", "gpus_per_worker": 1, "cpus_per_worker": 2}},
    {"workers": 16, "resources": {"accelerator": "A100", "cpus_per_worker": 1}},
    {"workers": 1, "resources": {"accelerator": "T4", "gpus_per_worker": 1, "cpus_per_worker": 4}},
    {"workers": 2, "resources": {"accelerator": "A100", "gpus_per_worker": 0.5, "cpus_per_worker": 8}},
])
def test_placeable(fields):
    check_placement(spec(**fields), INVENTORY)


@pytest.mark.parametrize("fields,why", [
    ({"resources": {"accelerator": "H100"}}, "no node is labelled ray.io/accelerator-type=H100"),
    ({"workers": 5, "resources": {"accelerator": "A100", "gpus_per_worker": 1}}, "fit only 4 worker(s)"),
    ({"workers": 1, "resources": {"accelerator": "T4", "cpus_per_worker": 5}}, "fit only 0 worker(s)"),
    ({"workers": 2, "resources": {"accelerator": "T4", "gpus_per_worker": 1}}, "fit only 1 worker(s)"),
    ({"resources": {"accelerator": "cpu"}}, "no node is labelled ray.io/accelerator-type=cpu"),
])
def test_unplaceable_names_the_reason_and_the_inventory(fields, why):
    with pytest.raises(PreflightError) as e:
        check_placement(spec(**fields), INVENTORY)
    assert why in str(e.value)
    assert "head(cpus=0, gpus=0), A100(cpus=8, gpus=2), A100(cpus=8, gpus=2), T4(cpus=4, gpus=1)" in str(e.value)
    assert e.value.exit_code == 3


def test_code_over_ray_limit_names_the_biggest_files(tmp_path):
    (tmp_path / "train.py").write_text("def train(ctx):\n    pass\n")
    with open(tmp_path / "weights.bin", "wb") as fh:   # sparse: costs no disk
        fh.truncate(MAX_UPLOAD_BYTES + 1)
    with pytest.raises(PreflightError, match=r"over Ray's 100 MiB limit; biggest files: weights.bin \(100.0 MiB\)"):
        check_spec(spec(), tmp_path)


def test_upload_excludes_venvs_git_and_mlflow_data(tmp_path):
    for rel in (".git/x", ".venv/lib/big", "mlruns/0/m", "pkg/__pycache__/a.pyc", "mlflow.db", "keep/me.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    assert [p for p, _ in upload_files(tmp_path)] == ["keep/me.py"]


def test_fingerprint_follows_content_not_location(tmp_path):
    for folder in ("a", "b"):
        os.makedirs(tmp_path / folder / "sub")
        (tmp_path / folder / "x.csv").write_text("1,2\n")
        (tmp_path / folder / "sub" / "y.csv").write_text("3,4\n")
    fa, fb = fingerprint("a", tmp_path), fingerprint("b", tmp_path)
    assert fa.digest == fb.digest and fa.files == 2 and fa.bytes == 8
    (tmp_path / "b" / "sub" / "y.csv").write_text("3,5\n")
    assert fingerprint("b", tmp_path).digest != fa.digest
    (tmp_path / "a" / "sub" / "y.csv").rename(tmp_path / "a" / "sub" / "z.csv")
    assert fingerprint("a", tmp_path).digest != fa.digest


def test_node_spec_parsing():
    assert NodeSpec.parse("A100:4:1") == NodeSpec("A100", 4, 1)
    assert str(NodeSpec.parse("cpu:2")) == "cpu:2"
    for bad in ("A100", "A100:0", ":2", "A 100:1", "cpu:two"):
        with pytest.raises(UsageError):
            NodeSpec.parse(bad)


def test_job_states_map_rays_and_mark_terminal():
    assert JobState.from_ray("STOPPED") is JobState.CANCELLED
    assert [s.value for s in JobState if s.is_terminal] == ["SUCCEEDED", "FAILED", "CANCELLED"]
    assert JobState.CANCELLED.mlflow_status == "KILLED"


@pytest.mark.parametrize("name,label", [
    ("NVIDIA H100 80GB HBM3", "H100"), ("NVIDIA A100-SXM4-40GB", "A100"), ("Tesla T4", "T4"),
    ("NVIDIA A10G", "A10G"), ("NVIDIA L40S", "L40S"), ("NVIDIA H200", "H200"), ("NVIDIA RTX 6000 Ada Generation", "RTX"),
])
def test_gpu_names_map_to_accelerator_labels(name, label):
    from trainer.cluster.gpus import accelerator_label

    assert accelerator_label(name) == label


def test_no_nvidia_driver_means_no_gpus():
    from trainer.cluster.gpus import local_gpus

    assert local_gpus() == []   # CI machines have no driver: an empty list, not an error
