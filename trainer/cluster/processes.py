"""Which local processes are ours to stop, and the private state files that say so.

A state file under `$TRAINER_HOME` decides which processes `cluster down` and `mlflow serve
--stop` signal, so a process is stopped only when it is provably one this home started:

- every process trainer starts carries `TRAINER_OWNER=<token>@<folder>` in its environment: a
  random token, new at every start, recorded in the home's state file, bound to that home's
  folder (a state file copied from another home names the other folder: it proves nothing here);
- a single recorded process is checked by pid AND its start time (/proc/<pid>/stat field 22), so
  a recycled pid is never taken for it;
- state files are written 0600 through a temporary file and `os.replace` (never through a link
  at the destination) and read with O_NOFOLLOW; one that is a link, another user's, or writable
  by others is refused.

Processes a Ray node starts later (agents, workers, job drivers) rename themselves
(setproctitle overwrites their environment), so `cluster down` stops the marked processes and
their descendants: children the kernel says ours started.
"""
from __future__ import annotations

import json
import os
import secrets
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from trainer.errors import TrainerError

ENV_OWNER = "TRAINER_OWNER"


def new_token() -> str:
    return secrets.token_hex(16)


def owner_marker(token: str, folder: Path) -> str:
    """The value of TRAINER_OWNER in the environment of what the home's `folder` started."""
    return f"{token}@{Path(folder).resolve()}"


def owner_env(token: str, folder: Path) -> dict[str, str]:
    return {ENV_OWNER: owner_marker(token, folder)}


def start_ticks(pid: int) -> int | None:
    """When `pid` started (clock ticks since boot: /proc/<pid>/stat field 22), or None when no
    such process exists. Together with the pid, it names one process for the host's uptime."""
    try:
        raw = Path(f"/proc/{int(pid)}/stat").read_bytes()
    except (OSError, ValueError):
        return None
    # The command name (field 2) is in parentheses and may hold spaces or ')': split after the last.
    fields = raw[raw.rfind(b")") + 2:].split()
    return int(fields[19])     # field 22 counted from 1; fields[0] here is field 3


def has_marker(pid: int, marker: str) -> bool:
    """Whether the process runs with TRAINER_OWNER=`marker` in its environment (unreadable,
    gone or another user's: False)."""
    try:
        environ = Path(f"/proc/{int(pid)}/environ").read_bytes()
    except (OSError, ValueError):
        return False
    return f"{ENV_OWNER}={marker}".encode() in environ.split(b"\0")


# What trainer starts that listens on a port, by a word of its command line: the command that
# starts it (named when it runs with TRAINER_OWNER, i.e. trainer started it), else what it is.
_SERVERS = (("docker-registry", "trainer registry serve", "a docker-registry"),
            ("mlflow", "trainer mlflow serve", "an MLflow server"),
            ("prometheus", "trainer monitor up", "a Prometheus"))


def port_owner(port: int) -> str:
    """Who listens on 127.0.0.1/any `port`, for a "port N is taken by ..." line: `trainer mlflow
    serve (pid N)`, `trainer registry serve (pid N)`, `another program (nginx, pid N)`, or
    `another program` when the listener cannot be seen (another user's)."""
    import psutil

    try:
        pids = [c.pid for c in psutil.net_connections("tcp")
                if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid]
    except (psutil.Error, OSError):
        pids = []
    if not pids:
        return "another program"
    try:
        proc = psutil.Process(pids[0])
        chain = [proc, *proc.parents()]
        ours = any(_has_owner(p.pid) for p in chain)
        for p in reversed(chain):      # the server itself, not the worker it forked to listen
            command = " ".join(p.cmdline())
            for word, trainer_command, what in _SERVERS:
                if word in command:
                    return f"{trainer_command if ours else what} (pid {p.pid})"
        return f"another program ({proc.name()}, pid {proc.pid})"
    except psutil.Error:
        return f"another program (pid {pids[0]})"


def _has_owner(pid: int) -> bool:
    try:
        environ = Path(f"/proc/{int(pid)}/environ").read_bytes()
    except (OSError, ValueError):
        return False
    return any(item.startswith(f"{ENV_OWNER}=".encode()) for item in environ.split(b"\0"))


