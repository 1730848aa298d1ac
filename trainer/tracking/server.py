"""A local MLflow tracking server over the embedded store (`trainer mlflow serve`).

The embedded store is a SQLite file under `$TRAINER_HOME` (`trainer.home.default_tracking_uri`);
jobs on this host write it directly. A server in front of it gives a team (and the MLflow UI, and
tests of a tracking outage) one HTTP address: `mlflow server` on 127.0.0.1 only, one worker, no
job runner (FINDINGS: ~0.25 GB and ~10 s to healthy instead of ~2.7 GB), artifacts served from
`$TRAINER_HOME/mlartifacts` (the embedded store's artifact root).

Who can reach it: it listens on 127.0.0.1, so every local user of this host can, and without
`auth` every one of them can read and rewrite its runs, tags and metrics (the ones promotion gates
read). `serve(auth=True)` runs MLflow's own basic-auth app (`mlflow server --app-name basic-auth`):
every request but /health needs a user; the admin's password is generated once, kept 0600 in
`$TRAINER_HOME/mlflow-server/admin_password` and never printed; clients give it as
MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (the admin creates other users through
MLflow's API; authenticated users read everything by default, write what they are granted).

Its state lives in `$TRAINER_HOME/mlflow-server/` (server.json: pid, its start time and owner
token (`trainer.cluster.processes`), url, port, store; server.log: MLflow's own output, never the
user's terminal). `find()` returns the running one (the very process this home started, its
/health answering), so a second `serve()` reuses it instead of starting another; a lock file
makes two concurrent `serve()` calls start one server. The server runs in its own process group
(MLflow starts uvicorn as a child): `stop()` ends exactly that group, and only when server.json
proves the process is this home's (a file copied from another home, a link, a recycled pid, a
pid that is not a number: nothing is signalled).

Everything here returns data and raises `TrackingError`s; nothing prints.
"""
from __future__ import annotations

import fcntl
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

from trainer import ports
from trainer.cluster import processes
from trainer.errors import TrackingError, UsageError, first_line
from trainer.home import default_tracking_uri, trainer_home

SERVER_DIR = "mlflow-server"
STATE_FILE = "server.json"
LOG_FILE = "server.log"
PASSWORD_FILE = "admin_password"
AUTH_CONFIG = "basic_auth.ini"
ADMIN_USER = "admin"
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
    start_ticks: int = 0      # /proc/<pid>/stat field 22: with the pid, names one process
    token: str = ""           # in the server's environment (TRAINER_OWNER), bound to this home
    auth: bool = False        # MLflow's basic-auth app: every request needs a user

    def recorded(self) -> processes.Recorded:
        return processes.Recorded(self.pid, self.start_ticks, self.token)


def server_dir(home: Path | None = None) -> Path:
    return (home or trainer_home()) / SERVER_DIR


def _state_file(home: Path | None) -> Path:
    return server_dir(home) / STATE_FILE


def _read_state(home: Path | None) -> ServerState | None:
    """server.json, or None when there is none. One that is a link, not ours, writable by others,
    or names no process of ours in a form trainer writes (a pid that is not a number) is refused
    with one line (TrackingError)."""
    path = _state_file(home)
    data = processes.read_private_json(path, TrackingError)
    if data is None:
        return None
    processes.Recorded.parse(data, path, TrackingError)
    known = set(ServerState.__dataclass_fields__)
    try:
        return ServerState(**{k: v for k, v in data.items() if k in known})
    except TypeError:
        raise TrackingError(f"{path} is not a server state trainer wrote (fields missing); remove it") from None


def healthy(url: str, timeout: float = 2.0) -> bool:
    """Whether an MLflow server answers /health at `url`."""
    import requests

    try:
        return requests.get(f"{url}/health", timeout=timeout).ok
    except requests.RequestException:
        return False


def _ours(state: ServerState, home: Path | None) -> bool:
    """The recorded process is the very server this home started (not a recycled pid, not
    another home's server named by a copied state file)."""
    return state.recorded().is_ours(server_dir(home))


def find(home: Path | None = None) -> ServerState | None:
    """The running server of this `$TRAINER_HOME`, or None (a stale record is ignored)."""
    state = _read_state(home)
    if state is None or not _ours(state, home) or not healthy(state.url):
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


