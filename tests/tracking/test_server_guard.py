"""Who can reach `trainer mlflow serve`, and which process `--stop` may end.

- `--auth` runs MLflow's own basic-auth app: a client without credentials cannot set a tag, the
  admin (password generated once, 0600, never printed) can.
- server.json decides which process dies: a copy from another home, a link, a pid that is not
  a number, a file others may write are refused or ignored, and nothing is signalled."""
import json
import os
import shutil
import subprocess
import sys

import mlflow
import psutil
import pytest
from mlflow.exceptions import MlflowException

from trainer.errors import TrackingError
from trainer.tracking import server


@pytest.mark.integration
def test_auth_refuses_a_client_without_credentials(tmp_path, monkeypatch):
    home = tmp_path / "home"
    notes: list[str] = []
    state, started = server.serve(0, home=home, auth=True, progress=notes.append)
    try:
        assert started and state.auth
        password = server.password_file(home)
        assert password.stat().st_mode & 0o777 == 0o600
        secret = password.read_text().strip()
        assert len(secret) >= 24
        assert not any(secret in n for n in notes) and secret not in open(state.log).read()
        assert any("basic auth on" in n for n in notes)

        monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
        monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
        direct = mlflow.MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
        run = direct.create_run(direct.create_experiment("guarded"))
        anonymous = mlflow.MlflowClient(tracking_uri=state.url)
        with pytest.raises(MlflowException, match="401|[Uu]nauthori[sz]ed|credentials"):
            anonymous.set_tag(run.info.run_id, "trainer.gates", "{}")
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "not-the-password")
        with pytest.raises(MlflowException):
            mlflow.MlflowClient(tracking_uri=state.url).set_tag(run.info.run_id, "trainer.gates", "{}")
        assert "trainer.gates" not in direct.get_run(run.info.run_id).data.tags

        for k, v in server.admin_credentials(home).items():
            monkeypatch.setenv(k, v)
        mlflow.MlflowClient(tracking_uri=state.url).set_tag(run.info.run_id, "owner", "me")
        assert direct.get_run(run.info.run_id).data.tags["owner"] == "me"

        # Asking for auth of a server running without it is refused (tested the other way round
        # here: the server found is the one with auth, reused).
        again, started_again = server.serve(0, home=home, auth=True)
        assert again == state and not started_again
    finally:
        server.stop(home)


@pytest.mark.integration
def test_without_auth_the_start_says_who_can_reach_it_and_a_copied_state_file_stops_nothing(tmp_path):
    home, other = tmp_path / "home", tmp_path / "other"
    notes: list[str] = []
    state, _ = server.serve(0, home=home, progress=notes.append)
    try:
        assert any("every local user of this host can read and write" in n for n in notes)
        with pytest.raises(TrackingError, match="runs without authentication"):
            server.serve(0, home=home, auth=True)
        group = [state.pid, *(c.pid for c in psutil.Process(state.pid).children(recursive=True))]

        # Another home holding a copy of this home's server.json: --stop there ends nothing.
        (other / server.SERVER_DIR).mkdir(parents=True)
        shutil.copy2(home / server.SERVER_DIR / server.STATE_FILE, other / server.SERVER_DIR / server.STATE_FILE)
        assert server.find(other) is None
        assert server.stop(other) is None
        out = subprocess.run([sys.executable, "-m", "trainer.cli", "mlflow", "serve", "--stop"],
                             env={**os.environ, "TRAINER_HOME": str(other)}, capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0 and "no MLflow server was running" in out.stdout
        assert all(psutil.pid_exists(p) for p in group) and server.healthy(state.url)
        assert server.find(home) == state
    finally:
        assert server.stop(home) == state


def _record(home, **fields):
    folder = home / server.SERVER_DIR
    folder.mkdir(parents=True, exist_ok=True)
    data = {"pid": os.getppid(), "url": "http://127.0.0.1:1", "port": 1, "backend_store_uri": "sqlite://",
            "artifacts_destination": "/nonexistent", "log": "/nonexistent", "started_at": 0.0, **fields}
    path = folder / server.STATE_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh)
    return path


def _cli_stop(home):
    return subprocess.run([sys.executable, "-m", "trainer.cli", "mlflow", "serve", "--stop"],
                          env={**os.environ, "TRAINER_HOME": str(home)}, capture_output=True, text=True, timeout=120)


def test_a_non_numeric_pid_is_one_clean_line(tmp_path):
    home = tmp_path / "home"
    _record(home, pid="12ab", start_ticks=1, token="t")
    out = _cli_stop(home)
    assert out.returncode == TrackingError.exit_code, out.stderr
    assert out.stderr.strip().count("\n") == 0 and "is not a process id" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_record_without_start_time_and_token_signals_nothing(tmp_path):
    """An older (or hand-written) server.json naming a live process of ours (this test's parent)."""
    home = tmp_path / "home"
    _record(home)
    with pytest.raises(TrackingError, match="does not say which process it started"):
        server.stop(home)
    assert psutil.pid_exists(os.getppid())


def test_a_symlinked_state_file_is_refused_and_not_written_through(tmp_path):
    home = tmp_path / "home"
    victim = tmp_path / "victim.json"
    victim.write_text("precious")
    (home / server.SERVER_DIR).mkdir(parents=True)
    (home / server.SERVER_DIR / server.STATE_FILE).symlink_to(victim)
    with pytest.raises(TrackingError, match="symbolic link"):
        server.serve(0, home=home, timeout=5)
    with pytest.raises(TrackingError, match="symbolic link"):
        server.stop(home)
    assert victim.read_text() == "precious"


def test_a_state_file_others_may_write_is_refused(tmp_path):
    home = tmp_path / "home"
    path = _record(home, start_ticks=1, token="t")
    os.chmod(path, 0o646)
    out = _cli_stop(home)
    assert out.returncode == TrackingError.exit_code and "others may write it" in out.stderr
