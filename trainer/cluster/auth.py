"""Who may talk to a Ray cluster: Ray's own token auth (`RAY_AUTH_MODE=token`).

The embedded local cluster's token lives in `$TRAINER_HOME/cluster/auth_token`: created 0600 in a
0700 folder, new at every `cluster up`. Every node reads it through `RAY_AUTH_TOKEN_PATH` (the
dashboard, its agents, the GCS and the Ray client server all refuse a request without it), and
trainer's clients send it as `Authorization: Bearer <token>` to that dashboard only.

A remote cluster's token comes from Ray's own variables, the way `ray job submit` takes it:
`RAY_AUTH_TOKEN` (the token) or `RAY_AUTH_TOKEN_PATH` (a file holding it). Nothing is sent when
neither is set; the local cluster's token never goes anywhere else.
"""
from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from trainer.cluster.processes import read_private_json
from trainer.errors import ClusterError, first_line
from trainer.home import trainer_home

ENV_MODE = "RAY_AUTH_MODE"
ENV_TOKEN = "RAY_AUTH_TOKEN"
ENV_TOKEN_PATH = "RAY_AUTH_TOKEN_PATH"

CLUSTER_DIR = "cluster"
TOKEN_FILE = "auth_token"
STATE_FILE = "state.json"


def cluster_dir(home: Path | None = None) -> Path:
    return (home or trainer_home()) / CLUSTER_DIR


def token_path(home: Path | None = None) -> Path:
    return cluster_dir(home) / TOKEN_FILE


# ---------------------------------------------------------------- private folders and files

def private_dir(path: Path) -> Path:
    """`path` as a folder only this user can enter: created 0700; refused when it is a link or
    not a folder, or belongs to someone else; an own folder still open to others is closed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise ClusterError(f"{path} is a link or not a folder: refusing to keep the cluster's private files there")
    if st.st_uid != os.getuid():
        raise ClusterError(f"{path} belongs to uid {st.st_uid}, not to you (uid {os.getuid()}): refusing to use it "
                           f"for the cluster's private files; remove it or set TRAINER_HOME elsewhere")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def create_token(path: Path) -> str:
    """A new random token in `path` (replacing the old one), created with mode 0600: it is never
    readable by anyone else, not even for a moment."""
    private_dir(path.parent)
    path.unlink(missing_ok=True)
    token = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token)
    return token


def read_own_token(path: Path) -> str:
    """The token in one of trainer's own token files; refused when it is a link, belongs to someone
    else or others may read it (then it cannot be trusted to be secret any more)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as e:
        raise ClusterError(f"cannot read the cluster's token {path}: {first_line(e)}; restart the cluster "
                           f"(trainer cluster down && trainer cluster up)") from None
    with os.fdopen(fd) as fh:
        st = os.fstat(fh.fileno())
        if st.st_uid != os.getuid() or st.st_mode & 0o077:
            raise ClusterError(f"the cluster's token {path} is readable by others or not yours "
                               f"(mode {stat.S_IMODE(st.st_mode):o}, uid {st.st_uid}); restart the cluster "
                               f"(trainer cluster down && trainer cluster up) to get a new one")
        token = fh.read().strip()
    if not token:
        raise ClusterError(f"the cluster's token {path} is empty; restart the cluster to get a new one")
    return token


# ---------------------------------------------------------------- which token for which cluster

def env_token() -> str | None:
    """A remote cluster's token from Ray's variables: RAY_AUTH_TOKEN, else the file named by
    RAY_AUTH_TOKEN_PATH; None when neither is set."""
    token = os.environ.get(ENV_TOKEN, "").strip()
    if token:
        return token
    path = os.environ.get(ENV_TOKEN_PATH, "").strip()
    if not path:
        return None
    try:
        token = Path(path).expanduser().read_text().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ClusterError(f"{ENV_TOKEN_PATH}={path}: cannot read the Ray token: {first_line(e)}") from None
    if not token:
        raise ClusterError(f"{ENV_TOKEN_PATH}={path}: the file is empty")
    return token


def check_join_token_file() -> None:
    """`cluster join` with RAY_AUTH_TOKEN_PATH: the file must be only its owner's to read. A token
    others can read is not a secret any more (anyone on this host could join or submit with it);
    refused with the command that fixes it."""
    path = os.environ.get(ENV_TOKEN_PATH, "").strip()
    if not path or os.environ.get(ENV_TOKEN, "").strip():
        return          # no file, or Ray takes RAY_AUTH_TOKEN over it
    file = Path(path).expanduser()
    try:
        st = file.stat()
    except OSError as e:
        raise ClusterError(f"{ENV_TOKEN_PATH}={path}: cannot read the Ray token: {first_line(e)}") from None
    if st.st_mode & 0o077:
        raise ClusterError(f"{ENV_TOKEN_PATH}={path}: the token file is readable by others (mode "
                           f"{stat.S_IMODE(st.st_mode):o}), so it is no secret; fix it with: chmod 600 {file}")
    if st.st_uid != os.getuid():
        raise ClusterError(f"{ENV_TOKEN_PATH}={path}: the token file belongs to uid {st.st_uid}, not to you "
                           f"(uid {os.getuid()}): whoever owns it can change it; use a copy of your own (chmod 600)")


def local_dashboard(home: Path | None = None) -> str | None:
    """The dashboard URL the local cluster's state file records, if any (alive or not). A state
    file that is a link or someone else's is refused (it would decide where the token goes)."""
    url = (read_private_json(cluster_dir(home) / STATE_FILE, ClusterError) or {}).get("dashboard_url")
    return url if isinstance(url, str) and url else None


def token_for(address: str) -> str | None:
    """The token to present at the dashboard `address`: the local cluster's when it is that
    cluster's dashboard, else Ray's variables (see `env_token`)."""
    local = local_dashboard()
    if local and _same_endpoint(address, local) and token_path().is_file():
        return read_own_token(token_path())
    return env_token()


def headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def headers_for(address: str) -> dict[str, str]:
    return headers(token_for(address))


def _same_endpoint(a: str, b: str) -> bool:
    from urllib.parse import urlsplit

    pa, pb = urlsplit(a if "://" in a else f"http://{a}"), urlsplit(b if "://" in b else f"http://{b}")
    return (pa.scheme, pa.hostname, pa.port) == (pb.scheme, pb.hostname, pb.port)


def node_env(token_file: Path) -> dict[str, str]:
    """What a `ray start` of a node needs to run with token auth on, reading `token_file`."""
    return {ENV_MODE: "token", ENV_TOKEN_PATH: str(token_file)}
