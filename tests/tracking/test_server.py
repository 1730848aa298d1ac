"""`trainer mlflow serve`: a real MLflow server over the embedded store of a fresh $TRAINER_HOME,
found (not started twice) while it runs, written through, stopped with its whole process group."""
import os
import subprocess
import sys

import mlflow
import psutil
import pytest

from trainer.errors import TrackingError
from trainer.tracking import server

pytestmark = pytest.mark.integration


def test_serve_find_write_through_and_stop(tmp_path):
    home = tmp_path / "home"
    state, started = server.serve(0, home=home)
    try:
        assert started and state.url.startswith("http://127.0.0.1:")
        group = [state.pid, *(c.pid for c in psutil.Process(state.pid).children(recursive=True))]
        assert server.find(home) == state
        again, started_again = server.serve(0, home=home)     # a second serve finds the first
        assert (again, started_again) == (state, False)
        assert server.status(home)["running"] and server.status(home)["url"] == state.url

        # What goes through the server lands in the embedded store under this home.
        client = mlflow.MlflowClient(tracking_uri=state.url)
        exp = client.create_experiment("served")
        run = client.create_run(exp)
        client.log_metric(run.info.run_id, "loss", 0.5, step=1)
        client.log_text(run.info.run_id, "hello", "note.txt")
        direct = mlflow.MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
        assert direct.get_run(run.info.run_id).data.metrics == {"loss": 0.5}
        assert list((home / "mlartifacts").rglob("note.txt"))

        # Its port is taken now: a second home asking for that port gets one clear line.
        with pytest.raises(TrackingError, match=f"port 127.0.0.1:{state.port} is taken by trainer mlflow serve \\(pid {state.pid}\\)"):
            server.serve(state.port, home=tmp_path / "other", timeout=5)
    finally:
        stopped = server.stop(home)
    assert stopped == state
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in group)
    assert server.find(home) is None and not server.status(home)["running"]
    assert server.stop(home) is None
    assert server._port_free(state.port)  # nothing listens there any more


def test_cli_reports_no_server_and_bad_port(tmp_path):
    env = {**os.environ, "TRAINER_HOME": str(tmp_path / "home")}
    cli = [sys.executable, "-m", "trainer.cli", "mlflow"]
    out = subprocess.run([*cli, "status"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "not running" in out.stdout
    out = subprocess.run([*cli, "serve", "--stop"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "no MLflow server was running" in out.stdout
    out = subprocess.run([*cli, "serve", "--port", "70000"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "--port" in out.stderr