@dataclass(frozen=True)
class Recorded:
    """One process as its state file records it."""

    pid: int
    start_ticks: int
    token: str

    def is_ours(self, folder: Path) -> bool:
        """The same process we started from `folder` (not a recycled pid, not another home's)."""
        return (self.pid > 1 and self.pid != os.getpid() and start_ticks(self.pid) == self.start_ticks
                and has_marker(self.pid, owner_marker(self.token, folder)))

    @classmethod
    def parse(cls, data: dict, path: Path, error: type[TrainerError]) -> "Recorded":
        pid, ticks, token = data.get("pid"), data.get("start_ticks"), data.get("token")
        if type(pid) is not int or pid <= 0:
            raise error(f"{path}: pid {pid!r} is not a process id; not stopping anything (remove the file "
                        f"if the process is gone)")
        if type(ticks) is not int or not isinstance(token, str) or not token:
            raise error(f"{path} does not say which process it started (no start time or owner token: written "
                        f"by an older trainer?); not stopping pid {pid} (stop it yourself if it is yours, "
                        f"then remove the file)")
        return cls(pid, ticks, token)


def marked_processes(marker: str) -> list:
    """psutil.Process objects of every process with TRAINER_OWNER=`marker`, and their descendants."""
    import psutil

    me = os.getpid()
    roots = [p for p in psutil.process_iter() if p.pid not in (1, me) and has_marker(p.pid, marker)]
    found = {p.pid: p for p in roots}
    for p in roots:
        try:
            found.update({c.pid: c for c in p.children(recursive=True)})
        except psutil.Error:
            pass      # it ended while we looked: nothing of it left to stop
    found.pop(me, None)
    found.pop(1, None)
    return list(found.values())


def read_private_json(path: Path, error: type[TrainerError]) -> dict | None:
    """A state file's JSON object, or None when there is none. Refused with `error` (one line):
    a link, a file not ours or writable by others, not a JSON object."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as e:
        if path.is_symlink():
            raise error(f"{path} is a symbolic link: refusing to trust it (a state file is a plain file "
                        f"trainer writes itself); remove it") from None
        raise error(f"cannot read {path}: {e.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{path} is not a regular file: refusing to trust it; remove it")
        if st.st_uid != os.getuid() or st.st_mode & 0o022:
            raise error(f"{path} belongs to uid {st.st_uid} or others may write it (mode "
                        f"{stat.S_IMODE(st.st_mode):o}): refusing to trust it; remove it")
        raw = fh.read(1 << 20)
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise error(f"{path} is not valid JSON: refusing to trust it; remove it") from None
    if not isinstance(data, dict):
        raise error(f"{path} is not a JSON object: refusing to trust it; remove it")
    return data


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` as a new 0600 file: written to a temporary file in the same folder,
    then renamed over `path` (a link there is replaced, never followed)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)   # 0600
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_private_json(path: Path, data: dict) -> None:
    write_private(path, json.dumps(data, indent=2))


def start_marked(cmd: list[str], log: Path, folder: Path, env: dict[str, str] | None = None):
    """Start `cmd` in a session of its own (output to `log`), marked as started from the home's
    `folder`; returns (the Popen, its record for a state file: {pid, start_ticks, token})."""
    import subprocess

    token = new_token()
    with open(log, "ab") as fh:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True, env={**(env or os.environ), **owner_env(token, folder)})
    # Popen returns once the exec began (its close-on-exec pipe closed), before the kernel has
    # written the new program's environment: /proc/<pid>/environ reads empty for a moment, and a
    # check of the marker then (`live`, `has_marker`) took our process for another's (2 of 20
    # Prometheus starts: "exited at start", and the process left running). Returned once it shows.
    deadline = time.monotonic() + MARKER_WAIT_S
    marker = owner_marker(token, folder)
    while not has_marker(proc.pid, marker) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    return proc, {"pid": proc.pid, "start_ticks": start_ticks(proc.pid) or 0, "token": token}


MARKER_WAIT_S = 5.0


def live(record: dict, folder: Path, path: Path, error: type[TrainerError]):
    """The psutil.Process a state file's record names when it is still the one started from
    `folder` (same pid, start time and owner token), else None. A malformed record: `error`."""
    import psutil

    recorded = Recorded.parse(record if isinstance(record, dict) else {}, path, error)
    if not recorded.is_ours(folder):
        return None
    try:
        return psutil.Process(recorded.pid)
    except psutil.Error:
        return None


def terminate(procs: list, grace_s: float = 8.0, hard: bool = False) -> int:
    """SIGTERM each psutil.Process, SIGKILL what is still alive after `grace_s` (`hard`: SIGKILL at
    once); returns how many were signalled (ones that ended meanwhile are not an error)."""
    import signal

    import psutil

    signalled = []
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL if hard else signal.SIGTERM)
            signalled.append(p)
        except psutil.NoSuchProcess:
            continue          # ended on its own: nothing left to stop
    _, alive = psutil.wait_procs(signalled, timeout=grace_s)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(alive, timeout=5)
    return len(signalled)
