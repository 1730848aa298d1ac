"""Worker nodes of the local cluster as podman containers of a runtime image: the arrangement of
a KubeRay worker pod (the runtime image, the project code shipped by Ray as the job's
working_dir), on this host.

A node container runs `ray start --block` with the image's own Python and Ray; it shares the
host's network (every node listens on 127.0.0.1, as the head does), and sees at the same paths
what a node on this host reads and writes: $TRAINER_HOME (the cluster's token, the embedded MLflow
store, checkpoints) and its own Ray temp dir. It runs as root inside (user namespaces are not
used): those folders are root's private (0700) folders here. The head stays on the host.

Containers carry the label `io.trainer.cluster=<hash of the owner token>`: `cluster down` removes
exactly this cluster's containers.
"""
from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path

from trainer.errors import ClusterError, ImageError
from trainer.images import engine
from trainer.protocol import LABEL_NODE_IMAGE

LABEL_CLUSTER = "io.trainer.cluster"
# The Ray node label that says which image a node runs (`trainer cluster status`).
RAY_IMAGE_LABEL = LABEL_NODE_IMAGE
_VERSIONS = "import importlib.metadata as m, sys; print(m.version('ray'), '%d.%d' % sys.version_info[:2])"
# Ray refuses a node whose Python differs from the head's down to the patch level by default; the
# image's Python is the base's (Debian's 3.11.2 here, the head's venv 3.11.7): major.minor must
# match (checked before anything starts, as Ray's own version is).
PYTHON_MATCH = {"RAY_DEFAULT_PYTHON_VERSION_MATCH_LEVEL": "minor"}


def cluster_label(owner_token: str) -> str:
    return hashlib.sha256(owner_token.encode()).hexdigest()[:16]


def image_label_value(ref: str) -> str:
    """`ref` as a Ray label value (letters, digits, `-_.`, at most 63, alphanumeric at both ends)."""
    value = re.sub(r"[^A-Za-z0-9_.-]+", ".", ref.removeprefix("localhost/"))[-63:]
    return value.strip("._-") or "image"


def versions(image: str) -> tuple[str, str]:
    """(Ray version, Python major.minor) of `image` (its own Python, asked)."""
    try:
        out = engine.tool("podman", "run", "--rm", *engine.run_flags(), "--entrypoint", "python", image,
                          "-c", _VERSIONS, timeout=300, what=f"asking {image} for its Ray version")
    except ImageError as e:
        raise ClusterError(str(e)) from None
    found = (out.strip().splitlines() or [""])[-1].split()
    if len(found) != 2:
        raise ClusterError(f"{image}: its python printed no Ray version: {out.strip()[:200]!r}")
    return found[0], found[1]


def check_ray(image: str, head_ray: str, head_python: str) -> None:
    """Refuse (one line) an image whose Ray, or Python major.minor, is not the head's."""
    ray, python = versions(image)
    if ray != head_ray:
        raise ClusterError(f"image {image} has Ray {ray}, the head has Ray {head_ray}: every node must run "
                           f"the head's Ray; rebuild the image from the current lock (trainer image build)")
    if python != head_python:
        raise ClusterError(f"image {image} has Python {python}, the head has Python {head_python}: Ray needs "
                           f"the same major.minor on every node")


def start_node(image: str, name: str, owner_token: str, ray_args: list[str], env: dict[str, str],
               shared: list[Path], shm_mb: int, script: str) -> str:
    """Start one node container: `python -c SCRIPT start --block RAY_ARGS` (SCRIPT: the `ray start`
    that keeps 127.0.0.1); returns the container's name."""
    mounts = []
    for p in _outermost(shared):
        mounts += ["--volume", f"{p}:{p}"]
    engine.tool("podman", "run", "--detach", "--name", name, "--label", f"{LABEL_CLUSTER}={cluster_label(owner_token)}",
                "--user", "0:0", f"--shm-size={shm_mb}m", *engine.run_flags(),
                *(a for k, v in env.items() for a in ("--env", f"{k}={v}")), *mounts,
                "--entrypoint", "python", image, "-c", script, "start", "--block", *ray_args,
                timeout=120, what=f"starting node container {name}")
    return name


def _outermost(paths: list[Path]) -> list[Path]:
    """The paths without those inside another one of them (one mount covers both)."""
    paths = sorted({p.resolve() for p in paths}, key=lambda p: len(p.parts))
    out: list[Path] = []
    for p in paths:
        if not any(p == q or q in p.parents for q in out):
            out.append(p)
    return out


def containers(owner_token: str, running_only: bool = False) -> list[dict]:
    """This cluster's node containers: name, image, state."""
    raw = engine.tool("podman", "ps", *([] if running_only else ["--all"]), "--format", "json",
                      "--filter", f"label={LABEL_CLUSTER}={cluster_label(owner_token)}", what="podman ps")
    return [{"name": (c.get("Names") or ["?"])[0], "image": c.get("Image", ""), "state": c.get("State", ""),
             "exit_code": c.get("ExitCode")} for c in json.loads(raw or "[]")]


def exited(owner_token: str) -> list[str]:
    """Node containers that stopped, each with the last line it printed."""
    out = []
    for c in containers(owner_token):
        if c["state"] in ("exited", "stopped"):
            # The container's stderr is podman's stderr: Ray logs there.
            logs = subprocess.run([*engine.PODMAN, "logs", "--tail", "20", c["name"]], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, timeout=60).stdout
            lines = [ln for ln in logs.splitlines() if ln.strip()]
            out.append(f"{c['name']} (exit {c['exit_code']}): {engine.useful_line(lines)[:300]}")
    return out


def remove(owner_token: str) -> int:
    """Remove this cluster's node containers (stopping them first); returns how many."""
    found = containers(owner_token)
    if found:
        engine.tool("podman", "rm", "--force", "--time", "10", *(c["name"] for c in found), timeout=120,
                    what="removing the node containers")
    return len(found)
