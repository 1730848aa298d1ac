"""Checks that run before anything is submitted: a job that can never run fails here, at once,
with a message that says why (Ray itself would leave it pending forever)."""
from __future__ import annotations

import ast
import difflib
import fnmatch
import math
import os
from dataclasses import dataclass
from pathlib import Path

from trainer.cluster.inventory import ACCELERATOR_LABEL, Node
from trainer.errors import PreflightError, SpecError
from trainer.runners.base import get_runner
from trainer.data import Fingerprint, fingerprint
from trainer.spec import JobSpec

# Ray refuses a working_dir over 100 MiB.
MAX_UPLOAD_BYTES = 100 * 1024 * 1024
# Never uploaded with the job's code (gitwildmatch patterns relative to the project, given to Ray as
# `excludes` too): tool caches, and files that hold secrets (keys, tokens, cloud credentials).
# SSH keys by their names (id_rsa...), not `id_*`, which would drop an `id_map.py` without a word.
UPLOAD_EXCLUDES = [".git", ".venv", "venv", "__pycache__", "*.pyc", ".pytest_cache", ".ruff_cache",
                   ".mypy_cache", "mlruns", "mlartifacts", "mlflow.db", ".trainer", "*.egg-info",
                   "node_modules", ".ipynb_checkpoints", ".device", ".whl", ".gl",
                   ".env", ".env.*", "*.pem", "*.key", "*.p12", "*.pfx", ".netrc", ".pypirc", ".git-credentials",
                   "id_rsa*", "id_dsa*", "id_ecdsa*", "id_ed25519*", ".ssh/", ".aws/", ".kube/", ".gnupg/",
                   "**/.docker/config.json"]


@dataclass
class Checked:
    """What preflight learned about a spec, used by submission."""

    spec: JobSpec
    workdir: Path
    fingerprint: Fingerprint | None
    upload_bytes: int


def check_spec(spec: JobSpec, workdir: Path) -> Checked:
    """Everything that does not need the cluster: runner capabilities, runtime, code, data."""
    runner = get_runner(spec.framework)
    if spec.runtime and spec.runtime != runner.runtime:
        raise SpecError(f"runtime {spec.runtime!r} cannot run {spec.framework} jobs; use runtime: "
                        f"{runner.runtime} (or leave runtime out)", path="runtime")
    reasons = runner.unsupported(spec)
    if reasons:
        raise PreflightError(f"{spec.framework} runner: " + "; ".join(reasons))
    _check_entrypoint(spec, workdir)
    fp = fingerprint(spec.data.path, workdir) if spec.data else None
    return Checked(spec, workdir, fp, _check_upload(workdir))


def _check_entrypoint(spec: JobSpec, workdir: Path) -> None:
    path = workdir / spec.entrypoint_file
    if not path.is_file():
        raise SpecError(f"file not found: {spec.entrypoint_file} (relative to {workdir})", path="entrypoint")
    try:
        tree = ast.parse(path.read_text(), filename=str(path))
    except SyntaxError as e:
        raise SpecError(f"{spec.entrypoint_file} line {e.lineno}: syntax error: {e.msg}", path="entrypoint") from None
    functions = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    if spec.entrypoint_function not in functions:
        near = difflib.get_close_matches(spec.entrypoint_function, functions, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else (
            f"; functions there: {', '.join(functions)}" if functions else "")
        raise SpecError(f"no function {spec.entrypoint_function!r} in {spec.entrypoint_file}{hint}",
                        path="entrypoint")


def upload_files(workdir: Path):
    """(relative path, size) of every file Ray would upload as the job's code: UPLOAD_EXCLUDES,
    `.gitignore` and `.rayignore` applied the way Ray applies them (trainer.scheduling.upload)."""
    from trainer.scheduling.upload import walk

    yield from walk(workdir, UPLOAD_EXCLUDES).files


def _check_upload(workdir: Path) -> int:
    from trainer.scheduling.upload import walk

    upload = walk(workdir, UPLOAD_EXCLUDES)
    if upload.refused:
        more = f" (and {len(upload.refused) - 1} more)" if len(upload.refused) > 1 else ""
        raise PreflightError(f"cannot upload the code in {workdir}: {upload.refused[0]}{more}")
    files = upload.files
    total = sum(size for _, size in files)
    if total > MAX_UPLOAD_BYTES:
        biggest = sorted(files, key=lambda f: -f[1])[:5]
        listing = ", ".join(f"{p} ({s / 2**20:.1f} MiB)" for p, s in biggest)
        raise PreflightError(
            f"the code to upload from {workdir} is {total / 2**20:.0f} MiB, over Ray's 100 MiB limit; "
            f"biggest files: {listing}. Move data out of the code folder (data.path can point anywhere "
            f"the workers can read) or add it to .gitignore (or .rayignore)")
    return total


def check_placement(spec: JobSpec, nodes: list[Node]) -> None:
    """Fail now if no set of nodes can ever hold the job's workers (totals, not free resources)."""
    res = spec.resources
    matching = [n for n in nodes if n.accelerator == res.accelerator]

    def fits(node: Node) -> int:
        by_cpu = math.floor(node.cpus / res.cpus_per_worker + 1e-9)
        by_gpu = math.floor(node.gpus / res.gpus_per_worker + 1e-9) if res.gpus_per_worker else by_cpu
        return min(by_cpu, by_gpu)

    capacity = sum(fits(n) for n in matching)
    if capacity >= spec.workers:
        return
    want = (f"{spec.workers} worker(s) x (cpus={res.cpus_per_worker:g}, gpus={res.gpus_per_worker:g}) "
            f"on {ACCELERATOR_LABEL}={res.accelerator}")
    if not matching:
        why = f"no node is labelled {ACCELERATOR_LABEL}={res.accelerator}"
    else:
        why = f"the {len(matching)} {res.accelerator} node(s) fit only {capacity} worker(s)"
    inventory = _inventory(nodes)
    raise PreflightError(f"cannot place {want}: {why}; cluster inventory: {inventory}",
                         inventory=[n.to_dict() for n in nodes])


def _inventory(nodes: list[Node]) -> str:
    """Alive nodes one by one; the pods a KubeRay group can still add as one entry with a count."""
    alive = [n.describe() for n in nodes if n.state != "SCALABLE"]
    scalable: dict[str, int] = {}
    for n in nodes:
        if n.state == "SCALABLE":
            scalable[n.describe()] = scalable.get(n.describe(), 0) + 1
    return ", ".join(alive + [f"{d} x{count}" for d, count in scalable.items()]) or "no alive nodes"


def check_tracking(tracking_uri: str, local_cluster: bool) -> None:
    from trainer.tracking.runs import is_embedded

    if not local_cluster and is_embedded(tracking_uri):
        raise SpecError(f"the MLflow store {tracking_uri} is a local file the remote cluster's workers "
                        f"cannot write; set tracking.uri (or MLFLOW_TRACKING_URI) to an MLflow server",
                        path="tracking.uri")

