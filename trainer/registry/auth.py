"""Registry credentials, found where Docker and every OCI tool look, and never shown anywhere.

Order (first that has an entry for the registry's host wins):
1. `TRAINER_REGISTRY_USERNAME` + `TRAINER_REGISTRY_PASSWORD` (CI: Jenkins `withCredentials`);
2. the Docker config `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`: a
   `credHelpers[host]` or `credsStore` helper (`docker-credential-<name> get`, the host on
   stdin), else the base64 `auths[host].auth` that `docker login` writes;
3. the Docker-format config `trainer registry serve` writes for its own local registry
   (`$TRAINER_HOME/registry/config.json`, mode 0600).

A `Credentials` object's repr and str hide the secret; no function here prints, logs, or puts a
secret into an error message (a helper's stderr is not quoted: some echo their input).
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from trainer.errors import RegistryError
from trainer.home import trainer_home

ENV_USERNAME = "TRAINER_REGISTRY_USERNAME"
ENV_PASSWORD = "TRAINER_REGISTRY_PASSWORD"
ENV_REGISTRY = "TRAINER_REGISTRY"
HELPER_TIMEOUT_S = 30


@dataclass(frozen=True)
class Credentials:
    username: str
    secret: str = field(repr=False)
    source: str = ""          # where they came from, for messages ("env", "docker config", ...)
    token: bool = False       # an identity token (a helper's `<token>` user): sent as the refresh token

    def __str__(self) -> str:
        return f"credentials of {self.username!r} from {self.source}"


def own_config_dir() -> Path:
    """Where `trainer registry serve` keeps the local registry's state and its login."""
    return trainer_home() / "registry"


def docker_config_paths() -> list[Path]:
    paths = []
    if os.environ.get("DOCKER_CONFIG"):
        paths.append(Path(os.environ["DOCKER_CONFIG"]).expanduser() / "config.json")
    else:
        paths.append(Path.home() / ".docker" / "config.json")
    paths.append(own_config_dir() / "config.json")
    return paths


def find_credentials(host: str) -> Credentials | None:
    """The credentials for `host` (host[:port]), or None (anonymous).

    The environment's pair is bound to one host: with $TRAINER_REGISTRY set, only to its host
    (CI sets both; a registry address read from data, such as an MLflow tag, never receives them
    unless it is that host); the Docker config's entries are keyed by host already."""
    user, password = os.environ.get(ENV_USERNAME), os.environ.get(ENV_PASSWORD)
    if user and password:
        if env_credentials_host() in (None, host):
            return Credentials(user, password, f"${ENV_USERNAME}/${ENV_PASSWORD}")
    elif user or password:
        raise RegistryError(f"set both {ENV_USERNAME} and {ENV_PASSWORD}, or neither")
    for path in docker_config_paths():
        config = _read_config(path)
        if config is None:
            continue
        helper = (config.get("credHelpers") or {}).get(host) or config.get("credsStore")
        if helper:
            found = _from_helper(str(helper), host)
            if found is not None:
                return found
        entry = _auth_entry(config.get("auths") or {}, host)
        if entry is not None:
            return _decode_entry(entry, host, path)
    return None


def env_credentials_host() -> str | None:
    """The host[:port] of $TRAINER_REGISTRY (what the environment's credentials are for), or None."""
    from urllib.parse import urlsplit

    address = os.environ.get(ENV_REGISTRY, "").strip().rstrip("/")
    if not address:
        return None
    return urlsplit(address if "://" in address else f"//{address}").netloc or address


def _read_config(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise RegistryError(f"cannot read the Docker config {path}: {type(e).__name__}") from None
    if not isinstance(data, dict):
        raise RegistryError(f"the Docker config {path} is not a JSON object")
    return data


def _auth_entry(auths: dict, host: str) -> dict | None:
    # `docker login` keys entries by host, sometimes with a scheme or the legacy /v1/ path.
    for key, entry in auths.items():
        bare = str(key).split("://", 1)[-1].split("/", 1)[0]
        if bare == host and isinstance(entry, dict):
            return entry
    return None


def _decode_entry(entry: dict, host: str, path: Path) -> Credentials | None:
    if entry.get("identitytoken"):
        return Credentials("<token>", str(entry["identitytoken"]), f"the Docker config {path}", token=True)
    if entry.get("username") and entry.get("password"):
        return Credentials(str(entry["username"]), str(entry["password"]), f"the Docker config {path}")
    if not entry.get("auth"):
        return None
    try:
        user, sep, password = base64.b64decode(str(entry["auth"]), validate=True).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        raise RegistryError(f"the Docker config {path}: the auth entry of {host} is not base64 user:password") from None
    if not sep or not user:
        raise RegistryError(f"the Docker config {path}: the auth entry of {host} is not base64 user:password")
    return Credentials(user, password, f"the Docker config {path}")


def _from_helper(helper: str, host: str) -> Credentials | None:
    exe = shutil.which(f"docker-credential-{helper}")
    if exe is None:
        raise RegistryError(f"the Docker config names the credential helper {helper!r}, but "
                            f"docker-credential-{helper} is not on PATH")
    try:
        done = subprocess.run([exe, "get"], input=host, capture_output=True, text=True, timeout=HELPER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise RegistryError(f"docker-credential-{helper} did not answer in {HELPER_TIMEOUT_S} s") from None
    if done.returncode != 0:
        # "credentials not found in native keychain": no entry for this host; anything else is an error.
        if "not found" in (done.stdout + done.stderr).lower():
            return None
        raise RegistryError(f"docker-credential-{helper} get failed (exit {done.returncode})")
    try:
        data = json.loads(done.stdout)
        user, secret = str(data["Username"]), str(data["Secret"])
    except (ValueError, KeyError, TypeError):
        raise RegistryError(f"docker-credential-{helper} get answered something that is not its JSON") from None
    if user == "<token>":
        return Credentials(user, secret, f"docker-credential-{helper}", token=True)
    return Credentials(user, secret, f"docker-credential-{helper}")


def write_login(path: Path, host: str, username: str, password: str) -> None:
    """Add `host`'s login to the Docker-format config at `path` (created 0600, like `docker login`)."""
    config = _read_config(path) or {}
    auths = config.setdefault("auths", {})
    auths[host] = {"auth": base64.b64encode(f"{username}:{password}".encode()).decode()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(config, fh, indent=2)
    os.replace(tmp, path)
