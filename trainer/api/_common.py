"""What the API's modules share: the cluster address, loading a spec with overrides, network
checks (loopback, a port in use, a store that answers). Private: not part of the API."""
from __future__ import annotations

import os
import secrets
import time
from pathlib import Path
from typing import Callable

from trainer.credentials import redact
from trainer.errors import JobError
from trainer.spec import JobSpec, load_spec

ENV_ADDRESS = "TRAINER_ADDRESS"


def resolve_address(address: str | None) -> str | None:
    """An explicit address, else $TRAINER_ADDRESS, else None (= the embedded local cluster)."""
    address = address or os.environ.get(ENV_ADDRESS) or None
    if address and "://" not in address:
        address = f"http://{address}"
    return address


def local_address() -> str:
    from trainer.cluster.local import LocalCluster

    state = LocalCluster().state()
    if state is None:
        raise JobError("address: none given, TRAINER_ADDRESS is not set and no local cluster is running",
                       argument="address")
    return state.dashboard_url


def say(progress: Callable[[str], None] | None, text: str) -> None:
    if progress is not None:
        progress(text)


def load_job_spec(spec: str | Path | dict | JobSpec, set: list[str] | None, overrides: dict,
                  workdir: str | Path | None = None) -> tuple[JobSpec, Path]:
    """The spec and its project folder: `workdir` when given (a spec given as a dict or JobSpec,
    e.g. a rerun's, whose code is elsewhere), else the spec file's project (a dict's: the cwd)."""
    if isinstance(spec, JobSpec):
        spec = spec.model_dump(exclude_none=True)
    spec_obj, found = load_spec(spec, set)
    workdir = Path(workdir) if workdir is not None else found
    if overrides:
        merged = deep_merge(spec_obj.model_dump(exclude_none=True), overrides)
        spec_obj, _ = load_spec(merged)
    return spec_obj, workdir


def deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def new_job_id(name: str) -> str:
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def seconds(ms: int | None) -> float | None:
    return ms / 1000 if ms else None


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def port_taken(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def check_reachable(uri: str) -> None:
    if uri.startswith(("http://", "https://")):
        import requests

        requests.get(f"{uri.rstrip('/')}/health", timeout=5).raise_for_status()


def store_reachable(uri: str) -> bool:
    """Whether the store is there to be read, checked without creating it (an embedded SQLite
    file) or waiting on MLflow's minutes of retries (a server that does not answer)."""
    from urllib.parse import urlsplit

    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):]).is_file()
    if uri.startswith("file:") or "://" not in uri:
        return Path(urlsplit(uri).path if uri.startswith("file:") else uri).exists()
    if uri.startswith(("http://", "https://")):
        try:
            check_reachable(uri)
            return True
        except Exception:
            return False
    return True


def client_uri(recorded: str | None) -> str | None:
    """The tracking URI this client uses for a job's recorded one (recorded without credentials):
    this machine's own URI ($MLFLOW_TRACKING_URI) when it names the same store with credentials
    in it, else the recorded one (MLflow then takes credentials from MLFLOW_TRACKING_* variables)."""
    from trainer.credentials import split_credentials
    from trainer.home import resolve_tracking_uri

    if not recorded:
        return recorded
    here = resolve_tracking_uri()
    if here != recorded and recorded in (split_credentials(here)[0], redact(here)):
        return here
    return recorded
