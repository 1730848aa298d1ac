"""Checks that run before anything is submitted: a job that can never run fails here, at once,
with a message that says why (Ray itself would leave it pending forever)."""
from __future__ import annotations

import ast
import difflib
import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from trainer.cluster.inventory import ACCELERATOR_LABEL, Node
from trainer.errors import PreflightError, SpecError, UsageError, first_line
from trainer.runners.base import get_runner
from trainer.data import Fingerprint, fingerprint
from trainer.protocol import UPLOAD_EXCLUDES
from trainer.spec import JobSpec, file_kind

# Ray refuses a working_dir over 100 MiB.
MAX_UPLOAD_BYTES = 100 * 1024 * 1024
# What is never uploaded with the job's code: trainer.protocol.UPLOAD_EXCLUDES.


@dataclass
class Checked:
    """What preflight learned about a spec, used by submission."""

    spec: JobSpec
    workdir: Path
    fingerprint: Fingerprint | None
    upload: list[tuple[str, int]]       # the code Ray is sent: (relative path, size), checked

    @property
    def upload_bytes(self) -> int:
        return sum(size for _, size in self.upload)


def check_spec(spec: JobSpec, workdir: Path) -> Checked:
    """Everything that does not need the cluster: runner capabilities, runtime, code, conversion
    names, data."""
    runner = get_runner(spec.framework)
    if spec.runtime and spec.runtime != runner.runtime:
        raise SpecError(f"runtime {spec.runtime!r} cannot run {spec.framework} jobs; use runtime: "
                        f"{runner.runtime} (or leave runtime out)", path="runtime")
    reasons = runner.unsupported(spec) + _gpu_build_missing(spec, runner.runtime)
    if reasons:
        raise PreflightError(f"{spec.framework} runner: " + "; ".join(reasons))
    _check_entrypoint(spec, workdir)
    _check_convert(spec, runner.frontend)
    fp = fingerprint(spec.data.path, workdir) if spec.data else None
    return Checked(spec, workdir, fp, _check_upload(workdir))


def _gpu_build_missing(spec: JobSpec, runtime: str) -> list[str]:
    """A GPU job needs a runtime whose image has a GPU build: its lock declares a `gpu` variant
    (images/<runtime>/requirements.lock, `#@gpu` lines). Without one the job would silently train
    on the CPU of a GPU node."""
    from trainer.runtimes.lock import GPU, lock_variants

    if spec.resources.gpus_per_worker <= 0 or GPU in lock_variants(runtime):
        return []
    return [f"gpus_per_worker={spec.resources.gpus_per_worker:g}: the {runtime} runtime has no GPU build "
            f"(images/{runtime}/requirements.lock declares no gpu variant); use gpus_per_worker: 0"]


# An entrypoint file is code a person wrote; this is far above any.
MAX_ENTRYPOINT_BYTES = 10 * 1024 * 1024


