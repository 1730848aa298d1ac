"""A local MLflow tracking server over the embedded store (`trainer mlflow serve`).

The embedded store is a SQLite file under `$TRAINER_HOME` (`trainer.home.default_tracking_uri`);
jobs on this host write it directly. A server in front of it gives a team (and the MLflow UI, and
tests of a tracking outage) one HTTP address: `mlflow server` on 127.0.0.1 only, one worker, no
job runner (FINDINGS: ~0.25 GB and ~10 s to healthy instead of ~2.7 GB), artifacts served from
`$TRAINER_HOME/mlartifacts` (the embedded store's artifact root).

Its state lives in `$TRAINER_HOME/mlflow-server/` (server.json: pid, url, port, store; server.log:
MLflow's own output, never the user's terminal). `find()` returns the running one (its process
alive, its /health answering), so a second `serve()` reuses it instead of starting another; a
lock file makes two concurrent `serve()` calls start one server. The server runs in its own
process group (MLflow starts uvicorn as a child): `stop()` ends exactly that group.

Everything here returns data and raises `TrackingError`s; nothing prints.
"""
from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

from trainer.errors import TrackingError, UsageError, first_line
from trainer.home import default_tracking_uri, trainer_home

SERVER_DIR = "mlflow-server"
STATE_FILE = "server.json"
LOG_FILE = "server.log"
DEFAULT_PORT = 5000
START_TIMEOUT_S = 180.0
HOST = "127.0.0.1"


@dataclass(frozen=True)
class ServerState:
    pid: int
    url: str
    port: int
    backend_store_uri: str
    artifacts_destination: str
    log: str
    started_at: float


def server_dir(home: Path | None = None) -> Path:
    return (home or trainer_home()) / SERVER_DIR


def _state_file(home: Path | None) -> Path:
    return server_dir(home) / STATE_FILE


def _read_state(home: Path | None) -> ServerState | None:
    try:
        return ServerState(**json.loads(_state_file(home).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def healthy(url: str, timeout: float = 2.0) -> bool:
    """Whether an MLflow server answers /health at `url`."""
    import requests

    try:
        return requests.get(f"{url}/health", timeout=timeout).ok
    except requests.RequestException:
        return False


def _ours(state: ServerState) -> bool:
    """The recorded process is still the server we started (not a recycled pid)."""
    import psutil

    try:
        cmd = " ".join(psutil.Process(state.pid).cmdline())
    except psutil.Error:
        return False
    return "mlflow" in cmd and f"--port {state.port}" in cmd.replace("=", " ")


def find(home: Path | None = None) -> ServerState | None:
    """The running server of this `$TRAINER_HOME`, or None (a stale record is ignored)."""
    state = _read_state(home)
    if state is None or not _ours(state) or not healthy(state.url):
        return None
    return state


def status(home: Path | None = None) -> dict:
    """`{"running": bool, ...the ServerState fields when running, "tracking_uri": <embedded store>}`."""
    state = find(home)
    out: dict = {"running": state is not None, "backend_store_uri": _store_uri(home)}
    if state is not None:
        out.update(asdict(state))
    return out


def _store_uri(home: Path | None) -> str:
    return f"sqlite:///{home / 'mlflow.db'}" if home else default_tracking_uri()


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@contextmanager
def _locked(home: Path | None) -> Iterator[None]:
    folder = server_dir(home)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def serve(port: int | None = DEFAULT_PORT, *, home: Path | None = None, timeout: float = START_TIMEOUT_S,
          progress: Callable[[str], None] | None = None) -> tuple[ServerState, bool]:
    """Start the server in the background, or find the running one. Returns (state, started_now).

    `port=None` or 0 picks a free port. A running server is reused whatever port was asked for
    (its URL is in the state). Raises TrackingError when the port is taken by something else or
    the server does not become healthy within `timeout` (its log's last line says why)."""
    if port is not None and not 0 <= port < 65536:
        raise UsageError(f"--port {port}: expected 0..65535 (0 picks a free port)")
    with _locked(home):
        running = find(home)
        if running is not None:
            return running, False
        stale = _read_state(home)
        if stale is not None and _ours(stale):
            _kill_group(stale.pid)  # alive but not answering: a hung server of ours
        if not port:
            port = _free_port()
        elif not _port_free(port):
            raise TrackingError(f"port {HOST}:{port} is in use by another program; pick another with --port "
                                f"(0 picks a free one)")
        root = home or trainer_home()
        folder = server_dir(home)
        artifacts = root / "mlartifacts"
        artifacts.mkdir(parents=True, exist_ok=True)
        store = _store_uri(home)
        log = folder / LOG_FILE
        url = f"http://{HOST}:{port}"
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", HOST, "--port", str(port), "--workers", "1",
               "--backend-store-uri", store, "--artifacts-destination", str(artifacts)]
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
        if progress:
            progress(f"starting the MLflow server on {url} (store {store})")
        with open(log, "ab") as out:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    cwd=folder, env=env, start_new_session=True)
        state = ServerState(pid=proc.pid, url=url, port=port, backend_store_uri=store,
                            artifacts_destination=str(artifacts), log=str(log), started_at=time.time())
        deadline = time.monotonic() + timeout
        while not healthy(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                _kill_group(proc.pid)
                why = "exited" if proc.returncode is not None else f"was not healthy within {timeout:g}s"
                raise TrackingError(f"the MLflow server {why}: {_last_line(log)} (log: {log})")
            time.sleep(0.3)
        _state_file(home).write_text(json.dumps(asdict(state), indent=2))
        return state, True


def stop(home: Path | None = None) -> ServerState | None:
    """Stop this home's server (only the process group it started). Returns what was stopped,
    or None when none was running."""
    with _locked(home):
        state = _read_state(home)
        _state_file(home).unlink(missing_ok=True)
        if state is None or not _ours(state):
            return None
        _kill_group(state.pid)
        return state


def _kill_group(pid: int, grace_s: float = 10.0) -> None:
    import psutil

    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    if pgid != pid:  # not the leader of its own group: never signal someone else's group
        os.kill(pid, signal.SIGKILL)
        return
    try:
        members = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        members = []
    os.killpg(pgid, signal.SIGTERM)
    _, alive = psutil.wait_procs(members, timeout=grace_s)
    if alive:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        psutil.wait_procs(alive, timeout=5)
    try:  # reap it when we are its parent (the same process started and stops it)
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _last_line(log: Path) -> str:
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError as e:
        return first_line(e)
    errors = [ln for ln in lines if "Error" in ln or "error" in ln]
    return (errors or lines or ["no output"])[-1][:300]
