"""Issue 27: `registry serve` and `mlflow serve` no longer share a default port (both were 5000:
the second exited 11), and a taken port names what holds it."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from trainer.cli import app
from trainer.registry.serve import DEFAULT_PORT as REGISTRY_PORT
from trainer.tracking.server import DEFAULT_PORT as MLFLOW_PORT

TRAINER = str(Path(sys.executable).parent / "trainer")


def test_the_registry_and_mlflow_default_to_different_ports():
    assert REGISTRY_PORT != MLFLOW_PORT == 5000       # 5000: MLflow's own default, and `trainer ui`'s
    helps = {name: CliRunner().invoke(app, [name, "serve", "--help"], env={"COLUMNS": "200"}).output
             for name in ("registry", "mlflow")}
    assert f"[default: {REGISTRY_PORT}]" in helps["registry"] and "[default: 5000]" in helps["mlflow"]


@pytest.mark.integration
def test_a_taken_port_names_trainers_server_or_another_program(oci_registry):
    from trainer.registry import serve

    port = int(oci_registry["address"].rsplit(":", 1)[1])
    # The session's registry as it runs now: tests/promotion stops and restarts it on the same port.
    pid = serve.state()["pid"]
    done = subprocess.run([TRAINER, "mlflow", "serve", "--port", str(port)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 9, done.stderr
    assert f"port 127.0.0.1:{port} is taken by trainer registry serve (pid {pid})" in done.stderr

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        other = s.getsockname()[1]
        done = subprocess.run([TRAINER, "mlflow", "serve", "--port", str(other)], capture_output=True, text=True,
                              timeout=120, env={k: v for k, v in os.environ.items() if k != "TRAINER_OWNER"})
    assert done.returncode == 9, done.stderr
    assert f"is taken by another program ({Path(sys.executable).name}" in done.stderr or \
        f"is taken by another program (python" in done.stderr, done.stderr
    assert f"pid {os.getpid()})" in done.stderr