def _check_entrypoint(spec: JobSpec, workdir: Path) -> None:
    """The file is inside the project (what is uploaded), parses, and defines the function with
    a signature the job driver can call: `fn(ctx)`."""
    rel = spec.entrypoint_file
    root = workdir.resolve()
    path = workdir / rel
    resolved = path.resolve()
    if not resolved.is_relative_to(root):
        raise SpecError(f"{rel} resolves to {resolved}, outside the project folder {root} whose files are "
                        f"uploaded as the job's code; move the file into it", path="entrypoint")
    if not resolved.exists():
        raise SpecError(f"file not found: {rel} (relative to {workdir})", path="entrypoint")
    source = _read_source(resolved, rel)
    try:
        tree = ast.parse(source, filename=str(path))
    except SyntaxError as e:
        if e.lineno is None:    # not Python at all (NUL bytes, an undecodable file)
            raise SpecError(f"{rel}: cannot be parsed as Python: {e.msg}", path="entrypoint") from None
        raise SpecError(f"{rel} line {e.lineno}: syntax error: {e.msg}", path="entrypoint") from None
    except (ValueError, RecursionError, MemoryError) as e:   # NUL bytes (older Pythons); absurd nesting
        raise SpecError(f"{rel}: cannot be parsed as Python: {type(e).__name__}: {first_line(e)}",
                        path="entrypoint") from None
    defs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    functions = list(dict.fromkeys(n.name for n in defs))
    if spec.entrypoint_function not in functions:
        near = difflib.get_close_matches(spec.entrypoint_function, functions, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else (
            f"; functions there: {', '.join(functions)}" if functions else "")
        raise SpecError(f"no function {spec.entrypoint_function!r} in {rel}{hint}", path="entrypoint")
    fn = [n for n in defs if n.name == spec.entrypoint_function][-1]   # the last definition wins
    problem = _signature_problem(fn)
    if problem:
        raise SpecError(f"{rel}:{fn.name} (line {fn.lineno}) {problem}; the job calls it in every worker "
                        f"as {fn.name}(ctx)", path="entrypoint")


def _read_source(path: Path, rel: str) -> bytes:
    """The entrypoint's bytes: a regular file (never a FIFO or a device: opened non-blocking and
    checked with fstat) of sane size. ast.parse reads the bytes' own encoding declaration."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        kind = file_kind(path.stat().st_mode) if path.exists() else ""
        if kind and kind != "a regular file":     # a socket cannot even be opened
            raise SpecError(f"{rel} is not a regular file ({kind})", path="entrypoint") from None
        raise SpecError(f"{rel}: cannot open it: {e.strerror}", path="entrypoint") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise SpecError(f"{rel} is not a regular file ({file_kind(mode)})", path="entrypoint")
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(MAX_ENTRYPOINT_BYTES + 1)
    if len(data) > MAX_ENTRYPOINT_BYTES:
        raise SpecError(f"{rel} is over {MAX_ENTRYPOINT_BYTES // 2**20} MiB: not a training script",
                        path="entrypoint")
    return data


def _signature_problem(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> str | None:
    """Why `fn(ctx)` would fail, or None. A decorated function is taken on trust (a decorator may
    change the signature)."""
    if isinstance(fn, ast.AsyncFunctionDef):
        return "is `async def`: calling it would only create a coroutine"
    if fn.decorator_list:
        return None
    a = fn.args
    positional = [p.arg for p in a.posonlyargs + a.args]
    required = positional[:len(positional) - len(a.defaults)]
    kw_required = [k.arg for k, d in zip(a.kwonlyargs, a.kw_defaults) if d is None]
    if kw_required:
        return f"has required keyword-only parameter(s) {', '.join(kw_required)}"
    if not positional and a.vararg is None:
        return "takes no argument"
    if len(required) > 1:
        return f"takes {len(required)} required arguments ({', '.join(required)})"
    return None


# Targets whose artifact an edge bundle can hold (converters.api: EDGE_FORMATS .onnx / .tflite).
EDGE_TARGETS = ("onnx", "onnx-int8", "tflite", "tflite-int8")


def _check_convert(spec: JobSpec, frontend: str) -> None:
    """The `convert:` step runs after training: a name it would refuse is refused now.

    Only the name tables are imported (converters.registry: no framework, no numpy); the edge
    CPU list comes from converters.edge.qemu (numpy), imported only when CPUs are named."""
    if spec.convert is None:
        return
    from converters import registry

    for t in spec.convert.targets:
        if t not in registry.TARGETS:
            raise SpecError(f"unknown target {t!r}; valid: {', '.join(sorted(registry.TARGETS))}",
                            path="convert.targets")
        if registry.route(frontend, t) is None:
            raise SpecError(f"{spec.framework} models ({frontend} frontend) cannot be converted to {t} "
                            f"(see trainer convert --list)", path="convert.targets")
    if not spec.convert.edge:
        return
    if not set(spec.convert.targets) & set(EDGE_TARGETS):
        raise SpecError(f"an edge bundle needs at least one of the {', '.join(EDGE_TARGETS)} targets",
                        path="convert.edge")
    from converters.edge.qemu import check_cpu

    for cpu in spec.convert.edge:
        try:
            check_cpu(cpu)
        except UsageError as e:
            raise SpecError(e.message, path="convert.edge") from None


def upload_files(workdir: Path):
    """(relative path, size) of every file Ray would upload as the job's code: UPLOAD_EXCLUDES,
    `.gitignore` and `.rayignore` applied the way Ray applies them (trainer.scheduling.upload)."""
    from trainer.scheduling.upload import walk

    yield from walk(workdir, UPLOAD_EXCLUDES).files


def _check_upload(workdir: Path) -> list[tuple[str, int]]:
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
    return files


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

