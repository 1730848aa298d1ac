"""`trainer cluster join`: a host joins an existing head as a worker node labelled by its GPUs
through the identity table (no driver: `cpu`), with the GPU count set."""
import json

import pytest
from typer.testing import CliRunner

from trainer.cli import app
from trainer.cluster.gpus import Gpu
from trainer.cluster.local import join_args

H100 = Gpu(0, "NVIDIA H100 80GB HBM3", 79.6, (9, 0))


def _arg(args, name):
    return next(a.split("=", 1)[1] for a in args if a.startswith(f"--{name}="))


def test_a_gpu_host_joins_with_its_accelerator_label_and_gpu_count():
    args = join_args("head:6379", [H100, Gpu(1, H100.name, 79.6, (9, 0))], 32, 4096)
    assert _arg(args, "address") == "head:6379" and _arg(args, "num-cpus") == "32" and _arg(args, "num-gpus") == "2"
    assert _arg(args, "labels") == "ray.io/accelerator-type=H100,nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3"
    assert json.loads(_arg(args, "resources")) == {"accelerator_type:H100": 1}
    assert _arg(args, "object-store-memory") == str(4096 * 2**20)


def test_a_host_without_a_driver_joins_as_cpu():
    args = join_args("head:6379", [], 8)
    assert _arg(args, "labels") == "ray.io/accelerator-type=cpu" and _arg(args, "num-gpus") == "0"


def test_join_refuses_a_dashboard_url():
    result = CliRunner().invoke(app, ["cluster", "join", "--address", "http://head:8265"])
    assert result.exit_code == 2 and "expected the head's GCS address HOST:PORT" in result.output


def test_node_labels_command_without_a_driver():
    result = CliRunner().invoke(app, ["node", "labels"])
    assert result.exit_code == 0 and result.stdout.strip() == "ray.io/accelerator-type=cpu"
    assert "no GPUs" in result.stderr
    result = CliRunner().invoke(app, ["node", "labels", "--format", "json"])
    info = json.loads(result.stdout)
    assert info["gpus"] == [] and info["labels"]["ray"] == {"ray.io/accelerator-type": "cpu"}
    result = CliRunner().invoke(app, ["node", "labels", "--format", "yaml"])
    assert result.exit_code == 2 and "--format must be one of ray, k8s, gfd, json" in result.output


@pytest.mark.parametrize("mode", [0o644, 0o640])
def test_join_refuses_a_token_file_others_can_read(tmp_path, monkeypatch, mode):
    token = tmp_path / "token"
    token.write_text("secret")
    token.chmod(mode)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("TRAINER_HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(app, ["cluster", "join", "--address", "127.0.0.1:1"])
    assert result.exit_code == 4, result.output
    assert "readable by others" in result.output and f"chmod 600 {token}" in result.output
    assert not (tmp_path / "home" / "node").exists()        # nothing started, nothing created
