"""The container tools, run as subprocesses: buildah (build), podman (run, list), skopeo (inspect,
copy), mmdebstrap (a base rootfs from Debian packages). No daemon; root's container storage
(`/var/lib/containers/storage`) is where images and their cached layers live.

Every `podman run` here takes the settings this kind of host needs (`RUN_FLAGS`): runc (crun
refuses hybrid cgroups), the host network (no netavark iptables chains; Ray binds loopback),
and ulimits within the host's hard limits (podman's defaults exceed them).
"""
from __future__ import annotations

import logging
import resource
import shutil
import subprocess
from pathlib import Path

from trainer.errors import ImageError

log = logging.getLogger(__name__)

TOOLS = ("buildah", "podman", "skopeo", "umoci", "mmdebstrap", "runc")
INSTALL_HINT = "run scripts/system-deps.sh (as root: apt-get install -y " + " ".join(TOOLS) + ")"
# podman's global flags: no systemd here (cgroupfs, events in a file).
PODMAN = ("podman", "--cgroup-manager=cgroupfs", "--events-backend=file")


def _limit(kind: int, want: int) -> str:
    soft, hard = resource.getrlimit(kind)
    n = want if hard == resource.RLIM_INFINITY else min(want, hard)
    return f"{n}:{n}"


def run_flags() -> list[str]:
    """What every `podman run` of ours takes on this host (see the module docstring)."""
    return ["--runtime", "runc", "--network=host",
            "--ulimit", f"nofile={_limit(resource.RLIMIT_NOFILE, 20000)}",
            "--ulimit", f"nproc={_limit(resource.RLIMIT_NPROC, 32768)}"]


def require(tool: str) -> str:
    found = shutil.which(tool)
    if found is None:
        raise ImageError(f"{tool} is not installed; {INSTALL_HINT}")
    return found


def tool(name: str, *args: str, timeout: float = 600, log_file: Path | None = None,
         env: dict[str, str] | None = None, what: str = "") -> str:
    """Run `name ARGS`; return stdout. A failure is an ImageError naming `what` (else the command)
    and the tool's last line of output; with `log_file`, the whole output goes there."""
    cmd = [*(PODMAN if name == "podman" else (require(name),)), *args]
    if name == "podman":
        require("podman")
    what = what or f"{name} {args[0] if args else ''}".strip()
    log.debug("running %s", " ".join(cmd))
    try:
        if log_file is not None:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            with log_file.open("a") as fh:
                fh.write(f"$ {' '.join(cmd)}\n")
                fh.flush()
                proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, text=True, timeout=timeout,
                                      env=env)
            out = ""
        else:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
            out = proc.stdout
    except subprocess.TimeoutExpired:
        raise ImageError(f"{what} did not finish within {timeout:.0f}s"
                         + (f" (log: {log_file})" if log_file else "")) from None
    if proc.returncode != 0:
        text = log_file.read_text() if log_file is not None else (proc.stderr or proc.stdout)
        lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("$ ")]
        tail = useful_line(lines)
        raise ImageError(f"{what} failed (exit {proc.returncode}): {tail[:300]}"
                         + (f" (log: {log_file})" if log_file else ""))
    return out


def useful_line(lines: list[str]) -> str:
    """The line that says why: the last line of a tool inside the build (pip's `ERROR:`), else the
    last `error`/`Error:` line, else the last line."""
    for ln in reversed(lines):
        if ln.startswith("ERROR:"):
            return ln
    for ln in reversed(lines):
        if ln.lower().startswith(("error", "e: ")) or "error:" in ln.lower():
            return ln
    return lines[-1] if lines else "(no output)"


def image_exists(ref: str) -> bool:
    require("podman")
    return subprocess.run([*PODMAN, "image", "exists", ref], capture_output=True).returncode == 0
