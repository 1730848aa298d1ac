"""`trainer registry serve`: a local OCI registry (Debian's `docker-registry`, distribution 2.8)
on 127.0.0.1 with htpasswd auth, for a single box or a small team: the default registry the way
the embedded cluster and the SQLite MLflow store are the local defaults.

Everything lives in `$TRAINER_HOME/registry/`: `config.yml`, `htpasswd` (bcrypt, 0600), `data/`
(the blobs), `registry.log`, `state.json` (0600: pid, start time and owner token, address; see
trainer.cluster.processes: `stop` signals only the process this home started) and `config.json`, the Docker-format
login trainer's own clients read (0600; `DOCKER_CONFIG=$TRAINER_HOME/registry docker pull ...`
uses it too). The password is generated unless given in $TRAINER_REGISTRY_PASSWORD; it is never
printed.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path

from trainer import ports
from trainer.cluster import processes
from trainer.errors import RegistryError
from trainer.registry.auth import ENV_PASSWORD, own_config_dir, write_login

DEFAULT_PORT = 5050      # MLflow's server and `trainer ui` take 5000
DEFAULT_USER = "trainer"
READY_TIMEOUT_S = 15
ENV_REGISTRY = "TRAINER_REGISTRY"
INSTALL_HINT = "install it: apt-get install docker-registry apache2-utils"

CONFIG = """\
version: 0.1
log:
  level: warn
  accesslog: {{disabled: true}}
storage:
  filesystem: {{rootdirectory: {data}}}
  delete: {{enabled: true}}
http:
  addr: 127.0.0.1:{port}
  headers:
    X-Content-Type-Options: [nosniff]
auth:
  htpasswd: {{realm: trainer-registry, path: {htpasswd}}}
"""


def state() -> dict | None:
    """The running local registry ({pid, address, user, ...}), or None. A state file that is a
    link, not ours, or malformed is refused (RegistryError, one line)."""
    folder = own_config_dir()
    path = folder / "state.json"
    data = processes.read_private_json(path, RegistryError)
    if data is None or processes.live(data, folder, path, RegistryError) is None:
        return None
    if not isinstance(data.get("address"), str):
        raise RegistryError(f"{path} names no registry address: refusing to trust it; remove it")
    return data


def start(port: int = DEFAULT_PORT, user: str = DEFAULT_USER, password: str | None = None) -> tuple[dict, bool]:
    """Start the local registry unless it runs; returns (state, started)."""
    running = state()
    if running is not None:
        return running, False
    exe = shutil.which("docker-registry")
    if exe is None:
        raise RegistryError(f"docker-registry is not installed; {INSTALL_HINT}")
    if not 0 <= port <= 65535:
        raise RegistryError(f"--port must be 1-65535 (0: any free port), got {port}")
    if port == 0:
        port = ports.free_port()
    elif not _free(port):
        raise RegistryError(f"port {port} on 127.0.0.1 is taken by {processes.port_owner(port)}; pick another "
                            f"with --port (0: any free port)")
    folder = own_config_dir()
    (folder / "data").mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    password = password or os.environ.get(ENV_PASSWORD) or secrets.token_urlsafe(24)
    _write_htpasswd(folder / "htpasswd", user, password)
    address = f"127.0.0.1:{port}"
    write_login(folder / "config.json", address, user, password)
    config = folder / "config.yml"
    processes.write_private(config, CONFIG.format(data=json.dumps(str(folder / "data")), port=port,
                                                  htpasswd=json.dumps(str(folder / "htpasswd"))))
    proc, record = processes.start_marked([exe, "serve", str(config)], folder / "registry.log", folder)
    if not _wait_ready(address, proc):
        proc.kill()
        proc.wait()
        tail = (folder / "registry.log").read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        raise RegistryError(f"docker-registry did not start on {address}: {tail[0][:300]} "
                            f"(log: {folder / 'registry.log'})")
    data = {**record, "address": address, "user": user, "started": time.time()}
    processes.write_private_json(folder / "state.json", data)
    return data, True


def stop() -> bool:
    """Stop the local registry (only the process `start` recorded); its data stays."""
    folder = own_config_dir()
    path = folder / "state.json"
    data = processes.read_private_json(path, RegistryError)
    proc = processes.live(data, folder, path, RegistryError) if data is not None else None
    if proc is not None:
        processes.terminate([proc])
    path.unlink(missing_ok=True)
    return proc is not None


def configured_address(explicit: str | None = None) -> tuple[str | None, str]:
    """The registry to use and why: `explicit` (a spec's `register.registry`, --registry), else
    $TRAINER_REGISTRY, else the running `trainer registry serve`; (None, why) when there is none."""
    if explicit:
        return explicit, "given"
    if os.environ.get(ENV_REGISTRY):
        return os.environ[ENV_REGISTRY], f"${ENV_REGISTRY}"
    running = state()
    if running is not None:
        return running["address"], "trainer registry serve"
    return None, (f"no registry configured (register.registry, ${ENV_REGISTRY}, or a running "
                  f"trainer registry serve)")


def _write_htpasswd(path: Path, user: str, password: str) -> None:
    exe = shutil.which("htpasswd")
    if exe is None:
        raise RegistryError(f"htpasswd is not installed (bcrypt hashes for the registry); {INSTALL_HINT}")
    # -i: the password on stdin, never in argv (visible in ps); -B: bcrypt, what distribution accepts.
    done = subprocess.run([exe, "-niB", user], input=password, capture_output=True, text=True, timeout=60)
    line = done.stdout.strip()
    if done.returncode != 0 or not line.startswith(f"{user}:$2"):
        raise RegistryError(f"htpasswd could not hash the registry password (exit {done.returncode})")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(line + "\n")


def _wait_ready(address: str, proc: subprocess.Popen) -> bool:
    deadline = time.monotonic() + READY_TIMEOUT_S
    host, port = address.rsplit(":", 1)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection((host, int(port)), timeout=0.5) as s:
                s.sendall(b"GET /v2/ HTTP/1.0\r\n\r\n")
                if s.recv(12).startswith(b"HTTP/1."):
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


def _free(port: int) -> bool:
    with socket.socket() as s:
        # As Go's listener does: a port whose old connections linger in TIME_WAIT is free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
