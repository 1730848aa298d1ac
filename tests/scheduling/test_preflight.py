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


# ---------------------------------------------------------------- a KubeRay target scaled to zero

def _kuberay():
    """The base RayCluster with 16 A100 pods allowed: groups cpu (max 4, 4 CPUs), t4 (max 4,
    1 GPU), a100 (max 16, 1 GPU), h100 (max 2, 8 GPUs), all scaled to zero."""
    import yaml

    from trainer.home import repo_root

    docs = yaml.safe_load_all((repo_root() / "k8s" / "base" / "raycluster.yaml").read_text())
    (rc,) = [d for d in docs if d and d.get("kind") == "RayCluster"]
    rc["spec"]["workerGroupSpecs"][2]["maxReplicas"] = 16
    return rc


HEAD_ONLY = [Node("h", True, "ALIVE", None, 0, 0)]


def test_a_kuberay_cluster_scaled_to_zero_has_capacity_in_its_groups():
    from trainer.cluster.kuberay import capacity_nodes

    with pytest.raises(PreflightError, match="no node is labelled ray.io/accelerator-type=A100"):
        check_placement(spec(workers=4, resources={"accelerator": "A100", "gpus_per_worker": 1}), HEAD_ONLY)
    inventory = HEAD_ONLY + capacity_nodes(_kuberay(), HEAD_ONLY)
    check_placement(spec(workers=16, resources={"accelerator": "A100", "gpus_per_worker": 1, "cpus_per_worker": 8}),
                    inventory)
    check_placement(spec(workers=16, resources={"accelerator": "H100", "gpus_per_worker": 1}), inventory)
    with pytest.raises(PreflightError) as e:
        check_placement(spec(workers=17, resources={"accelerator": "A100", "gpus_per_worker": 1}), inventory)
    assert "fit only 16 worker(s)" in str(e.value) and "A100(cpus=8, gpus=1, can scale up) x16" in str(e.value)


def test_alive_pods_of_a_group_are_not_counted_twice():
    from trainer.cluster.kuberay import capacity_nodes

    alive = HEAD_ONLY + [Node(f"a{i}", False, "ALIVE", "A100", 8, 1) for i in range(3)]
    scalable = [n for n in capacity_nodes(_kuberay(), alive) if n.accelerator == "A100"]
    assert len(scalable) == 13


def test_cluster_spec_file_and_quantities(tmp_path):
    import yaml

    from trainer.cluster.kuberay import load_raycluster, quantity, worker_groups

    path = tmp_path / "rc.yaml"
    path.write_text(yaml.safe_dump_all([{"kind": "Service"}, _kuberay()]))
    groups = {g.name: g for g in worker_groups(load_raycluster(path))}
    assert (groups["h100"].cpus, groups["h100"].gpus, groups["h100"].accelerator) == (88, 8, "H100")
    assert quantity("500m") == 0.5 and quantity("8Gi") == 8 * 2**30
    with pytest.raises(UsageError, match="no RayCluster in it"):
        (tmp_path / "svc.yaml").write_text("kind: Service\n")
        load_raycluster(tmp_path / "svc.yaml")


# ---------------------------------------------------------------- the entrypoint and the data, before anything starts

GOOD_SIGNATURES = """\
import functools

def plain(ctx):
    pass

def with_defaults(ctx, lr=0.1, *, seed=0):
    pass

def all_defaults(ctx=None):
    pass

def star(*args, **kwargs):
    pass

def positional_only(ctx, /):
    pass

def wrap(fn):
    @functools.wraps(fn)
    def inner(*a):
        return fn()
    return inner

@wrap
def decorated():
    pass
"""


@pytest.mark.parametrize("function", ["plain", "with_defaults", "all_defaults", "star", "positional_only",
                                      "decorated"])
def test_functions_the_driver_can_call_with_ctx_pass(tmp_path, function):
    (tmp_path / "train.py").write_text(GOOD_SIGNATURES)
    check_spec(spec(entrypoint=f"train.py:{function}"), tmp_path)


def test_the_last_definition_of_a_function_is_the_one_checked(tmp_path):
    from trainer.errors import SpecError

    (tmp_path / "train.py").write_text("def train(ctx):\n    pass\n\ndef train():\n    pass\n")
    with pytest.raises(SpecError, match=r"train.py:train \(line 4\) takes no argument"):
        check_spec(spec(), tmp_path)


def test_an_entrypoint_symlink_inside_the_project_is_fine(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "real.py").write_text("def train(ctx):\n    pass\n")
    (tmp_path / "train.py").symlink_to("src/real.py")
    check_spec(spec(), tmp_path)


def test_data_may_live_outside_the_project_and_hold_symlinks_to_files(tmp_path):
    project, data = tmp_path / "p", tmp_path / "data"
    project.mkdir()
    data.mkdir()
    (project / "train.py").write_text("def train(ctx):\n    pass\n")
    (data / "a.csv").write_text("1\n")
    (data / "b.csv").symlink_to("a.csv")
    checked = check_spec(spec(data={"path": str(data)}), project)
    assert checked.fingerprint.files == 2


def test_a_fifo_in_the_data_folder_is_refused_by_name(tmp_path):
    from trainer.errors import SpecError

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.csv").write_text("1\n")
    os.mkfifo(tmp_path / "d" / "pipe")
    with pytest.raises(SpecError, match=r"data.path: .*d/pipe is a FIFO, in the data folder"):
        fingerprint("d", tmp_path)


def test_convert_names_are_checked_without_importing_a_framework(tmp_path):
    """Preflight reads the converters' name tables only: no numpy, onnx or torch on that path
    when no edge CPU is named (a fresh interpreter proves it)."""
    import subprocess
    import sys

    from trainer.home import repo_root

    (tmp_path / "train.py").write_text("def train(ctx):\n    pass\n")
    code = ("import sys; from trainer.spec import load_spec; from trainer.scheduling.preflight import check_spec\n"
            "from trainer.errors import SpecError\n"
            "s, _ = load_spec({'name': 'j', 'framework': 'torch', 'entrypoint': 'train.py:train',"
            " 'convert': {'targets': ['onnx', 'bogus']}})\n"
            "try:\n    check_spec(s, __import__('pathlib').Path(sys.argv[1]))\nexcept SpecError as e:\n    print(e)\n"
            "print(sorted(m for m in ('numpy', 'onnx', 'onnxruntime', 'torch') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120,
                         cwd=repo_root(), check=True).stdout.splitlines()
    assert out[0].startswith("convert.targets: unknown target 'bogus'; valid: onnx, onnx-int8")
    assert out[1] == "[]"