@contextmanager
def _locked(home: Path | None) -> Iterator[None]:
    folder = server_dir(home)
    folder.parent.mkdir(parents=True, exist_ok=True)
    folder.mkdir(mode=0o700, exist_ok=True)      # the admin's password lives here
    fd = os.open(folder / ".lock", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def serve(port: int | None = DEFAULT_PORT, *, home: Path | None = None, timeout: float = START_TIMEOUT_S,
          progress: Callable[[str], None] | None = None, auth: bool = False) -> tuple[ServerState, bool]:
    """Start the server in the background, or find the running one. Returns (state, started_now).

    `port=None` or 0 picks a free port. A running server is reused whatever port was asked for
    (its URL is in the state). `auth`: MLflow's basic-auth app (see the module's docstring).
    Raises TrackingError when the port is taken by something else, `auth` is asked of a running
    server without it, or the server does not become healthy within `timeout` (its log's last
    line says why)."""
    if port is not None and not 0 <= port < 65536:
        raise UsageError(f"--port {port}: expected 0..65535 (0 picks a free port)")
    with _locked(home):
        running = find(home)
        if running is not None:
            if auth and not running.auth:
                raise TrackingError(f"the MLflow server at {running.url} runs without authentication; stop it "
                                    f"first (trainer mlflow serve --stop), then start it with --auth")
            _say_who(progress, running, home)
            return running, False
        stale = _read_state(home)
        if stale is not None and _ours(stale, home):
            _kill_group(stale.pid)  # alive but not answering: a hung server of ours
        if not port:
            port = ports.free_port(host=HOST)
        elif not _port_free(port):
            raise TrackingError(f"port {HOST}:{port} is taken by {processes.port_owner(port)}; pick another "
                                f"with --port (0 picks a free one)")
        root = home or trainer_home()
        folder = server_dir(home)
        artifacts = root / "mlartifacts"
        artifacts.mkdir(parents=True, exist_ok=True)
        store = _store_uri(home)
        log = folder / LOG_FILE
        url = f"http://{HOST}:{port}"
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", HOST, "--port", str(port), "--workers", "1",
               "--backend-store-uri", store, "--artifacts-destination", str(artifacts)]
        token = processes.new_token()
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
               **processes.owner_env(token, folder)}
        if auth:
            cmd += ["--app-name", "basic-auth"]
            env.update(_auth_env(folder))
        if progress:
            progress(f"starting the MLflow server on {url} (store {store})")
        with open(log, "ab") as out:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    cwd=folder, env=env, start_new_session=True)
        state = ServerState(pid=proc.pid, url=url, port=port, backend_store_uri=store,
                            artifacts_destination=str(artifacts), log=str(log), started_at=time.time(),
                            start_ticks=processes.start_ticks(proc.pid) or 0, token=token, auth=auth)
        deadline = time.monotonic() + timeout
        while not healthy(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                _kill_group(proc.pid)
                why = "exited" if proc.returncode is not None else f"was not healthy within {timeout:g}s"
                raise TrackingError(f"the MLflow server {why}: {_last_line(log)} (log: {log})")
            time.sleep(0.3)
        processes.write_private_json(_state_file(home), asdict(state))
        _say_who(progress, state, home)
        return state, True


def _say_who(progress: Callable[[str], None] | None, state: ServerState, home: Path | None) -> None:
    """Who can reach the server, said at every start (and when a running one is found)."""
    if progress is None:
        return
    if state.auth:
        progress(f"basic auth on: only users it knows can read or write; clients set MLFLOW_TRACKING_USERNAME="
                 f"{ADMIN_USER} and MLFLOW_TRACKING_PASSWORD from {password_file(home)} (0600)")
    else:
        progress(f"bound to {HOST}: every local user of this host can read and write its runs, tags and "
                 f"metrics; on a shared host use --auth")


def password_file(home: Path | None = None) -> Path:
    """The admin's password (0600) of the server started with auth."""
    return server_dir(home) / PASSWORD_FILE


def admin_credentials(home: Path | None = None) -> dict[str, str]:
    """MLFLOW_TRACKING_USERNAME / _PASSWORD for the admin of this home's server (auth on)."""
    return {"MLFLOW_TRACKING_USERNAME": ADMIN_USER, "MLFLOW_TRACKING_PASSWORD": _admin_password(server_dir(home))}


def _auth_env(folder: Path) -> dict[str, str]:
    """What `mlflow server --app-name basic-auth` needs: its config (the user store beside the
    state, never the package's default `basic_auth.db` in the cwd), the admin's password (used
    when the user store is created; kept in a 0600 file) and a secret key for its CSRF checks."""
    import importlib.util

    if importlib.util.find_spec("flask_wtf") is None:
        raise TrackingError("--auth runs MLflow's basic-auth app, which needs Flask-WTF: pip install 'flask-wtf<2' "
                            "(or this project's [auth] extra)")
    config = folder / AUTH_CONFIG
    text = ("[mlflow]\n"
            "default_permission = READ\n"
            f"database_uri = sqlite:///{folder / 'basic_auth.db'}\n"
            f"admin_username = {ADMIN_USER}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            "grant_default_workspace_access = false\n")
    fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    return {"MLFLOW_AUTH_CONFIG_PATH": str(config), "MLFLOW_AUTH_ADMIN_PASSWORD": _admin_password(folder),
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32)}


def _admin_password(folder: Path) -> str:
    """The admin's password: created once (0600, never readable by others even for a moment);
    refused when the file is a link, not ours, or readable by others."""
    import stat

    path = folder / PASSWORD_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(24))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as e:
        raise TrackingError(f"cannot read the MLflow admin password {path}: {e.strerror}") from None
    with os.fdopen(fd) as fh:
        st = os.fstat(fh.fileno())
        if st.st_uid != os.getuid() or st.st_mode & 0o077:
            raise TrackingError(f"{path} is readable by others or not yours (mode {stat.S_IMODE(st.st_mode):o}): "
                                f"refusing to use it; fix it with: chmod 600 {path}")
        password = fh.read().strip()
    if not password:
        raise TrackingError(f"{path} is empty; remove it (and {folder / 'basic_auth.db'}) to start afresh")
    return password


def stop(home: Path | None = None) -> ServerState | None:
    """Stop this home's server (only the process group it started). Returns what was stopped,
    or None when none was running. A state file that does not prove its process is this home's
    server is refused (TrackingError) and nothing is signalled."""
    with _locked(home):
        state = _read_state(home)
        if state is None:
            return None
        if not _ours(state, home):
            _state_file(home).unlink(missing_ok=True)   # a dead server's record, or another home's
            return None
        _kill_group(state.pid)
        _state_file(home).unlink(missing_ok=True)
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
